"""Errors that are the user's or the data's to fix, reported in one line (exit code 2)."""


class UserError(Exception):
    """Bad input: a file, a flag, a recording. The message names the file and line where known."""


class DataError(UserError):
    """A recording or data file that cannot be read as what it claims to be."""

    def __init__(self, path: object, message: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line
