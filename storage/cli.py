"""``m3sense store``, ``m3sense timeline`` and ``m3sense alerts``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from typing import TypeVar

from bus.cli import add_bus_option
from bus.workers_cli import add_workers_options, workers_spec
from common.argtypes import deprecated_alias, positive_number, positive_seconds
from common.errors import UserError

R = TypeVar("R")

_SINK_HELP = (
    "sqlite:PATH, sqlite:///relative.db, sqlite:////absolute.db or PATH.db (SQLite); "
    "influx://HOST:PORT?db=DB[&rp=RP] (InfluxDB 1.x, /write) or influx://HOST:PORT?bucket=B[&org=O] "
    "(v2 API: 1.8+, 2.x, 3.x; a 1.x server is detected), influxs://... for HTTPS "
    "(token from $INFLUX_TOKEN or --token-file, never the command line)"
)
_MQTT_SINK_HELP = (
    "; or mqtt://HOST:PORT[?user=U&prefix=m3sense&discovery=homeassistant] (mqtts:// for TLS, ca=PATH): "
    "live state, availability, Home Assistant discovery and alerts (user from user= or $MQTT_USERNAME, "
    "password from $MQTT_PASSWORD or --mqtt-password-file). Repeat --sink to write to several at once"
)


def _add_sink_options(p: argparse.ArgumentParser, default: str | None = None, *, several: bool = False) -> None:
    if several:  # store: --sink again and again, each sink gets every record
        p.add_argument("--sink", required=True, action="append", help=_SINK_HELP + _MQTT_SINK_HELP)
    else:
        p.add_argument("--sink", required=default is None, default=default, help=_SINK_HELP)
    p.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="read the InfluxDB token (1.x: user:password) from FILE instead of $INFLUX_TOKEN",
    )
    if several:
        p.add_argument(
            "--mqtt-password-file",
            type=Path,
            metavar="FILE",
            help="read the MQTT password from FILE instead of $MQTT_PASSWORD",
        )


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "store",
        help="store affect predictions, device status and 1 Hz physiology (SQLite or InfluxDB)",
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
    add_workers_options(s)
    _add_sink_options(s, several=True)
    s.add_argument(
        "--alerts",
        type=Path,
        metavar="RULES.toml",
        help="run the alert rules of this TOML file over the affect records; their raise/clear events "
        "go to every sink (see deploy/alerts.toml)",
    )
    s.add_argument("--spool-dir", type=Path, help="InfluxDB spool folder (default $XDG_STATE_HOME/m3sense/spool/...)")
    s.add_argument(
        "--max-spool-mb",
        type=positive_number,
        default=512.0,
        help="spool bound; past it points are dropped (default 512)",
    )
    deprecated_alias(
        s,
        "--flush-interval",
        s.add_argument(
            "--flush-interval-s",
            dest="flush_interval",
            type=positive_seconds,
            default=1.0,
            metavar="S",
            help="flush the sink every S seconds (default 1)",
        ),
    )
    from bus.metrics import add_metrics_options

    add_metrics_options(s)
    s.add_argument(
        "--positions",
        metavar="FILE|none",
        help="where each device's window stream stood at the last flush, so a restarted store counts "
        "the windows it lost (default $XDG_STATE_HOME/m3sense/positions/<sink>.json; with --workers-group "
        "the group keeps them in its NATS bucket instead)",
    )
    s.add_argument(
        "--json",
        action="store_true",
        help="at exit print one JSON object on stdout: sink, written, spooled, spool_dir, dropped, "
        "refused, affect_records, exit_code (of the first sink), received, error, lost_windows, "
        "lost_windows_by_device, and with several sinks 'sinks' (the same counts per sink), with --alerts "
        "'alerts' (raised, cleared)",
    )
    s.set_defaults(func=_store)

    t = sub.add_parser(
        "timeline",
        help="read the stored affect timeline back (JSON lines or a PNG)",
        description="Read affect records from SQLite or InfluxDB (InfluxQL over /query) in time order.",
    )
    _add_sink_options(t)
    t.add_argument("--device", help="only this device")
    t.add_argument("--since", help="Unix seconds, a duration back from now (30m, 2h, 1d) or an ISO 8601 time")
    out = t.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON object per line: window end, device, task, ...")
    out.add_argument("--plot", type=Path, metavar="PNG", help="draw the timeline per task into a PNG")
    t.set_defaults(func=_timeline)

    a = sub.add_parser(
        "alerts",
        help="list the stored alert events (raise/clear) of the --alerts rules",
        description="Read the alert events a store with --alerts kept (SQLite table alerts, InfluxDB measurement "
        "alerts) in time order.",
    )
    _add_sink_options(a)
    a.add_argument("--device", help="only this device")
    a.add_argument("--since", help="Unix seconds, a duration back from now (30m, 2h, 1d) or an ISO 8601 time")
    a.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per line: t_s, time_iso, device, task, rule, event, confidence, text",
    )
    a.set_defaults(func=_alerts)


def _target(args: argparse.Namespace, sink: str | None = None):
    """The target of ``sink`` (default ``--sink``) with its credentials from the environment or files."""
    import os

    from storage.target import MQTT_USER_ENV, InfluxTarget, MqttTarget, parse_sink, read_mqtt_password, read_token

    target = parse_sink(args.sink if sink is None else sink)
    if isinstance(target, InfluxTarget):
        target = target.with_token(read_token(args.token_file, os.environ))
        if target.api == "v1" and target.token and ":" not in target.token:
            raise UserError("InfluxDB 1.x takes credentials as user:password ($INFLUX_TOKEN or --token-file)")
    elif isinstance(target, MqttTarget):
        target = target.with_credentials(
            os.environ.get(MQTT_USER_ENV) or None,
            read_mqtt_password(getattr(args, "mqtt_password_file", None), os.environ),
        )
    if sink is None and args.token_file is not None and not isinstance(target, InfluxTarget):
        raise UserError("--token-file is for InfluxDB sinks")
    return target


def _targets(args: argparse.Namespace) -> list:
    """Every ``--sink`` of ``store``, checked together."""
    from storage.target import InfluxTarget, MqttTarget

    targets = [_target(args, s) for s in args.sink]
    addresses = [t.address for t in targets]
    if len(set(addresses)) != len(addresses):
        raise UserError("the same --sink is given twice")
    kinds = {type(t) for t in targets}
    if args.token_file is not None and InfluxTarget not in kinds:
        raise UserError("--token-file is for InfluxDB sinks")
    if args.mqtt_password_file is not None and MqttTarget not in kinds:
        raise UserError("--mqtt-password-file is for MQTT sinks")
    if args.spool_dir is not None and sum(isinstance(t, InfluxTarget) for t in targets) > 1:
        raise UserError("--spool-dir names one spool: give it with a single InfluxDB sink")
    return targets


def _check_flush_against_ack_wait(bus: str, flush_interval_s: float) -> None:
    """On NATS a message is acknowledged after the flush that stores it: a flush interval near the
    consumer's ack wait would have the stream deliver the store's held messages again."""
    from bus.endpoints import is_nats

    if not is_nats(bus):
        return
    from bus.nats_backend import ACK_WAIT_S

    if flush_interval_s > ACK_WAIT_S / 2:
        raise UserError(
            f"--flush-interval-s {flush_interval_s:g}: on NATS the store acknowledges a message after the flush "
            f"that stores it, so flush at least twice per ack wait ({ACK_WAIT_S:g} s): at most {ACK_WAIT_S / 2:g}"
        )


def _store(args: argparse.Namespace) -> int:
    """Run the store; whatever ends it, say what became of the records (and, with --json,
    print the one JSON object ``m3sense run`` reads)."""
    import dataclasses
    import json

    from storage.report import StoreOutcome
    from storage.sinks_report import combine

    outcome = StoreOutcome()
    per_sink = None
    try:
        targets = _targets(args)
        outcome = StoreOutcome(sink=targets[0].address)
        if args.flush_interval <= 0 or args.max_spool_mb <= 0:
            raise UserError("--flush-interval and --max-spool-mb must be > 0")
        _check_flush_against_ack_wait(args.bus, args.flush_interval)
        if workers_spec(args, "store") is not None and args.positions not in (None, "none"):
            raise UserError("--workers-group keeps the window ledger in the group's NATS bucket: leave out --positions")
        rules = None
        if args.alerts is not None:
            from storage.alerts import load_rules

            rules = load_rules(args.alerts)
        outcome, per_sink = _run_store(args, targets, rules)
    except UserError as exc:
        outcome = dataclasses.replace(outcome, bad_input=str(exc))
        raise
    except KeyboardInterrupt:  # before the signal handlers were in place
        outcome = dataclasses.replace(outcome, interrupted=True)
        raise
    finally:
        report, summary, code = outcome.as_json(), outcome.summary(), outcome.exit_code
        if per_sink is not None:  # every sink counted: the first one's fields, then "sinks" (and "alerts")
            report, summary, code = combine(report, summary, code, *per_sink)
        if args.json:
            print(json.dumps(report), flush=True)
    print(summary, file=sys.stderr, flush=True)
    return code


def _run_store(args: argparse.Namespace, targets: list, rules: list | None):
    """Bus → sinks until SIGINT/SIGTERM, then the :class:`StoreOutcome` (of the first sink)
    and what every sink and the alert rules did. A store that breaks (say, the spool's disk
    fails) still says what it stored by then."""
    import logging

    from common.aio import Stop, run_until_signal
    from storage.alerts import AlertEngine
    from storage.connect import open_sink
    from storage.fanout import FanoutSink
    from storage.node import StoreNode
    from storage.report import StoreOutcome
    from storage.sinks_report import SinkReport
    from storage.target import InfluxTarget

    target = targets[0]  # the first sink reports as the only one did
    influx = isinstance(target, InfluxTarget)
    finished: list = []  # what main counted, once it has flushed

    def sink_for(t):
        if isinstance(t, InfluxTarget):
            return open_sink(t, spool_dir=args.spool_dir, max_spool_bytes=int(args.max_spool_mb * 2**20))
        return open_sink(t)

    async def main(stop: Stop) -> int:
        sinks = [sink_for(t) for t in targets]
        sink = sinks[0]
        engine = AlertEngine(rules) if rules else None
        fanout = FanoutSink(sinks, alerts=engine)
        from storage.positions import LedgerFile, default_positions_file

        group = workers_spec(args, "store")
        positions = None if args.positions == "none" else Path(args.positions or default_positions_file(target.address))
        from bus.metrics import start_metrics

        def owned(partitions: set[int]) -> None:
            from bus.shards import owned_line

            print(owned_line("store", group, partitions), file=sys.stderr, flush=True)

        node = StoreNode(
            args.bus,
            fanout,
            flush_interval_s=args.flush_interval,
            ledger_file=LedgerFile(None if group is not None else positions),
            metrics=start_metrics(args, "store"),
            group=group,
            on_owned=owned,
            on_device_end=lambda d: print(f"store: end of device {d}", file=sys.stderr, flush=True),
        )
        failure = None

        def ready(bus: str) -> None:  # said once subscribed: what is published from now on is stored
            for s in sinks:
                print(f"store: {s!r} <- {bus}", file=sys.stderr, flush=True)

        try:
            async with fanout:
                if engine is not None:
                    await _resume_alerts(engine, targets)
                await node.run(stop, on_ready=ready)
        except UserError:
            raise
        except Exception as exc:
            logging.getLogger("storage").exception("store failed")
            failure = f"{type(exc).__name__}: {exc}"
        c = sink.counters
        outcome = StoreOutcome(
            sink=target.address,
            influx=influx,
            messages=node.processed,
            received=node.records,
            written=c.written,
            spooled=c.pending,
            spool_dir=getattr(sink, "spool_dir", None),
            dropped=c.dropped,
            refused=c.rejected,
            affect_records=c.affect_written,
            interrupted=stop.interrupted,
            error=sink.last_error,
            failure=failure,
            malformed=node.malformed(),
            lost_windows=dict(node.ledger.lost),
        )
        finished.append(
            (
                outcome,
                (
                    [SinkReport.of(t.address, s.counters, s.last_error) for t, s in zip(targets, sinks)],
                    None if engine is None else {"raised": engine.raised, "cleared": engine.cleared},
                ),
            )
        )
        return outcome.exit_code

    code = run_until_signal(main)
    if not finished:  # a second signal cut the flush short: what reached the sink is not known
        return StoreOutcome(
            sink=target.address, influx=influx, interrupted=code == 130, failure="stopped before its flush ended"
        ), None
    return finished[0]


async def _resume_alerts(engine, targets: list) -> None:
    """Give the engine the alert events the first SQLite or InfluxDB sink already holds, so a
    restarted store does not raise again what is raised, nor forget a cooldown."""
    import asyncio

    from storage.connect import read_alerts
    from storage.target import MqttTarget

    for t in targets:
        if isinstance(t, MqttTarget):
            continue
        try:
            events = await asyncio.to_thread(read_alerts, t)
        except (UserError, FileNotFoundError, ValueError, OSError) as exc:
            print(
                f"store: alert state not restored from {t.address} ({exc}); rules start afresh",
                file=sys.stderr,
                flush=True,
            )
            return
        engine.resume(events)
        print(f"store: alert rules resumed from {len(events)} stored events", file=sys.stderr, flush=True)
        return


def _stored(args: argparse.Namespace, read: Callable[..., list[R]]) -> list[R]:
    """What ``read`` (``read_affect`` or ``read_alerts`` of :mod:`storage.connect`) gives back
    from the --sink for --device and --since; a store that is not there is a user error."""
    import time

    from storage.timeline import parse_since

    target = _target(args)
    since = parse_since(args.since, time.time()) if args.since else None
    try:
        return read(target, device=args.device, since_s=since)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None


def _alerts(args: argparse.Namespace) -> int:
    import json
    from datetime import datetime

    from storage.connect import read_alerts

    for e in _stored(args, read_alerts):
        when = datetime.fromtimestamp(e.time_s, UTC).isoformat(timespec="seconds")
        if args.json:
            print(
                json.dumps(
                    {
                        "t_s": e.time_s,
                        "time_iso": when,
                        "device": e.device,
                        "task": e.task,
                        "rule": e.rule,
                        "event": e.event,
                        "confidence": e.confidence,
                        "text": e.text,
                    },
                    separators=(",", ":"),
                )
            )
        else:
            print(f"{when} {e.device} {e.rule} {e.event} {e.confidence:.2f} {e.text}")
    return 0


def _timeline(args: argparse.Namespace) -> int:
    from storage.connect import read_affect
    from storage.timeline import json_lines, plot_timeline

    records = _stored(args, read_affect)
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
