"""Inference throughput of M3Sense, all three tasks at once: eager PyTorch vs ONNX Runtime.

Prints windows/s and milliseconds per batch at batch sizes 1, 2, 32 and 256, beside the
paper's figure (Table 7: 203 ms per batch of two for M3Sense(CAM) on a P100 GPU). Both
backends run the same checkpoint (the shipped weights, or a freshly initialised model of the
same architecture when they are absent: the timing does not depend on the weight values),
on the same normalised inputs, in this process, one after the other.

    .venv/bin/python bench/bench_inference.py [--threads 1,2] [--seconds 2] [--model PATH]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from inference.checkpoint import DEFAULT_MODEL, load_checkpoint
from inference.model import M3Sense, ModelConfig, count_parameters
from inference.onnx_export import OnnxRunner, export_onnx

PAPER_MS_PER_BATCH_OF_2 = 203.0
BATCHES = (1, 2, 32, 256)


def timed(fn, seconds: float) -> float:
    """Mean seconds per call over at least ``seconds`` (and 3 calls), after one warm-up call."""
    fn()
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return (time.perf_counter() - t0) / n


def eager(model: M3Sense, xt: dict[str, torch.Tensor], pt: torch.Tensor) -> list[torch.Tensor]:
    """Class probabilities of every task from the torch model, as onnxruntime's graph gives them."""
    with torch.no_grad():
        out = model(xt, pt)
        return [torch.softmax(v, -1) for v in out.logits.values()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--threads", default="1,2", help="intra-op thread counts to try")
    ap.add_argument("--seconds", type=float, default=2.0, help="measuring time per configuration")
    args = ap.parse_args()

    if args.model or DEFAULT_MODEL.is_file():
        model = load_checkpoint(args.model).model
        what = f"checkpoint {args.model or DEFAULT_MODEL.name}"
    else:
        torch.manual_seed(333)
        model = M3Sense(ModelConfig()).eval()
        what = "untrained paper-sized model (no default weights found)"
    cfg = model.cfg
    print(f"# M3Sense inference, fusion {cfg.fusion}, tasks {','.join(cfg.tasks)}, {count_parameters(model):,} params")
    print(f"{what}; CPU cores visible: {os.cpu_count()}; torch {torch.__version__}\n")
    onnx_path = export_onnx(model, Path(tempfile.mkdtemp()) / "m3sense.onnx")
    rng = np.random.default_rng(0)
    print("| backend | threads | batch | ms / batch | windows / s |")
    print("|---|---:|---:|---:|---:|")
    best: dict[tuple[str, int], float] = {}
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        runner = OnnxRunner(onnx_path, threads=threads)
        for b in BATCHES:
            x = {m: rng.standard_normal((b, *cfg.input_shape(m))).astype(np.float32) for m in cfg.modalities}
            present = np.ones((b, len(cfg.modalities)), bool)
            xt = {m: torch.from_numpy(v) for m, v in x.items()}
            pt = torch.from_numpy(present)
            fns = (("pytorch eager", partial(eager, model, xt, pt)), ("onnxruntime", partial(runner.run, x, present)))
            for name, fn in fns:
                s = timed(fn, args.seconds)
                best[(name, b)] = max(best.get((name, b), 0.0), b / s)
                print(f"| {name} | {threads} | {b} | {1000 * s:.1f} | {b / s:,.0f} |", flush=True)
    print(
        f"\npaper (Table 7, P100 GPU): {PAPER_MS_PER_BATCH_OF_2:.0f} ms per batch of 2 = "
        f"{2 / PAPER_MS_PER_BATCH_OF_2 * 1000:.1f} windows/s"
    )
    for b in BATCHES:
        e, o = best[("pytorch eager", b)], best[("onnxruntime", b)]
        print(f"batch {b}: best eager {e:,.0f} w/s, best onnxruntime {o:,.0f} w/s ({o / e:.2f}x)")


if __name__ == "__main__":
    main()
