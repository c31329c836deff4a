"""``m3sense lsl``: the bus as LSL outlets for LabRecorder."""

from __future__ import annotations

import argparse
import sys

from bus.cli import add_bus_option
from bus.topics import valid_name
from common.errors import UserError
from common.summary import add_json_option, print_summary


def _device(text: str) -> str:
    if not valid_name(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device id (letters, digits, _.:-)")
    return text


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "lsl",
        help="publish the raw streams and the affect stream as LSL outlets (LabRecorder)",
        description=(
            "Subscribe to raw/, affect/ and status/ and publish, per device, LSL outlets EDA (4 Hz), BVP (64 Hz), "
            "TEMP (4 Hz), ACC (32 Hz, x/y/z), HR (1 Hz), IBI (irregular), Tags (markers), Affect (per window: "
            "each task's label, or why there is none: low_quality, off_wrist, calibrating, uncertain) and "
            "AffectProb (each task's confidence and class probabilities). Source ids are m3sense/<device>/<stream>, "
            "stable across restarts. Samples keep their bus times, mapped onto the LSL clock by one offset "
            "(stored in each stream's desc/m3sense/lsl_minus_unix_s). Discovery follows liblsl's config "
            "(LSLAPICFG=FILE; see the README for a loopback-only one). SIGINT/SIGTERM: drain and exit; the last "
            "line says what was pushed. Exit 0, 1 if the bus lost messages on the way, 130 after Ctrl-C."
        ),
    )
    add_bus_option(p)
    p.add_argument(
        "--device",
        action="append",
        default=[],
        type=_device,
        metavar="ID",
        help="create this device's outlets at start, so a recorder can select them before data flows "
        "(repeatable; other devices get outlets on their first message)",
    )
    add_json_option(p, "messages, pushed (samples per DEVICE/STREAM), lost, malformed")
    p.set_defaults(func=_lsl)


def _lsl(args: argparse.Namespace) -> int:
    from common.aio import Stop, run_until_signal

    try:
        from labstream.node import LslNode
        from labstream.outlets import Outlets
    except (ImportError, OSError) as exc:  # pylsl missing, or its liblsl not loadable here
        raise UserError(f"LSL is not available: {exc}") from None

    outlets = Outlets()
    node = LslNode(args.bus, outlets)

    def ready(bus: str) -> None:
        print(
            f"lsl: outlets for {', '.join(args.device) or 'each device as it appears'} <- {bus}",
            file=sys.stderr,
            flush=True,
        )

    async def main(stop: Stop) -> int:
        for device in args.device:
            outlets.declare(device)
        try:
            await node.run(stop, on_ready=ready)
        finally:
            outlets.close()
        return 0

    code = run_until_signal(main)
    stats = node.subscriber.stats if node.subscriber is not None else None
    lost = sum(stats.gaps_by_topic.values()) if stats is not None else 0
    malformed = sum(stats.malformed.values()) if stats is not None else 0
    pushed = ", ".join(f"{d}/{s} {n}" for (d, s), n in sorted(outlets.pushed.items())) or "nothing"
    print(
        f"lsl: {node.messages} messages; samples pushed: {pushed}; lost on the bus {lost}, malformed {malformed}",
        file=sys.stderr,
        flush=True,
    )
    if code == 0:  # 130: interrupted (what was counted above is still true)
        code = 1 if lost or malformed else 0
    if args.json:
        facts = {
            "messages": node.messages,
            "pushed": {f"{d}/{s}": n for (d, s), n in sorted(outlets.pushed.items())},
            "lost": lost,
            "malformed": malformed,
        }
        problems = [f"{n} {what}" for n, what in ((lost, "lost on the bus"), (malformed, "malformed")) if n]
        print_summary("lsl", code, facts, problems)
    return code
