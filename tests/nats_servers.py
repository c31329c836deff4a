"""A real ``nats-server`` with JetStream on a free loopback port, its storage in a temporary folder.

Fixture: ``nats_server`` (a started :class:`NatsServer`; ``.bus`` is the ``nats://`` address).
``start()`` returns once the server logs that it is ready for connections (no polling); ``stop()``
ends it. Skipped where ``nats-server`` is not installed (``apt-get install nats-server``).
"""

from __future__ import annotations

import queue
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import needs
from tests.servers import free_port

NATS_SERVER = shutil.which("nats-server")
NEEDS_NATS = needs(NATS_SERVER is not None, reason="nats-server not installed (apt-get install nats-server)")


class NatsServer:
    """``nats-server -js`` on 127.0.0.1:``port`` with JetStream storage under ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self._proc: subprocess.Popen | None = None
        self.log: list[str] = []

    @property
    def bus(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> NatsServer:
        assert NATS_SERVER is not None
        proc = subprocess.Popen([NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.folder)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._proc = proc
        ready: queue.Queue[bool] = queue.Queue()

        def read() -> None:
            told = False
            for line in proc.stdout:  # keep draining, or the server blocks on a full pipe
                self.log.append(line)
                if not told and "Server is ready" in line:
                    ready.put(True)
                    told = True
            if not told:
                ready.put(False)

        threading.Thread(target=read, daemon=True, name="nats-server-log").start()
        try:
            ok = ready.get(timeout=timeout_s)
        except queue.Empty:
            ok = False
        if not ok:
            self.stop()
            raise RuntimeError("nats-server did not start:\n" + "".join(self.log[-30:]))
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats").start()
    try:
        yield server
    finally:
        server.stop()
