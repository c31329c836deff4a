"""How long a worker group on NATS takes to hand a dead worker's partitions to the others: two
``m3sense preprocess --workers-group`` workers on a ``nats-server -js`` started on a free loopback
port, ``kill -9`` of one once they have split the 16 partitions, then the time until the other
holds every lease (read from the group's key-value bucket). Usage:
    .venv/bin/python bench/bench_takeover.py [--lease-ttl-s 3 10]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from bus.nats_backend import NatsUnreachable
from bus.partitions import PARTITIONS
from bus.shards import ShardSpec, lease_holders


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _held(bus: str, spec: ShardSpec) -> dict[int, str]:
    try:
        return asyncio.run(lease_holders(bus, spec))
    except NatsUnreachable:  # the server is still starting
        return {}


def takeover_s(ttl_s: float, timeout_s: float = 120.0) -> float:
    """Seconds from kill -9 of one of two workers until the other holds all the partitions."""
    port = _free_port()
    bus = f"nats://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as folder:
        server = subprocess.Popen(
            ["nats-server", "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", folder],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        args = [sys.executable, "-m", "m3sense", "preprocess", "--bus", bus, "--workers-group", "bench"]
        workers = [subprocess.Popen([*args, "--lease-ttl-s", str(ttl_s)], stderr=subprocess.DEVNULL) for _ in range(2)]
        spec = ShardSpec("preprocess", "bench")
        try:
            deadline = time.monotonic() + timeout_s
            while not ((h := _held(bus, spec)) and len(h) == PARTITIONS and len(set(h.values())) == 2):
                if time.monotonic() > deadline:
                    raise RuntimeError("the two workers never split the partitions")
                time.sleep(0.2)
            workers[0].send_signal(signal.SIGKILL)
            killed = time.monotonic()
            mine = f"-{workers[1].pid}-"
            while not ((h := _held(bus, spec)) and len(h) == PARTITIONS and all(mine in w for w in h.values())):
                if time.monotonic() > killed + timeout_s:
                    raise RuntimeError("the survivor never took the dead worker's partitions")
                time.sleep(0.1)
            return time.monotonic() - killed
        finally:
            for p in (*workers, server):
                p.terminate()
                p.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lease-ttl-s", type=float, nargs="+", default=[3.0, 10.0], metavar="S")
    args = parser.parse_args()
    if shutil.which("nats-server") is None:
        print("bench_takeover: nats-server is not installed (apt-get install nats-server)", file=sys.stderr)
        return 2
    for ttl in args.lease_ttl_s:
        print(
            f"lease TTL {ttl:g} s: the survivor held all {PARTITIONS} partitions {takeover_s(ttl):.1f} s after kill -9"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
