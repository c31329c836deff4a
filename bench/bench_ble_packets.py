"""``ble stream --packet-s``: bus messages and the publishing process's CPU, per packet vs gathered.

For N virtual wristbands, runs ``m3sense ble stream --virtual N`` twice in the same sitting on one
bus (a ZeroMQ ``m3sense hub`` started here, or ``--bus ADDR`` of one already running, e.g. a NATS
server), once as the wristband sends (one message per BLE packet, the baseline) and once with
``--packet-s S``, each with a ``tap`` subscribed to ``raw/`` so every message really travels, and
prints per run: raw messages published per second of data (from the stream's ``--json`` report), and the
CPU seconds of the ``ble stream`` process (user + system, from ``wait4``), also per wristband-hour
of streamed data. The virtual wristbands encode their packets in that same process, so the CPU
figure is an upper bound for real wristbands; the difference between the runs is the publishing.

    .venv/bin/python bench/bench_ble_packets.py [--devices 20] [--seconds 120] [--time-scale 4] [--packet-s 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def m3sense(*args: str, **kw) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "m3sense", *args], cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, **kw
    )


def wait_for_line(proc: subprocess.Popen[str], needle: str, timeout_s: float = 60) -> None:
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            raise SystemExit(f"{proc.args!r} exited before saying {needle!r}")
        if needle in line:
            return
    raise SystemExit(f"no {needle!r} from {proc.args!r} in {timeout_s} s")


def one_run(bus: str, devices: int, seconds: float, scale: float, packet_s: float | None) -> dict:
    tap = m3sense(
        "tap",
        "--bus",
        bus,
        "--topic",
        "raw/",
        "--idle-exit-s",
        "5",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_line(tap, "tap: subscribed")
        args = ["ble", "stream", "--bus", bus, "--virtual", str(devices), "--time-scale", f"{scale:g}"]
        args += ["--duration-s", f"{seconds:g}", "--minutes", "2", "--wait-s", "30", "--json"]
        if packet_s is not None:
            args += ["--packet-s", f"{packet_s:g}"]
        ble = m3sense(*args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert ble.stdout is not None
        out = ble.stdout.read()
        _, status, usage = os.wait4(ble.pid, 0)
        ble.returncode = os.waitstatus_to_exitcode(status)
        if ble.returncode != 0:
            raise SystemExit(f"ble stream exited {ble.returncode}")
    finally:
        tap.wait(timeout=60)
    report = json.loads(out.strip().splitlines()[-1])
    messages = sum(sum(d["messages"].values()) for d in report["devices"])
    packets = sum(sum(d["packets"].values()) for d in report["devices"])
    cpu = usage.ru_utime + usage.ru_stime
    return {
        "packet_s": packet_s,
        "messages": messages,
        "packets": packets,
        "messages_per_s": messages / seconds,
        "cpu_s": cpu,
        "cpu_s_per_wristband_hour": cpu / (devices * seconds / 3600.0),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=20, help="virtual wristbands (default 20)")
    ap.add_argument("--seconds", type=float, default=120.0, help="streamed seconds of data per run (default 120)")
    ap.add_argument("--time-scale", type=float, default=4.0, help="virtual clock speed-up (default 4)")
    ap.add_argument("--packet-s", type=float, default=1.0, help="seconds per message of the second run (default 1)")
    ap.add_argument("--bus", help="a running bus (default: start a ZeroMQ hub here)")
    args = ap.parse_args()

    hub = None
    bus = args.bus
    if bus is None:
        from bus import free_bus_address

        bus = free_bus_address()
        hub = m3sense("hub", "--bus", bus, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_for_line(hub, "hub:")
    try:
        print(
            f"{args.devices} virtual wristbands, {args.seconds:g} s of data each at {args.time_scale:g}x "
            f"({args.seconds / args.time_scale:.0f} s wall per run), bus {bus}"
        )
        print(f"{'messages':<22}{'raw msgs':>10}{'packets':>10}{'msgs/s':>10}{'CPU s':>9}{'CPU s/wristband-h':>19}")
        for packet_s in (None, args.packet_s):
            r = one_run(bus, args.devices, args.seconds, args.time_scale, packet_s)
            label = "per packet" if packet_s is None else f"--packet-s {packet_s:g}"
            print(
                f"{label:<22}{r['messages']:>10}{r['packets']:>10}{r['messages_per_s']:>10.0f}"
                f"{r['cpu_s']:>9.1f}{r['cpu_s_per_wristband_hour']:>19.1f}",
                flush=True,
            )
    finally:
        if hub is not None:
            hub.terminate()
            hub.wait(timeout=30)


if __name__ == "__main__":
    main()
