"""What ``infer`` spends per window, in CPU (all threads), and what that allows on this machine.

Prints, on the same windows (simulated wearers cut by the live preprocessor), in this process:
  (a) the network alone (ONNX Runtime, the shipped checkpoint) at batch 32 and 256, with the
      runtime's pool threads spin-waiting between batches (ONNX Runtime's default, what infer
      did before) and without (what infer does now); the probabilities must be equal;
  (b) the window features (beats, EDA, temperature: the stress model's input and the wearers'
      calibration) alone;
  (c) infer's whole work per window (``Answerer.answer_windows``: features, calibration, the
      feature model, the network, the answer rules) at batch 32;
  (d) the same with every other window flagged off the wrist: infer computes features only for
      the windows an answer or a wearer's reference reads (before: for every window), so the
      features of (b) for all windows are printed beside those for the windows read.
CPU per window is the figure to compare on a shared machine (wall-clock windows/s move with the
other work running); "windows/s per core" is 1 / CPU per window.

    .venv/bin/python bench/bench_infer_cost.py [--minutes 6] [--subjects 4]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import numpy as np


def cpu_per_call(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(CPU s, wall s) per call over ``repeat`` calls, after one warm-up call."""
    fn()
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.process_time() - c0) / repeat, (time.perf_counter() - w0) / repeat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=6)
    ap.add_argument("--subjects", type=int, default=4)
    args = ap.parse_args()

    import onnxruntime as ort

    from inference.answer import Calibrations, load_answerer
    from inference.calibration import CalibrationConfig
    from inference.dataset import window_inputs
    from inference.features import message_features
    from preprocess import recording_windows
    from replay import simulate_recordings

    recs = simulate_recordings(minutes=args.minutes, seed=5, subjects=args.subjects, mark_rest=True)
    windows = [w.to_message() for r in recs for w in recording_windows(r)]
    answerer = load_answerer()
    net = answerer._net
    assert net is not None, "the default bundle holds an M3Sense network"
    print(f"{len(windows)} windows of {args.subjects} simulated wearers x {args.minutes:g} min")

    mods = list(net.modalities)
    xs, ps = zip(*(window_inputs(w.arrays, w.meta, mods, dict(net.shapes)) for w in windows))
    norm = net.checkpoint.normalizer
    inputs = {m: norm.apply(m, np.stack([x[m] for x in xs]), None) for m in mods}
    present = np.array(ps, dtype=bool)
    path = net._onnx.session._model_path
    probs = {}
    for spin in ("1", "0"):
        opts = ort.SessionOptions()
        opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
        sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        for batch in (32, 256):
            b = min(batch, len(windows))
            feed = {n: inputs[n][:b] for n in names[:-1]}
            feed[names[-1]] = present[:b]
            cpu, wall = cpu_per_call(partial(sess.run, None, feed), max(2, 512 // b))
            probs[spin, batch] = sess.run(None, feed)
            print(
                f"(a) network, batch {b:3d}, pool threads {'spinning' if spin == '1' else 'sleeping'}: "
                f"CPU {cpu / b * 1e3:.2f} ms/window ({b / cpu:.0f} windows/s per core), wall {b / wall:.0f} windows/s"
            )
    same = all(np.array_equal(a, c) for batch in (32, 256) for a, c in zip(probs["1", batch], probs["0", batch]))
    print(f"    probabilities equal with and without spinning: {same}")

    cpu, _ = cpu_per_call(lambda: message_features(windows), 1)
    print(f"(b) window features: CPU {cpu / len(windows) * 1e3:.2f} ms/window")

    def answer_all() -> None:
        cal = Calibrations(answerer.calibration_config or CalibrationConfig())  # as the infer node does
        for i in range(0, len(windows), 32):
            answerer.answer_windows(windows[i : i + 32], cal)

    cpu, wall = cpu_per_call(answer_all, 1)
    n = len(windows)
    print(
        f"(c) infer's whole work, batch 32: CPU {cpu / n * 1e3:.2f} ms/window ({n / cpu:.0f} windows/s per core), "
        f"wall {n / wall:.0f} windows/s"
    )

    from dataclasses import replace

    off = [
        replace(w, meta={**w.meta, "quality": {**dict(w.meta.get("quality") or {}), "off_wrist": True}}) if i % 2 else w
        for i, w in enumerate(windows)
    ]
    read = [w for i, w in enumerate(off) if not i % 2]
    all_cpu, _ = cpu_per_call(lambda: message_features(off), 1)
    read_cpu, _ = cpu_per_call(lambda: message_features(read), 1)
    windows = off
    cpu, _ = cpu_per_call(answer_all, 1)
    print(
        f"(d) half the windows off the wrist: features for every window {all_cpu / n * 1e3:.2f} ms/window (before), "
        f"for the windows read {read_cpu / n * 1e3:.2f} (now); infer's whole work {cpu / n * 1e3:.2f} ms/window"
    )


if __name__ == "__main__":
    main()
