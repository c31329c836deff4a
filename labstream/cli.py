"""``m3sense lsl``: the bus as LSL outlets for LabRecorder."""

from __future__ import annotations

import argparse
import sys

from bus.cli import add_bus_option
from bus.topics import valid_name
from common.errors import UserError


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
    p.set_defaults(func=_lsl)


def _lsl(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    try:
        from labstream.node import LslNode
        from labstream.outlets import Outlets
    except (ImportError, OSError) as exc:  # pylsl missing, or its liblsl not loadable here
        raise UserError(f"LSL is not available: {exc}") from None

    interrupted = False

    async def main() -> tuple[LslNode, Outlets]:
        nonlocal interrupted
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_sigint() -> None:
            nonlocal interrupted
            interrupted = True
            stop.set()

        loop.add_signal_handler(signal.SIGINT, on_sigint)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        outlets = Outlets()
        for device in args.device:
            outlets.declare(device)
        node = LslNode(args.bus, outlets)
        task = asyncio.create_task(node.run(stop))
        while node.subscriber is None and not task.done():
            await asyncio.sleep(0.01)
        print(
            f"lsl: outlets for {', '.join(args.device) or 'each device as it appears'} <- {args.bus}",
            file=sys.stderr,
            flush=True,
        )
        await task
        outlets.close()
        return node, outlets

    node, outlets = asyncio.run(main())
    stats = node.subscriber.stats if node.subscriber is not None else None
    lost = sum(stats.gaps_by_topic.values()) if stats is not None else 0
    malformed = sum(stats.malformed.values()) if stats is not None else 0
    pushed = ", ".join(f"{d}/{s} {n}" for (d, s), n in sorted(outlets.pushed.items())) or "nothing"
    print(
        f"lsl: {node.messages} messages; samples pushed: {pushed}; lost on the bus {lost}, malformed {malformed}",
        file=sys.stderr,
        flush=True,
    )
    if interrupted:
        return 130
    return 1 if lost or malformed else 0
