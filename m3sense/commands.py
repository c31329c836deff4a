"""``m3sense run`` and ``m3sense demo``: the whole pipeline, from a command line."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from bus.cli import add_bus_option
from common.argtypes import non_negative_int, positive_int, positive_minutes, speed
from common.errors import UserError
from common.summary import add_json_option
from inference.cli import MODEL_HELP
from replay.cli import SOURCE_HELP

TASKS = ["stress", "anxiety", "emotion"]


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser(
        "run",
        help="replay a recording through preprocess, inference and storage",
        description="Start the hub, then preprocess, infer and store as child processes, and replay SOURCE "
        "(what `m3sense replay` reads) through them. Ends when storage has "
        "written every device's last window; Ctrl-C stops early with every buffer flushed.",
    )
    r.add_argument("source", help=SOURCE_HELP)
    r.add_argument("--speed", type=speed, default=math.inf, help="N x real time, or 'max' (default max)")
    r.add_argument(
        "--max-restarts",
        type=non_negative_int,
        default=3,
        metavar="N",
        help="start a stage that dies again at most N times (default 3; 0: a dead stage stops the run)",
    )
    r.add_argument(
        "--sink",
        action="append",
        help="where results go: sqlite:///PATH.db (default sqlite:///m3sense.db), influx://HOST:PORT?bucket=B "
        "(token from $INFLUX_TOKEN) or mqtt://HOST:PORT[?user=U] (password from $MQTT_PASSWORD); "
        "repeat it to write to several at once",
    )
    r.add_argument(
        "--alerts", type=Path, metavar="RULES.toml", help="run these alert rules in the store (see `store --alerts`)"
    )
    r.add_argument(
        "--mqtt-password-file", type=Path, metavar="FILE", help="the MQTT password, instead of $MQTT_PASSWORD"
    )
    r.add_argument("--model", metavar="FILE", help=MODEL_HELP)
    r.add_argument("--tasks", help="comma-separated subset of stress,anxiety,emotion (default all)")
    add_json_option(
        r,
        "devices, affect_windows, sink, written, affect_records, spooled, spool_dir, dropped, refused, "
        "lost_windows, lost_windows_by_device, restarts, stages, died, failure, problems, store, lines "
        "(the live table goes to stderr)",
    )
    add_bus_option(r)
    for stage in ("preprocess", "infer"):
        r.add_argument(
            f"--{stage}-workers",
            type=positive_int,
            default=1,
            metavar="N",
            help=f"with --bus nats://...: start N {stage} workers sharing the devices (a worker group, up to 16; "
            "default 1)",
        )
    r.add_argument(
        "--stagger",
        action="store_true",
        help="preprocess --stagger: each device's windows on its own grid phase (many wristbands live at once)",
    )
    r.set_defaults(func=_run, bus=None)  # run starts its own hub: on a free loopback port unless --bus names one

    d = sub.add_parser(
        "demo",
        help="simulate a session and run it through the whole pipeline into SQLite",
        description="Simulate a few wristbands through phases of baseline, stress and amusement, replay them "
        "as fast as possible through preprocess, inference and storage (SQLite), show the live "
        "state per device, then summarise agreement with the simulated ground truth and draw a "
        "PNG timeline. Everything is written under --out. The recordings are synthetic.",
    )
    d.add_argument("--out", type=Path, default=Path("m3sense-demo"), help="output folder (default ./m3sense-demo)")
    d.add_argument(
        "--minutes",
        type=positive_minutes,
        default=30.0,
        help="session length per device (default 30: each wearer marks a rest at the start, "
        "the stress model answers once it is over)",
    )
    d.add_argument("--devices", type=positive_int, default=3, help="number of simulated wristbands (default 3)")
    d.add_argument("--seed", type=non_negative_int, default=2022, help="simulation seed (default 2022)")
    d.add_argument("--speed", type=speed, default=math.inf, help="N x real time, or 'max' (default max)")
    d.add_argument("--model", metavar="FILE", help=MODEL_HELP)
    add_json_option(
        d, "run's fields and windows_stored, db, timeline_png, agreement (per task), seconds (the tables go to stderr)"
    )
    d.set_defaults(func=_demo)


def _run(args: argparse.Namespace) -> int:
    from common.aio import Stop, run_until_signal
    from m3sense.liveview import LiveView
    from m3sense.pipeline import PipelineConfig, outcome, run_pipeline
    from replay.e4csv import read_source

    recordings = read_source(args.source)
    sinks = args.sink or ["sqlite:///m3sense.db"]
    extra = [a for s in sinks[1:] for a in ("--sink", s)]
    extra += ["--alerts", str(args.alerts)] if args.alerts else []
    extra += ["--mqtt-password-file", str(args.mqtt_password_file)] if args.mqtt_password_file else []
    cfg = PipelineConfig(
        sink=sinks[0],
        store_args=tuple(extra),
        speed=args.speed,
        model=args.model,
        tasks=args.tasks,
        bus=args.bus,
        max_restarts=max(0, args.max_restarts),
        preprocess_workers=args.preprocess_workers,
        infer_workers=args.infer_workers,
        stagger=args.stagger,
    )
    from m3sense.reports import finish, run_report

    view = LiveView(args.tasks.split(",") if args.tasks else TASKS, out=sys.stderr if args.json else sys.stdout)
    ended: list[dict] = []  # the run's report, once it has one

    async def main(stop: Stop) -> int:
        result = await run_pipeline(recordings, cfg, on_affect=view.update, stop=stop)
        view.draw()
        code, lines = outcome(result, sinks[0], len(recordings))
        ended.append(run_report(result, sinks[0], len(recordings), lines))
        print("\n".join(lines), file=sys.stderr)
        return code

    code = run_until_signal(main)
    if args.json:
        print(json.dumps(finish("run", ended[0] if ended else None, code)), flush=True)
    return code


def agreement(records: list) -> dict[str, dict]:
    """Per task: windows stored, windows predicted, and :func:`inference.metrics.task_scores`
    over the windows with both an answer and a ground truth (``accuracy`` is the agreement,
    ``majority_accuracy`` what always answering the commonest true label would score)."""
    import numpy as np

    from inference.metrics import task_scores

    out: dict[str, dict] = {}
    for task in sorted({r.task for r in records}):
        rs = [r for r in records if r.task == task]
        judged = [r for r in rs if r.label is not None and r.true_label is not None]
        classes = sorted({r.label for r in judged} | {r.true_label for r in judged})
        index = {c: i for i, c in enumerate(classes)}
        y_true = np.array([index[r.true_label] for r in judged], dtype=np.int64)
        y_pred = np.array([index[r.label] for r in judged], dtype=np.int64)
        out[task] = {
            "windows": len(rs),
            "predicted": sum(r.label is not None for r in rs),
            **task_scores(y_true, y_pred, classes),
        }
    return out


def _demo(args: argparse.Namespace) -> int:
    import time

    from common.aio import Stop, run_until_signal
    from m3sense.liveview import LiveView
    from m3sense.pipeline import PipelineConfig, outcome, run_pipeline
    from replay.e4csv import read_source, write_e4_export
    from replay.simulate import simulate_recordings
    from storage.connect import read_affect
    from storage.target import parse_sink
    from storage.timeline import plot_timeline

    if args.minutes < 2 or args.devices < 1:
        raise UserError("--minutes must be >= 2 and --devices >= 1")
    started = time.monotonic()
    out: Path = args.out
    rec_dir = out / "recordings"
    db = out / "affect.db"
    out.mkdir(parents=True, exist_ok=True)
    for stale in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        stale.unlink(missing_ok=True)
    print(
        f"demo: simulating {args.devices} wristband(s), {args.minutes:g} min each (synthetic) -> {rec_dir}",
        file=sys.stderr,
    )
    for rec in simulate_recordings(
        minutes=args.minutes, seed=args.seed, subjects=args.devices, labels="all", mark_rest=True
    ):
        write_e4_export(rec, rec_dir / rec.device)
    recordings = read_source(rec_dir)
    sink = f"sqlite:///{db}"
    from m3sense.reports import finish, run_report

    view = LiveView(TASKS, out=sys.stderr if args.json else sys.stdout)
    ended: list[dict] = []  # the run's report, once it has one
    cfg = PipelineConfig(sink=sink, speed=args.speed, model=args.model)

    stopped = False

    async def main(stop: Stop) -> int:
        nonlocal stopped
        result = await run_pipeline(recordings, cfg, on_affect=view.update, stop=stop)
        view.draw()
        code, lines = outcome(result, sink, len(recordings))
        ended.append(run_report(result, sink, len(recordings), lines))
        stopped = stop.is_set()
        if code or stopped:
            print("\n".join(lines), file=sys.stderr)
        return code

    code = run_until_signal(main)
    if code != 0 or stopped:  # a stopped demo has no whole run to score
        if args.json:
            print(json.dumps(finish("demo", ended[0] if ended else None, code)), flush=True)
        return code
    records = read_affect(parse_sink(sink))
    text = sys.stderr if args.json else sys.stdout  # with --json, stdout holds the one JSON object
    windows = len({(r.device, r.time_s) for r in records})
    scores = agreement(records)
    print(f"\ndemo: {windows} windows stored in {db}", file=text)
    print("task      windows  predicted  agreement with simulated truth  (majority-class rate)", file=text)
    for task, s in scores.items():
        print(
            f"{task:9} {s['windows']:7d}  {s['predicted']:9d}  {s['accuracy']:30.1%}  ({s['majority_accuracy']:.1%})",
            file=text,
        )
    png = out / "timeline.png"
    plot_timeline(records, png)
    seconds = time.monotonic() - started
    print(f"demo: timeline (true vs predicted per task) in {png}; finished in {seconds:.0f} s", file=text)
    if args.json:
        report = {
            **(ended[0] if ended else {}),
            "windows_stored": windows,
            "db": str(db),
            "timeline_png": str(png),
            "agreement": scores,
            "seconds": round(seconds, 1),
        }
        print(json.dumps(finish("demo", report, 0)), flush=True)
    return 0
