"""Shared fixtures: loopback bus addresses, an in-process hub, and running the CLI as a process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import pytest

from bus import Hub, free_bus_address

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
WESAD = SHARED_DATA / "wesad-e4"

#: CI installs every server the tests start and has ``../shared/data``: there a test that would
#: skip for want of one fails instead, so a broken install step cannot pass with fewer tests.
REQUIRE_ALL = os.environ.get("M3SENSE_REQUIRE_ALL") == "1"


def needs(available: bool, reason: str) -> pytest.MarkDecorator:
    """``skipif(not available)``; under ``M3SENSE_REQUIRE_ALL=1`` a mark that fails the test."""
    if available or not REQUIRE_ALL:
        return pytest.mark.skipif(not available, reason=reason)
    return pytest.mark.m3sense_missing(reason=reason)


def skip_or_fail(reason: str) -> None:
    """``pytest.skip`` (in a fixture or test); ``pytest.fail`` under ``M3SENSE_REQUIRE_ALL=1``."""
    if REQUIRE_ALL:
        pytest.fail(f"M3SENSE_REQUIRE_ALL=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "m3sense_missing(reason): a required server or data set is absent")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("m3sense_missing"):
        pytest.fail(f"M3SENSE_REQUIRE_ALL=1 but {mark.kwargs['reason']}", pytrace=False)


@pytest.fixture
def bus_address() -> str:
    return free_bus_address()


@pytest.fixture
def hub(bus_address: str) -> Iterator[Hub]:
    with Hub(bus_address) as h:
        yield h


def m3sense_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "m3sense", *args]


def run_cli(*args: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess:
    """Run ``m3sense ARGS`` to completion in a subprocess and capture its output."""
    proc = subprocess.run(
        m3sense_cmd(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"m3sense {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


class Proc:
    """A background ``m3sense`` process that is always stopped (SIGTERM, then SIGKILL)."""

    def __init__(self, args: Sequence[str], stdout=subprocess.PIPE) -> None:
        self.argv = m3sense_cmd(*args)  # the command line as started
        self.popen = subprocess.Popen(
            self.argv,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    @property
    def stderr(self) -> IO[str]:
        """Its stderr pipe (always one: started with ``stderr=PIPE``)."""
        stderr = self.popen.stderr
        assert stderr is not None, "started with stderr=PIPE"
        return stderr

    @property
    def stdout(self) -> IO[str]:
        """Its stdout pipe: only a process started with ``stdout=PIPE`` (the default) has one."""
        stdout = self.popen.stdout
        assert stdout is not None, "started with stdout=PIPE"
        return stdout

    def wait_for_stderr(self, needle: str, timeout: float = 60) -> str:
        """Read stderr lines until one contains ``needle`` (a readiness line), failing on exit.

        Byte by byte from the descriptor: a buffered ``readline`` takes whatever lines came in
        the same chunk, and ``select`` then waits for data that was already read (a line behind)."""
        import select
        import time

        fd = self.stderr.fileno()
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        line = bytearray()
        while time.monotonic() < deadline:
            if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                continue
            byte = os.read(fd, 1)
            if not byte:
                break
            line += byte
            if byte == b"\n":
                text = line.decode(errors="replace")
                line.clear()
                seen.append(text)
                if needle in text:
                    return text
        raise AssertionError(f"no {needle!r} on stderr within {timeout} s; got:\n{''.join(seen)}{line.decode()}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Start background processes with ``procs.append(Proc([...]))``; all are stopped at teardown."""
    started: list[Proc] = []
    yield started
    for p in reversed(started):
        p.stop()


@pytest.fixture(autouse=True, scope="session")
def _private_state_home(tmp_path_factory) -> None:
    """State a command keeps between runs (the device key, spools, calibration) goes to a
    temporary folder, never the user's ``~/.local/state``."""
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state"))
