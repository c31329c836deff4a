"""``m3sense replay`` and ``m3sense simulate``."""

from __future__ import annotations

import argparse
import math
import sys

from bus.cli import add_bus_option
from common.argtypes import (
    deprecated_alias,
    non_negative_int,
    positive_int,
    positive_minutes,
    positive_seconds,
    speed,
    wait_seconds,
)
from common.errors import UserError
from common.summary import add_json_option, print_summary

#: what a recording source may be (``replay.layouts``), for every command that reads one
SOURCE_HELP = (
    "an E4 Connect export folder or zip, or a folder holding several, or a data set in its original "
    "layout (wesad:PATH, kemocon:PATH, verbio:PATH, unlabelled:PATH; recognised without the prefix too)"
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replay",
        help="stream recorded E4 sessions onto the bus as if live",
        description=(
            "Publish an E4 Connect export (folder or zip, e.g. WESAD's SX_E4_Data.zip), or a folder of them, "
            "or a data set in its original layout (WESAD, K-EmoCon, VerBIO, unlabelled E4 folders) "
            "as raw/<modality>/<device>/ messages in wristband-sized chunks with the recording's timestamps, "
            "plus label/<device>/ from its labels (labels.csv, or the data set's own). Every file is read "
            "and checked before anything is published."
        ),
    )
    p.add_argument("source", help=SOURCE_HELP)
    add_bus_option(p)
    p.add_argument("--speed", type=speed, default=1.0, help="N x real time, or 'max' (default 1)")
    deprecated_alias(
        p,
        "--wait",
        p.add_argument(
            "--wait-s",
            dest="wait",
            type=wait_seconds,
            default=10.0,
            metavar="S",
            help="wait up to S seconds for subscribers of every topic before streaming "
            "(0: don't wait, inf: wait forever; default 10)",
        ),
    )
    p.add_argument("--device", help="device id to publish under (one recording only; default from the file name)")
    p.add_argument(
        "--packet-s",
        type=_packet_seconds,
        default=None,
        metavar="S",
        help="send about S seconds of each signal per message instead of the wristband's packets (BVP 11 "
        "samples, ACC 6, EDA 6, TEMP 4): fewer, larger messages for a gateway relaying many wristbands, each "
        "sample up to S later (0 < S <= 5; default: the wristband's packets)",
    )
    add_json_option(p, "finished, devices, messages, samples, recorded_s, wall_s")
    p.set_defaults(func=_replay)

    s = sub.add_parser(
        "simulate",
        help="write synthetic E4 recordings with labelled phases",
        description=(
            "Write synthetic sessions as real-format E4 Connect folders (ACC, BVP, EDA, TEMP, HR, IBI, tags, info) "
            "plus labels.csv (start,end,task,label). Physiology follows the phase (stress: heart rate up, HRV down, "
            "EDA up, skin temperature down), with per-subject variation, motion bursts and off-wrist stretches. "
            "Deterministic for a seed."
        ),
    )
    s.add_argument("out", help="output folder (one sub-folder per subject)")
    s.add_argument("--minutes", type=positive_minutes, required=True, help="session length per subject")
    s.add_argument("--seed", type=non_negative_int, required=True)
    s.add_argument("--subjects", type=positive_int, default=1)
    s.add_argument(
        "--labels",
        choices=("all", "stress", "anxiety", "emotion", "none"),
        default="all",
        help="which tasks' labels to write (like WESAD: stress; VerBIO: anxiety; K-EmoCon: emotion)",
    )
    s.add_argument("--no-faults", action="store_true", help="no motion bursts and no off-wrist stretches")
    s.add_argument(
        "--mark-rest",
        action="store_true",
        help="each wearer marks the baseline as their rest with the E4 button (a double press at "
        "its start, a press at its end): their calibration then needs no 30-minute search",
    )
    add_json_option(
        s,
        "out, subjects, minutes, seed, labels, faults, recordings (per subject: device, folder, files "
        "(what the folder holds), recorded_s, label_intervals); the folders' lines then go to stderr",
    )
    s.set_defaults(func=_simulate)


def _packet_seconds(text: str) -> float:
    value = positive_seconds(text)
    if value > 5.0:  # a window hop: longer would hold every window back by more than the hop
        raise argparse.ArgumentTypeError(f"expected at most 5 seconds per message, got {text!r}")
    return value


def _replay(args: argparse.Namespace) -> int:
    from bus import Publisher
    from common.aio import Stop, run_until_signal
    from replay.clock import ReplayStats, replay
    from replay.e4csv import read_source

    recordings = read_source(args.source)
    if args.device:
        if len(recordings) != 1:
            raise UserError(f"--device names one device, but {args.source} holds {len(recordings)} recordings")
        from dataclasses import replace

        recordings = [replace(recordings[0], device=args.device)]

    ended: list[ReplayStats] = []  # the replay's figures, once it has gone to the end

    def progress(st: ReplayStats) -> None:
        print(f"replay: {st.messages} messages, {st.samples} samples, {st.wall_s:.0f} s", file=sys.stderr)

    async def main(stop: Stop) -> int:
        async with Publisher(args.bus) as pub:  # a stopped replay still flushes what it sent
            print(f"replay: publishing {len(recordings)} device(s) on {args.bus}", file=sys.stderr, flush=True)
            run = replay(recordings, pub, speed=args.speed, wait_s=args.wait, progress=progress, packet_s=args.packet_s)
            st = await stop.first(run)
        if st is None:
            print(f"replay: stopped by {stop.signal.name if stop.signal else 'request'}", file=sys.stderr)
            return 0
        ended.append(st)
        ratio = st.recorded_s / st.wall_s if st.wall_s > 0 else math.inf
        print(
            f"replay: done, {len(recordings)} device(s), {st.messages} messages, {st.samples} samples, "
            f"{st.recorded_s:.0f} s recorded in {st.wall_s:.2f} s ({ratio:.0f}x real time)",
            file=sys.stderr,
        )
        return 0

    code = run_until_signal(main)
    if args.json:  # the figures are known once the replay has gone to the end
        st = ended[0] if ended else None
        figures = {k: getattr(st, k, None) for k in ("messages", "samples", "recorded_s", "wall_s")}
        facts = {"finished": st is not None, "devices": len(recordings), **figures}
        print_summary("replay", code, facts, [] if st is not None else ["stopped before the end"])
    return code


def _simulate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from replay.e4csv import write_e4_export
    from replay.simulate import simulate_recordings

    if args.minutes <= 0 or args.subjects < 1:
        raise UserError("--minutes must be > 0 and --subjects >= 1")
    out = Path(args.out)
    faults = not args.no_faults
    written: list[dict[str, object]] = []
    for rec in simulate_recordings(
        minutes=args.minutes,
        seed=args.seed,
        subjects=args.subjects,
        labels=args.labels,
        off_wrist=faults,
        motion=faults,
        mark_rest=args.mark_rest,
    ):
        folder = write_e4_export(rec, out / rec.device)
        print(folder, file=sys.stderr if args.json else sys.stdout)  # --json: stdout holds only the object
        written.append(
            {
                "device": rec.device,
                "folder": str(folder),
                "files": sorted(p.name for p in folder.iterdir() if p.is_file()),
                "recorded_s": rec.duration_s,
                "label_intervals": len(rec.labels),
            }
        )
    if args.json:
        facts = {
            "out": str(out),
            "subjects": len(written),
            "minutes": args.minutes,
            "seed": args.seed,
            "labels": args.labels,
            "faults": faults,
            "recordings": written,
        }
        print_summary("simulate", 0, facts)
    return 0
