"""``m3sense store`` and ``m3sense timeline``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bus.cli import add_bus_option
from m3sense.errors import UserError

_SINK_HELP = (
    "sqlite:PATH, sqlite:///relative.db, sqlite:////absolute.db or PATH.db (SQLite); "
    "influx://HOST:PORT?db=DB[&rp=RP] (InfluxDB 1.x, /write) or influx://HOST:PORT?bucket=B[&org=O] "
    "(v2 API: 1.8+, 2.x, 3.x; a 1.x server is detected), influxs://... for HTTPS "
    "(token from $INFLUX_TOKEN or --token-file, never the command line)"
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
            "SIGINT/SIGTERM: drain, flush, exit. The last line says what reached the sink, what waits in the "
            "spool and what was lost. Exit code 0 only if everything received reached the sink; 1 if anything "
            "was dropped, refused or still waits in the spool; 2 for bad input; 130 after Ctrl-C."
        ),
    )
    add_bus_option(s)
    _add_sink_options(s)
    s.add_argument("--spool-dir", type=Path, help="InfluxDB spool folder (default $XDG_STATE_HOME/m3sense/spool/...)")
    s.add_argument("--max-spool-mb", type=float, default=512.0, help="spool bound; past it points are dropped (default 512)")
    s.add_argument("--flush-interval", type=float, default=1.0, metavar="S", help="flush the sink every S seconds")
    s.add_argument("--json", action="store_true",
                   help="at exit print one JSON object on stdout: sink, written, spooled, spool_dir, dropped, "
                        "refused, affect_records, exit_code")
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
        if target.api == "v1" and target.token and ":" not in target.token:
            raise UserError("InfluxDB 1.x takes credentials as user:password ($INFLUX_TOKEN or --token-file)")
    elif args.token_file is not None:
        raise UserError("--token-file is for InfluxDB sinks")
    return target


def _store(args: argparse.Namespace) -> int:
    """Run the store; whatever ends it, say what became of the records (and, with --json,
    print the one JSON object ``m3sense run`` reads)."""
    import dataclasses
    import json

    from storage.report import StoreOutcome

    outcome = StoreOutcome()
    try:
        target = _target(args)
        outcome = StoreOutcome(sink=target.address)
        if args.flush_interval <= 0 or args.max_spool_mb <= 0:
            raise UserError("--flush-interval and --max-spool-mb must be > 0")
        outcome = _run_store(args, target)
    except UserError as exc:
        outcome = dataclasses.replace(outcome, bad_input=str(exc))
        raise
    except KeyboardInterrupt:  # before the signal handlers were in place
        outcome = dataclasses.replace(outcome, interrupted=True)
        raise
    finally:
        if args.json:
            print(json.dumps(outcome.as_json()), flush=True)
    print(outcome.summary(), file=sys.stderr, flush=True)
    return outcome.exit_code


def _run_store(args: argparse.Namespace, target):
    """Bus → sink until SIGINT/SIGTERM, then the :class:`StoreOutcome`. A store that breaks
    (say, the spool's disk fails) still says what it stored by then."""
    import asyncio
    import logging
    import signal

    from storage.connect import open_sink
    from storage.node import StoreNode
    from storage.report import StoreOutcome
    from storage.target import InfluxTarget

    influx = isinstance(target, InfluxTarget)
    options = {"max_spool_bytes": int(args.max_spool_mb * 2**20)} if influx else {}
    interrupted = False

    async def main() -> StoreOutcome:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_sigint() -> None:
            nonlocal interrupted
            interrupted = True
            stop.set()

        loop.add_signal_handler(signal.SIGINT, on_sigint)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        sink = open_sink(target, spool_dir=args.spool_dir, **options)
        node = StoreNode(args.bus, sink, flush_interval_s=args.flush_interval,
                         on_device_end=lambda d: print(f"store: end of device {d}", file=sys.stderr, flush=True))
        failure = None
        try:
            async with sink:
                print(f"store: {target!r} <- {args.bus}", file=sys.stderr, flush=True)
                await node.run(stop)
        except UserError:
            raise
        except Exception as exc:
            logging.getLogger("storage").exception("store failed")
            failure = f"{type(exc).__name__}: {exc}"
        c = sink.counters
        return StoreOutcome(sink=target.address, influx=influx, messages=node.processed,
                            received=node.records, written=c.written,
                            spooled=c.pending, spool_dir=getattr(sink, "spool_dir", None), dropped=c.dropped,
                            refused=c.rejected, affect_records=c.affect_written, interrupted=interrupted,
                            error=sink.last_error, failure=failure, malformed=node.malformed())

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
