"""A real ``nats-server`` with JetStream on a free loopback port, its storage in a temporary folder.

Fixtures: ``nats_server`` (a started :class:`NatsServer`; ``.bus`` is the ``nats://`` address) and
``nats_cluster`` (three of them routed into one JetStream cluster; ``.bus`` lists all three).
``start()`` returns once the server logs that it is ready for connections (no polling); ``stop()``
ends it. Skipped where ``nats-server`` is not installed (``apt-get install nats-server``).
"""

from __future__ import annotations

import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import needs
from tests.servers import free_port

NATS_SERVER = shutil.which("nats-server")
NEEDS_NATS = needs(NATS_SERVER is not None, reason="nats-server not installed (apt-get install nats-server)")


class NatsServer:
    """``nats-server -js`` on 127.0.0.1:``port`` with JetStream storage under ``folder``."""

    def __init__(
        self, folder: Path, cluster: list[str] | None = None, name: str = "n1", cluster_port: int | None = None
    ) -> None:
        self.folder = folder
        self.port = free_port()
        self.name = name
        self.cluster_port = cluster_port
        self.routes = cluster
        self._proc: subprocess.Popen | None = None
        self.log: list[str] = []

    @property
    def bus(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> NatsServer:
        assert NATS_SERVER is not None
        args = [NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.folder), "-n", self.name]
        if self.routes is not None:
            args += [
                "--cluster_name",
                "m3s",
                "--cluster",
                f"nats://127.0.0.1:{self.cluster_port}",
                "--routes",
                ",".join(self.routes),
            ]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._proc = proc
        ready: queue.Queue[bool] = queue.Queue()

        stdout = proc.stdout
        assert stdout is not None, "started with stdout=PIPE"

        def read() -> None:
            told = False
            for line in stdout:  # keep draining, or the server blocks on a full pipe
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

    def kill(self) -> None:
        """SIGKILL, as a crash: no clean shutdown (``stop`` still reaps it)."""
        assert self._proc is not None, "started"
        self._proc.kill()

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


class NatsCluster:
    """Three ``nats-server -js`` routed into one cluster on loopback; ``.bus`` names all three."""

    def __init__(self, folder: Path) -> None:
        ports = [free_port() for _ in range(3)]
        routes = [f"nats://127.0.0.1:{p}" for p in ports]
        self.servers = [NatsServer(folder / f"n{i}", routes, f"n{i}", ports[i]) for i in range(3)]

    @property
    def bus(self) -> str:
        return ",".join(s.bus for s in self.servers)

    def start(self, timeout_s: float = 60.0) -> NatsCluster:
        for s in self.servers:
            s.start(timeout_s)
        deadline = time.monotonic() + timeout_s  # JetStream answers once the cluster has elected a leader
        while not any("new metadata leader" in line for s in self.servers for line in s.log):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    "the NATS cluster elected no JetStream leader:\n" + "".join(self.servers[0].log[-30:])
                )
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        for s in self.servers:
            s.stop()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    cluster = NatsCluster(tmp_path / "cluster").start()
    try:
        yield cluster
    finally:
        cluster.stop()
