"""A bounded disk spool of line-protocol batches (blocking file I/O; call it off the loop).

One file per batch, named by a rising number, written to a temporary name, fsynced and
renamed, so a crash leaves whole batches or none. The oldest batch is replayed first and
deleted only after the server acknowledged it. The spool outlives the process: a store
restarted after a crash or an outage picks up what is left. A lock file keeps two stores
from sharing one spool.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

from common.errors import UserError


class Spool:
    def __init__(self, folder: Path, *, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # spooled points are health data: owner only
        # held open, not in a with block: the flock lasts as long as the spool
        self._lock = open(_private(folder / "lock"), "w")  # noqa: SIM115
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise UserError(f"spool {folder} is in use by another store") from None
        for tmp in folder.glob("*.tmp"):  # a batch cut short by a crash was never acknowledged as spooled
            tmp.unlink()
        self._files = sorted(folder.glob("*.lp"))
        self.bytes = sum(f.stat().st_size for f in self._files)
        self.points = sum(_count_lines(f) for f in self._files)
        self._next = int(self._files[-1].stem) + 1 if self._files else 0
        self._mutex = threading.Lock()  # the queue's spill and the writer may both call in, from worker threads

    def __len__(self) -> int:
        return len(self._files)

    def put(self, lines: list[str]) -> bool:
        """Store a batch durably; False (and nothing stored) if it would exceed ``max_bytes``."""
        data = ("\n".join(lines) + "\n").encode()
        with self._mutex:
            if self.bytes + len(data) > self.max_bytes:
                return False
            self._write(data, len(lines))
            return True

    def _write(self, data: bytes, n: int) -> None:
        path = self.folder / f"{self._next:016d}.lp"
        tmp = path.with_suffix(".tmp")
        with open(_private(tmp), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self._next += 1
        self._files.append(path)
        self.bytes += len(data)
        self.points += n

    def oldest(self) -> tuple[Path, list[str]] | None:
        with self._mutex:
            if not self._files:
                return None
            path = self._files[0]
            return path, path.read_text().splitlines()

    def remove(self, path: Path) -> None:
        with self._mutex:
            size = path.stat().st_size
            n = _count_lines(path)
            path.unlink()
            self._files.remove(path)
            self.bytes -= size
            self.points -= n

    def close(self) -> None:
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()


def _private(path: Path) -> int:
    """A descriptor of ``path``, truncated for writing and created 0600 if new."""
    return os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)
