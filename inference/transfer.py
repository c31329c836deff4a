"""Transfer to a new task (paper section 6.3): a trained M3Sense keeps its representation and
learns a new Task Learning Network from a few labelled recordings.

Why the pieces are what they are:

- Frozen (``--freeze encoders``): the unimodal encoders, the fusion and the recognition network
  (the domain alignment), plus the task encoders and heads of the tasks the checkpoint already
  answers. Their weights and BatchNorm statistics do not move, so the old tasks' answers stay
  exactly what they were and a few recordings cannot wear down a representation learned from many.
- Learned: for each task asked for, its task encoder (started from the checkpoint's first task's,
  so it starts from a projection that already reads the fused representation) and a fresh head.
  A task the checkpoint already has gets a fresh head on its own task encoder (the paper's
  "fine-tune a multitask model to a single task").
- CAM's query is a one-hot task id: a new task's query column is the mean of the old ones (it
  attends over the modalities as the known tasks do on average) and is frozen with the fusion.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch

from inference.model import M3Sense, ModelConfig

FREEZE = ("encoders",)


def transfer_config(source: ModelConfig, tasks: Sequence[str], classes: Mapping[str, Sequence[str]]) -> ModelConfig:
    """The source's architecture answering its own tasks and then the new ones."""
    new = [t for t in tasks if t not in source.tasks]
    return replace(
        source, tasks=(*source.tasks, *new), classes={**source.classes, **{t: tuple(classes[t]) for t in new}}
    )


def transfer_model(source: M3Sense, tasks: Sequence[str], classes: Mapping[str, Sequence[str]], seed: int) -> M3Sense:
    """A model with ``source``'s representation frozen and trainable task networks for ``tasks``."""
    if not tasks:
        raise ValueError("transfer needs at least one task to learn")
    cfg = transfer_config(source.cfg, tasks, classes)
    torch.manual_seed(seed)
    model = M3Sense(cfg)
    old = source.state_dict()
    state = model.state_dict()
    first = source.cfg.tasks[0]
    for key in state:
        part, _, rest = key.partition(".")
        if part in ("encoders", "recognition"):
            state[key] = old[key].clone()
        elif part == "fusion":
            if key == "fusion.query.weight":  # (fusion_dim, n_tasks): one column per task id
                w = old[key]
                state[key] = torch.cat(
                    [w, w.mean(dim=1, keepdim=True).expand(-1, state[key].shape[1] - w.shape[1])], dim=1
                )
            else:
                state[key] = old[key].clone()
        elif part == "task_encoders":
            task, _, tail = rest.partition(".")
            state[key] = old[f"task_encoders.{task if task in source.cfg.tasks else first}.{tail}"].clone()
        elif part == "heads":
            task = rest.partition(".")[0]
            if task not in tasks:
                state[key] = old[key].clone()
    model.load_state_dict(state, strict=True)
    kept = [t for t in cfg.tasks if t not in tasks]
    model.freeze(
        [
            model.encoders,
            model.fusion,
            model.recognition,
            *(model.task_encoders[t] for t in kept),
            *(model.heads[t] for t in kept),
        ]
    )
    return model


def frozen_parts(model: M3Sense) -> list[str]:
    """Names of the submodules whose weights training leaves alone (for provenance)."""
    named = {id(m): n for n, m in model.named_modules()}
    return [named[id(m)] for m in model._frozen]
