"""``m3sense hub`` and ``m3sense tap``, and the ``--bus`` option every command shares."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from bus.endpoints import DEFAULT_BUS, BadBusAddress, hub_endpoints


def _bus_address(text: str) -> str:
    try:
        hub_endpoints(text)
    except BadBusAddress as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_bus_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bus", type=_bus_address, default=DEFAULT_BUS,
        help=f"hub address, tcp://HOST:PORT (publishers use PORT, subscribers PORT+1) or ipc://PATH "
             f"(default {DEFAULT_BUS})",
    )


def register(sub: argparse._SubParsersAction) -> None:
    h = sub.add_parser(
        "hub", help="run the bus hub (XSUB/XPUB forwarder) in the foreground",
        description="Every stage connects to the hub. For --bus tcp://HOST:PORT it binds PORT for publishers "
                    "and PORT+1 for subscribers; for ipc://PATH it binds PATH.in and PATH.out. Ctrl-C stops it.",
    )
    add_bus_option(h)
    h.set_defaults(func=_hub)

    t = sub.add_parser(
        "tap", help="print bus messages as they flow, one line each",
        description="Subscribe and print each message: topic, sequence number, first-sample time, rate and sample "
                    "count (with --json one JSON object per line, with the message's metadata fields). On exit it "
                    "prints the counts of received, missing (sequence gaps) and malformed messages to stderr.",
    )
    add_bus_option(t)
    t.add_argument("--topic", action="append", metavar="PREFIX",
                   help="topic prefix to subscribe to, e.g. raw/bvp/ or window/S2/ (repeatable; default all)")
    t.add_argument("--json", action="store_true", help="one JSON object per line")
    t.add_argument("--values", action="store_true", help="include the samples (and named arrays)")
    t.add_argument("--count", type=int, metavar="N", help="exit after N messages")
    t.add_argument("--idle-exit", type=float, metavar="S", help="exit after S seconds without a message")
    t.set_defaults(func=_tap)


def _hub(args: argparse.Namespace) -> int:
    import signal
    import threading

    from bus.hub import Hub

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        hub = Hub(args.bus).start()
    except OSError as exc:
        print(f"m3sense hub: error: {exc}", file=sys.stderr)
        return 2
    ep = hub.endpoints
    print(f"hub: publishers connect to {ep.publishers}, subscribers to {ep.subscribers}", file=sys.stderr, flush=True)
    try:
        stop.wait()
    finally:
        hub.stop()
    return 0


def message_record(msg: Any, values: bool) -> dict[str, Any]:
    """The JSON form of a message that ``tap --json`` prints."""
    rec: dict[str, Any] = {k: v for k, v in msg.meta.items()}
    rec.update(topic=msg.topic, kind=msg.kind, device=msg.device, modality=msg.modality, seq=msg.seq,
               t0=msg.t0_s, fs=msg.fs_hz, n=msg.n)
    if values:
        rec["values"] = msg.samples.tolist()
        if msg.arrays:
            rec["arrays"] = {k: a.tolist() for k, a in msg.arrays.items()}
    return rec


def _tap(args: argparse.Namespace) -> int:
    from bus.sockets import Subscriber
    from m3sense.aio import run_until_signal

    out = sys.stdout

    def json_default(o: Any) -> Any:
        return None if isinstance(o, float) and not math.isfinite(o) else str(o)

    async def main() -> int:
        seen = 0
        sub = Subscriber(args.bus, args.topic or [""])
        try:
            async with sub:
                # a readiness line, so a script can start publishers only once the tap listens
                print(f"tap: subscribed to {' '.join(args.topic or ['(everything)'])} on {args.bus}", file=sys.stderr,
                      flush=True)
                while args.count is None or seen < args.count:
                    try:
                        msg = await sub.recv(args.idle_exit)
                    except TimeoutError:
                        break
                    seen += 1
                    if args.json:
                        out.write(json.dumps(message_record(msg, args.values), default=json_default) + "\n")
                    else:
                        line = f"{msg.topic} seq={msg.seq} t0={msg.t0_s:.6f} fs={msg.fs_hz:g} n={msg.n}"
                        if msg.meta:
                            line += " " + json.dumps(msg.meta, default=json_default)
                        if args.values:
                            line += " " + json.dumps(msg.samples.tolist())
                        out.write(line + "\n")
        finally:
            out.flush()
            st = sub.stats
            print(f"tap: received {st.received}, missing {st.gaps}, late {st.late}, "
                  f"malformed {sum(st.malformed.values())}", file=sys.stderr)
        return 0

    return run_until_signal(main())
