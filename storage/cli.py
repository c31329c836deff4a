"""``m3sense store`` and ``m3sense timeline``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bus.cli import add_bus_option
from m3sense.errors import UserError

_SINK_HELP = (
    "sqlite:///relative.db, sqlite:////absolute.db or PATH.db (SQLite); "
    "influx://HOST:PORT?bucket=B[&org=O] or influxs://... (InfluxDB over HTTP/HTTPS; "
    "token from $INFLUX_TOKEN or --token-file, never the command line)"
)


def _add_sink_options(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--sink", required=default is None, default=default, help=_SINK_HELP)
    p.add_argument("--token-file", type=Path, metavar="FILE",
                   help="read the InfluxDB token (1.x: user:password) from FILE instead of $INFLUX_TOKEN")


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "store", help="store affect predictions, device status and 1 Hz physiology (SQLite or InfluxDB)",
        description=(
            "Subscribe to affect/, status/ and the raw EDA, TEMP, BVP and HR streams, and write one record per "
            "window and task, one per status event and one per device, signal and second (EDA, skin temperature, "
            "heart rate from BVP) to SQLite or InfluxDB. InfluxDB writes survive outages on a bounded disk spool. "
            "SIGINT/SIGTERM: drain, flush, exit. Exit code 1 if any record was dropped or refused."
        ),
    )
    add_bus_option(s)
    _add_sink_options(s)
    s.add_argument("--spool-dir", type=Path, help="InfluxDB spool folder (default $XDG_STATE_HOME/m3sense/spool/...)")
    s.add_argument("--max-spool-mb", type=float, default=512.0, help="spool bound; past it points are dropped (default 512)")
    s.add_argument("--flush-interval", type=float, default=1.0, metavar="S", help="flush the sink every S seconds")
    s.set_defaults(func=_store)

    t = sub.add_parser(
        "timeline", help="read the stored affect timeline back (JSON lines or a PNG)",
        description="Read affect records from SQLite or InfluxDB (InfluxQL over /query) in time order.",
    )
    _add_sink_options(t)
    t.add_argument("--device", help="only this device")
    t.add_argument("--since", help="Unix seconds, a duration back from now (30m, 2h, 1d) or an ISO 8601 time")
    out = t.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON object per line: window end, device, task, ...")
    out.add_argument("--plot", type=Path, metavar="PNG", help="draw the timeline per task into a PNG")
    t.set_defaults(func=_timeline)


def _target(args: argparse.Namespace):
    import os

    from storage.target import InfluxTarget, parse_sink, read_token

    target = parse_sink(args.sink)
    if isinstance(target, InfluxTarget):
        target = target.with_token(read_token(args.token_file, os.environ))
    elif args.token_file is not None:
        raise UserError("--token-file is for InfluxDB sinks")
    return target


def _store(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from storage.connect import open_sink
    from storage.node import StoreNode
    from storage.target import InfluxTarget

    target = _target(args)
    if args.flush_interval <= 0 or args.max_spool_mb <= 0:
        raise UserError("--flush-interval and --max-spool-mb must be > 0")
    options = {"max_spool_bytes": int(args.max_spool_mb * 2**20)} if isinstance(target, InfluxTarget) else {}

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with open_sink(target, spool_dir=args.spool_dir, **options) as sink:
            node = StoreNode(args.bus, sink, flush_interval_s=args.flush_interval,
                             on_device_end=lambda d: print(f"store: end of device {d}", file=sys.stderr, flush=True))
            print(f"store: {target!r} <- {args.bus}", file=sys.stderr, flush=True)
            await node.run(stop)
        c = sink.counters
        print(f"store: {node.processed} messages, {node.records} records; {c.as_dict()}", file=sys.stderr)
        return 1 if c.dropped or c.rejected else 0

    return asyncio.run(main())


def _timeline(args: argparse.Namespace) -> int:
    import time

    from storage.connect import read_affect
    from storage.timeline import json_lines, parse_since, plot_timeline

    target = _target(args)
    since = parse_since(args.since, time.time()) if args.since else None
    try:
        records = read_affect(target, device=args.device, since_s=since)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    if args.plot:
        plot_timeline(records, args.plot)
        print(f"timeline: {len(records)} records -> {args.plot}", file=sys.stderr)
    elif args.json:
        sys.stdout.write(json_lines(records))
    else:
        for r in records:
            conf = "" if r.confidence is None else f"{r.confidence:.2f}"
            truth = f" (true {r.true_label})" if r.true_label else ""
            print(f"{r.time_s:.3f} {r.device} {r.task} {r.label or '-'} {conf} {r.status}{truth}")
    return 0
