"""ONNX export of the inference graph, and an ONNX Runtime session that runs it.

The graph is the paper's inference architecture (4.7): encoders, fusion, task encoders, the
recognition mean and the Task Learning Networks with softmax; no sampling, no KL. Inputs are
the normalised modality tensors (B, samples, channels) and the presence mask (B, M); one
probability output per task. Normalisation stays in numpy, shared with the PyTorch path.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from inference.model import M3Sense

OPSET = 17


class ProbabilityGraph(nn.Module):
    """Positional inputs (one per modality, then the mask) → softmax per task, for export."""

    def __init__(self, model: M3Sense, tasks: Sequence[str]) -> None:
        super().__init__()
        self.model, self.tasks = model, tuple(tasks)

    def forward(self, *args: Tensor) -> tuple[Tensor, ...]:
        *xs, mask = args
        out = self.model(dict(zip(self.model.cfg.modalities, xs)), mask, self.tasks)
        return tuple(torch.softmax(out.logits[t], dim=-1) for t in self.tasks)


def export_onnx(model: M3Sense, path: str | Path, tasks: Sequence[str] | None = None) -> Path:
    """Write the eval-mode graph for ``tasks`` (default all) to ``path``; batch size is dynamic."""
    cfg = model.cfg
    tasks = tuple(cfg.tasks if tasks is None else tasks)
    model.task_indices(tasks)  # validates the subset
    graph = ProbabilityGraph(model, tasks).eval()
    example = (
        *(torch.zeros(2, *cfg.input_shape(m)) for m in cfg.modalities),
        torch.ones(2, len(cfg.modalities), dtype=torch.bool),
    )
    names = [*cfg.modalities, "present"]
    outputs = [f"probs_{t}" for t in tasks]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The tracer warns about the task index list (constant per export, by design) and about
    # LSTM batch sizes (the initial state is zeros, made inside the graph for any batch). The
    # TorchScript exporter is deprecated, but the torch.export one needs onnxscript, which is
    # not a dependency.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            graph,
            example,
            str(path),
            input_names=names,
            output_names=outputs,
            opset_version=OPSET,
            dynamic_axes={n: {0: "batch"} for n in names + outputs},
            dynamo=False,
        )
    return path


class OnnxRunner:
    """An ONNX Runtime session over an exported graph: ``run(inputs, present)`` → probs per task."""

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        # Idle pool threads would spin-wait for the next batch on cores that preprocess and the
        # store need: a quarter more CPU per window for the same answers (bench/bench_scale.py).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.tasks = tuple(o.name.removeprefix("probs_") for o in self.session.get_outputs())

    def run(self, inputs: dict[str, np.ndarray], present: np.ndarray) -> dict[str, np.ndarray]:
        feed = {n: inputs[n] for n in self.inputs[:-1]}
        feed[self.inputs[-1]] = present.astype(bool)
        return dict(zip(self.tasks, self.session.run(None, feed)))
