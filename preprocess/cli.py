"""``m3sense preprocess``: filters, quality and 20 s windows for every device on the bus."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from typing import TYPE_CHECKING

from bus.cli import add_bus_option
from bus.metrics import add_metrics_options
from bus.workers_cli import add_workers_options, workers_spec
from common.argtypes import deprecated_alias, positive_seconds
from common.summary import add_json_option

if TYPE_CHECKING:
    from preprocess.windower import WindowConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "preprocess",
        help="filter raw streams and publish 20 s windows with signal quality",
        description=(
            "Subscribe to raw/, label/ and status/; filter BVP, EDA and TEMP causally, cut 20 s windows on each "
            "device's time grid and publish them on window/<device>/ with per-modality presence, quality "
            "(off-wrist, motion, missing data, flat lines, saturation) and ground-truth labels during replay. "
            "Counters go to stderr every --report-every-s seconds and on exit; Ctrl-C flushes pending windows."
        ),
    )
    add_bus_option(p)
    add_workers_options(p)
    deprecated_alias(
        p,
        "--hop",
        p.add_argument(
            "--hop-s",
            dest="hop",
            type=positive_seconds,
            default=5.0,
            metavar="S",
            help="seconds between window starts, a multiple of 0.25 (default 5: a fresh window every 5 s)",
        ),
    )
    deprecated_alias(
        p,
        "--late",
        p.add_argument(
            "--late-s",
            dest="late",
            type=positive_seconds,
            default=4.0,
            metavar="S",
            help="how long past a window's end to wait for a lagging modality (default 4)",
        ),
    )
    deprecated_alias(
        p,
        "--max-gap",
        p.add_argument(
            "--max-gap-s",
            dest="max_gap",
            type=positive_seconds,
            default=30.0,
            metavar="S",
            help="longest gap bridged inside a stream; longer ones restart it (default 30)",
        ),
    )
    deprecated_alias(
        p,
        "--device-timeout",
        p.add_argument(
            "--device-timeout-s",
            dest="device_timeout",
            type=positive_seconds,
            default=120.0,
            metavar="S",
            help="close a device silent for S seconds and free its state (default 120)",
        ),
    )
    deprecated_alias(
        p,
        "--report-every",
        p.add_argument(
            "--report-every-s",
            dest="report_every",
            type=positive_seconds,
            default=30.0,
            metavar="S",
            help="print counters every S seconds (default 30)",
        ),
    )
    p.add_argument(
        "--stagger",
        action="store_true",
        help=(
            "shift each device's window grid by its own phase (0 to hop, from its id) so that many wristbands "
            "on one clock close their windows spread over the hop instead of all at once: steadier load and "
            "lower latency for a fleet; windows of different devices then start at different times"
        ),
    )
    add_metrics_options(p)
    add_json_option(p, "counters (the last line's counts: windows, messages, bus_missing, ...)")
    p.set_defaults(func=_preprocess)


def format_counters(c: Counter) -> str:
    keys = (
        "devices_open",
        "devices_opened",
        "devices_closed",
        "windows",
        "messages",
        "bus_missing",
        "bus_malformed",
        "late_samples",
        "duplicate_samples",
        "invalid_samples",
        "negative_eda",
        "rate_mismatch",
        "timing_mismatch",
        "clock_jumps",
        "malformed",
        "bad_labels",
    )
    head = ", ".join(f"{k} {c.get(k, 0)}" for k in keys)
    rest = ", ".join(f"{k} {v}" for k, v in sorted(c.items()) if k not in keys)
    return head + (f"; {rest}" if rest else "")


def window_config(args: argparse.Namespace) -> WindowConfig:
    """The windowing flags as a :class:`WindowConfig`; a bad combination is a user error."""
    from common.errors import UserError
    from preprocess.windower import WindowConfig

    try:
        return WindowConfig(hop_s=args.hop, late_s=args.late, max_gap_s=args.max_gap, stagger=args.stagger)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _preprocess(args: argparse.Namespace) -> int:
    if (spec := workers_spec(args, "preprocess")) is not None:
        if args.json:
            from common.errors import UserError

            raise UserError("--json is not available with --workers-group yet: each partition counts on its own")
        from preprocess.sharded import run_worker

        return run_worker(args, spec)
    from bus.metrics import start_metrics
    from common.counting import run_counting
    from common.errors import UserError
    from preprocess.node import SUBSCRIPTIONS, serve

    config = window_config(args)

    def ready(bus: str) -> None:
        print(f"preprocess: subscribed to {' '.join(SUBSCRIPTIONS)} on {bus}", file=sys.stderr, flush=True)

    return run_counting(
        "preprocess",
        lambda stop, report: serve(
            args.bus,
            config,
            device_timeout_s=args.device_timeout,
            report_every_s=args.report_every,
            on_ready=ready,
            report=report,
            metrics=start_metrics(args, "preprocess"),
            stop=stop,
        ),
        text=format_counters,
        json_summary=args.json,
    )
