"""The M3Sense network (Samyoun, Islam et al., IMWUT 6(2) 2022, section 4), in one file.

Reading order follows the paper: per-modality Unimodal Feature Encoders (4.3.1), the fusion
(CAM, 4.3.2, or one of the variants of 5.4.3), the Domain Alignment Module (4.4) and a Task
Learning Network per task (4.5). Shapes are in comments: B batch, S segments, M modalities,
T tasks (the subset being computed), D widths named in :class:`ModelConfig`.

Widths the paper states are used as stated (CNN 64 then 32 channels with 1×1 and 3×3 kernels,
embedding 128, LSTM hidden 128, dropouts 0.3 / 0.1 / 0.3). The widths it leaves open (the
attention width of CAM, the per-task projection and the two FC layers, the latent width of the
recognition network, the TLN hidden layer) are sized so that CAM with three tasks and three
modalities has 2.25 M parameters like the paper's Table 6 (2,251 K); every width is a
:class:`ModelConfig` field and is stored in each checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from e4 import CHANNELS, RATES_HZ, TASK_CLASSES

FUSIONS = ("cam", "hamlet", "keyless", "sum")

#: Channels per sample of each E4 modality the model can take (ACC has three axes).
MODALITY_CHANNELS = {m: CHANNELS[m] for m in ("bvp", "eda", "temp", "acc")}
#: E4 rates (Hz); with ``window_s`` they fix each modality's samples per window.
MODALITY_FS_HZ = {m: RATES_HZ[m] for m in MODALITY_CHANNELS}


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelConfig:
    """Everything that fixes the architecture; saved verbatim in every checkpoint."""

    tasks: tuple[str, ...] = ("stress", "anxiety", "emotion")
    #: class names per task, in logit order
    classes: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(TASK_CLASSES))
    modalities: tuple[str, ...] = ("bvp", "eda", "temp")
    fusion: str = "cam"
    window_s: float = 20.0
    # Unimodal Feature Encoder (paper 5.4.1)
    segment_len: int = 5
    segment_stride: int = 5
    cnn_channels: tuple[int, int] = (64, 32)
    embed_dim: int = 128
    lstm_hidden: int = 128
    lstm_layers: int = 1
    cnn_dropout: float = 0.3
    lstm_dropout: float = 0.1
    attn_dropout: float = 0.3
    # Fusion and task representation (widths the paper leaves open)
    fusion_dim: int = 256  # query/key/value width of CAM
    hamlet_heads: int = 2
    task_dim: int = 512  # per-task projection W_f (Eq. 11)
    fc_dims: tuple[int, int] = (512, 256)  # the two FC layers after the projection
    fusion_dropout: float = 0.3
    latent_dim: int = 128  # recognition network output (mu, log sigma^2)
    head_hidden: int = 128  # Task Learning Network hidden layer

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, not {self.fusion!r}")
        unknown = [m for m in self.modalities if m not in MODALITY_CHANNELS]
        if unknown or not self.modalities:
            raise ValueError(f"modalities must be a non-empty subset of {tuple(MODALITY_CHANNELS)}: {unknown}")
        missing = [t for t in self.tasks if t not in self.classes]
        if missing or not self.tasks:
            raise ValueError(f"every task needs its class names: {missing}")

    def n_samples(self, modality: str) -> int:
        return round(MODALITY_FS_HZ[modality] * self.window_s)

    def input_shape(self, modality: str) -> tuple[int, int]:
        """(samples per window, channels) of one modality's input tensor."""
        return self.n_samples(modality), MODALITY_CHANNELS[modality]

    def to_json(self) -> dict:
        d = asdict(self)
        d["classes"] = {t: list(c) for t, c in self.classes.items()}
        return d

    @classmethod
    def from_json(cls, d: Mapping) -> ModelConfig:
        known = {f for f in cls.__dataclass_fields__}
        kw = {k: v for k, v in d.items() if k in known}
        for k in ("tasks", "modalities", "cnn_channels", "fc_dims"):
            if k in kw:
                kw[k] = tuple(kw[k])
        if "classes" in kw:
            kw["classes"] = {t: tuple(c) for t, c in kw["classes"].items()}
        return cls(**kw)


# ----------------------------------------------------------------------------------------------
# 4.3.1 Unimodal Feature Encoder


class SpatialEncoder(nn.Module):
    """Co-occurrence CNN over one segment (Li et al. 2018, as simplified by HAMLET).

    How a segment becomes a 2-D map: a segment is ``segment_len`` consecutive samples of a
    modality's channels, laid out as an image of height ``segment_len`` (time) and width C
    (axes) with one input channel. A BVP, EDA or TEMP segment is a 5 × 1 map, an ACC segment a
    5 × 3 map (x, y, z side by side). The 1×1 convolution lifts every sample of every axis to
    64 features on its own (point-level); the 3×3 convolution (no padding in time, padding 1
    across axes) then mixes 3 adjacent samples and, for ACC, neighbouring axes: a 5 × C map
    becomes 32 × 3 × C, flattened and embedded to ``embed_dim``. For single-axis signals the
    axis padding means only the kernel's middle column meets data, which is the honest reading
    of a 3×3 kernel on a one-column map; forward then skips the two outer kernel columns
    (they only ever meet the zero padding), which gives the same numbers at a third of the cost.
    """

    def __init__(self, channels: int, cfg: ModelConfig) -> None:
        super().__init__()
        c1, c2 = cfg.cnn_channels
        self.conv1 = nn.Sequential(nn.Conv2d(1, c1, kernel_size=1), nn.BatchNorm2d(c1), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(c1, c2, kernel_size=3, padding=(0, 1)), nn.BatchNorm2d(c2), nn.ReLU())
        out_h = cfg.segment_len - 2
        self.one_column = channels == 1
        self.embed = nn.Sequential(
            nn.Linear(c2 * out_h * channels, cfg.embed_dim),
            nn.BatchNorm1d(cfg.embed_dim),
            nn.ReLU(),
            nn.Dropout(cfg.cnn_dropout),
        )

    def forward(self, seg: Tensor) -> Tensor:
        # seg: (N, L, C) with N = B*S segments
        x = self.conv1(seg.unsqueeze(1))  # (N, c1, L, C)
        conv, bn_relu = cast(nn.Conv2d, self.conv2[0]), self.conv2[1:]
        # one column: the same as the padded 3×3 on it
        x = F.conv2d(x, conv.weight[..., 1:2], conv.bias) if self.one_column else conv(x)
        x = bn_relu(x)  # (N, c2, L-2, C)
        return self.embed(x.flatten(1))  # (N, embed_dim)


class UnimodalEncoder(nn.Module):
    """Segments → spatial CNN → LSTM → pooling over segments (Eq. 2-5).

    ``attention=False`` is the Non-Attention variant: the LSTM outputs are summed over
    segments instead of weighted by the 1-D-convolution attention scores of Eq. 4.
    """

    def __init__(self, channels: int, cfg: ModelConfig, *, attention: bool) -> None:
        super().__init__()
        self.seg_len, self.seg_stride = cfg.segment_len, cfg.segment_stride
        self.spatial = SpatialEncoder(channels, cfg)
        self.lstm = nn.LSTM(
            cfg.embed_dim,
            cfg.lstm_hidden,
            num_layers=cfg.lstm_layers,
            batch_first=True,
            dropout=cfg.lstm_dropout if cfg.lstm_layers > 1 else 0.0,
        )
        self.lstm_out = nn.Sequential(nn.ReLU(), nn.Dropout(cfg.lstm_dropout))
        # W^a_m of Eq. 4 as a width-1 Conv1d over the hidden features
        self.score = nn.Conv1d(cfg.lstm_hidden, 1, kernel_size=1) if attention else None
        self.post = nn.Sequential(nn.BatchNorm1d(cfg.lstm_hidden), nn.ReLU(), nn.Dropout(cfg.attn_dropout))

    def forward(self, x: Tensor) -> Tensor:
        # x: (B, n, C) raw (normalised) samples of one modality
        b = x.shape[0]
        seg = x.unfold(1, self.seg_len, self.seg_stride)  # (B, S, C, L)
        s = seg.shape[1]
        seg = seg.transpose(2, 3).reshape(b * s, self.seg_len, x.shape[2])  # (B*S, L, C)
        e = self.spatial(seg).view(b, s, -1)  # (B, S, embed)
        h, _ = self.lstm(e)
        h = self.lstm_out(h)  # (B, S, H)
        if self.score is None:
            pooled = h.sum(dim=1)
        else:
            beta = self.score(h.transpose(1, 2)).squeeze(1)  # (B, S)  Eq. 4
            alpha = torch.softmax(beta, dim=1)  # Eq. 5
            pooled = torch.einsum("bs,bsh->bh", alpha, h)  # Eq. 3
        return self.post(pooled)  # (B, H)


# ----------------------------------------------------------------------------------------------
# 4.3.2 Fusion: CAM and the variants. Each returns one vector per (sample, task).


def _present_weights(mask: Tensor) -> tuple[Tensor, Tensor]:
    """For softmax over modalities: an attend-mask that is never all False (a window with no
    modality at all attends to everything, and is zeroed afterwards) and the float mask that
    does the zeroing. Keeps -inf rows, and with them NaN gradients, out of the graph."""
    any_present = mask.any(dim=1, keepdim=True)
    return mask | ~any_present, mask.to(torch.float32)


class ConditionalAttentionFusion(nn.Module):
    """CAM: a task's one-hot id is the query over the modality vectors (Eq. 7-10)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_tasks = len(cfg.tasks)
        self.query = nn.Linear(self.n_tasks, cfg.fusion_dim, bias=False)  # W^q
        self.key = nn.Linear(cfg.lstm_hidden, cfg.fusion_dim)  # W^K
        self.value = nn.Linear(cfg.lstm_hidden, cfg.fusion_dim)  # W^V
        self.out_dim = cfg.fusion_dim
        self.scale = 1.0 / math.sqrt(cfg.fusion_dim)

    def forward(self, xu: Tensor, mask: Tensor, task_idx: Tensor) -> Tensor:
        # xu: (B, M, H); mask: (B, M) bool; task_idx: (T,) long
        q = self.query(F.one_hot(task_idx, self.n_tasks).to(xu.dtype))  # (T, Da)
        k, v = self.key(xu), self.value(xu)  # (B, M, Da)
        scores = torch.einsum("td,bmd->btm", q, k) * self.scale  # (B, T, M)
        attend, keep = _present_weights(mask)
        scores = scores.masked_fill(~attend.unsqueeze(1), float("-inf"))
        w = torch.softmax(scores, dim=-1) * keep.unsqueeze(1)
        return torch.einsum("btm,bmd->btd", w, v)  # (B, T, Da)  Eq. 10


class HamletFusion(nn.Module):
    """HAMLET-style multimodal attention: multi-head self-attention across the modality
    tokens (missing ones masked as keys and left out of the merge), then a masked sum. The
    result is shared by every task, as in M3Sense(HAMLET)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(cfg.lstm_hidden, cfg.hamlet_heads, dropout=cfg.attn_dropout, batch_first=True)
        self.post = nn.Sequential(nn.ReLU(), nn.Dropout(cfg.fusion_dropout))
        self.out_dim = cfg.lstm_hidden

    def forward(self, xu: Tensor, mask: Tensor, task_idx: Tensor) -> Tensor:
        attend, keep = _present_weights(mask)
        a, _ = self.attn(xu, xu, xu, key_padding_mask=~attend, need_weights=False)  # (B, M, H)
        fused = (self.post(a) * keep.unsqueeze(-1)).sum(dim=1)  # (B, H)
        return fused.unsqueeze(1).expand(-1, task_idx.shape[0], -1)


class SumFusion(nn.Module):
    """Keyless and Non-Attention variants: the present modality vectors are summed."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.out_dim = cfg.lstm_hidden

    def forward(self, xu: Tensor, mask: Tensor, task_idx: Tensor) -> Tensor:
        fused = (xu * mask.to(xu.dtype).unsqueeze(-1)).sum(dim=1)  # (B, H)
        return fused.unsqueeze(1).expand(-1, task_idx.shape[0], -1)


class TaskEncoder(nn.Module):
    """Per-task projection W_f (Eq. 11), BN, ReLU, dropout and two FC layers: X_Ti."""

    def __init__(self, in_dim: int, cfg: ModelConfig) -> None:
        super().__init__()
        d1, d2 = cfg.fc_dims
        self.net = nn.Sequential(
            nn.Linear(in_dim, cfg.task_dim),
            nn.BatchNorm1d(cfg.task_dim),
            nn.ReLU(),
            nn.Dropout(cfg.fusion_dropout),
            nn.Linear(cfg.task_dim, d1),
            nn.ReLU(),
            nn.Linear(d1, d2),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


# ----------------------------------------------------------------------------------------------
# 4.4 Domain Alignment Module and 4.5 Task Learning Networks


class RecognitionNetwork(nn.Module):
    """q_θ(μ, σ | X_Ti), shared by all tasks so that every task's representation is pulled
    towards the same prior N(0, I) (Eq. 12-13)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.mu = nn.Linear(cfg.fc_dims[1], cfg.latent_dim)
        self.logvar = nn.Linear(cfg.fc_dims[1], cfg.latent_dim)
        # Start near-deterministic (σ ≈ 0.14): with σ ≈ 1 at initialisation the sampled latent is
        # almost pure noise and the Task Learning Networks hardly learn in the first epochs; the
        # KL term then widens σ only as far as the task loss allows.
        nn.init.constant_(self.logvar.bias, -4.0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.mu(x), self.logvar(x).clamp(-10.0, 10.0)


def kl_to_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, σ²) || N(0, I)) per row, averaged over latent dimensions (so γ does not
    depend on the latent width): shape = mu.shape[:-1]."""
    return -0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp()).mean(dim=-1)


class TaskLearningNetwork(nn.Module):
    """F_Ti of Eq. 14: FC, ReLU, FC to the class logits (softmax lives in the loss)."""

    def __init__(self, n_classes: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(cfg.latent_dim, cfg.head_hidden), nn.ReLU(), nn.Linear(cfg.head_hidden, n_classes)
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelOutput:
    """Per task: ``logits`` (B, classes), and the recognition network's ``mu`` and
    ``logvar`` (B, latent) from which the training loop takes the alignment KL."""

    logits: dict[str, Tensor]
    mu: dict[str, Tensor]
    logvar: dict[str, Tensor]


class M3Sense(nn.Module):
    """The whole network. ``forward(inputs, mask, tasks)`` computes only the tasks asked for.

    The Task Learning Network reads the recognition network's latent: a reparameterised
    sample z = μ + σ·ε while training, μ itself in eval mode. That is what makes the
    reparameterisation of section 4.4 matter (a KL on a branch nothing downstream reads would
    be satisfied by zeroing the recognition network's weights); at inference no sampling and no
    KL remain, which is the paper's "alignment module removed" (4.7).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        attention = cfg.fusion != "sum"
        self.encoders = nn.ModuleDict(
            {m: UnimodalEncoder(MODALITY_CHANNELS[m], cfg, attention=attention) for m in cfg.modalities}
        )
        if cfg.fusion == "cam":
            self.fusion: nn.Module = ConditionalAttentionFusion(cfg)
        elif cfg.fusion == "hamlet":
            self.fusion = HamletFusion(cfg)
        else:
            self.fusion = SumFusion(cfg)
        self.task_encoders = nn.ModuleDict({t: TaskEncoder(self.fusion.out_dim, cfg) for t in cfg.tasks})
        self.recognition = RecognitionNetwork(cfg)
        self.heads = nn.ModuleDict({t: TaskLearningNetwork(len(cfg.classes[t]), cfg) for t in cfg.tasks})
        self._frozen: list[nn.Module] = []  # plain list: not submodules twice over

    def freeze(self, modules: Sequence[nn.Module]) -> None:
        """Fix these submodules for good: no gradients, and their BatchNorm statistics and
        dropout stay as in eval mode even while the rest trains. Transfer needs both: a head
        learned from a few recordings must not move the representation the other tasks read."""
        for m in modules:
            m.requires_grad_(False)
            m.eval()
            self._frozen.append(m)

    def train(self, mode: bool = True) -> M3Sense:
        super().train(mode)
        for m in self._frozen:
            m.eval()
        return self

    def task_indices(self, tasks: Sequence[str] | None) -> tuple[list[str], Tensor]:
        names = list(self.cfg.tasks if tasks is None else tasks)
        unknown = [t for t in names if t not in self.cfg.tasks]
        if unknown or not names:
            raise ValueError(f"tasks must be a non-empty subset of {self.cfg.tasks}: {unknown or names}")
        return names, torch.tensor([self.cfg.tasks.index(t) for t in names], dtype=torch.long)

    def encode(self, inputs: Mapping[str, Tensor], mask: Tensor) -> Tensor:
        """Unimodal representations X^u (B, M, H). A masked modality's samples are replaced
        by zeros before encoding, so neither its values (NaN included) nor their gradients can
        reach the output; the fusion then leaves its vector out."""
        out = []
        for i, (m, enc) in enumerate(self.encoders.items()):
            x = inputs[m]
            present = mask[:, i].view(-1, 1, 1)
            out.append(enc(torch.where(present, x, torch.zeros_like(x))))
        return torch.stack(out, dim=1)

    def forward(self, inputs: Mapping[str, Tensor], mask: Tensor, tasks: Sequence[str] | None = None) -> ModelOutput:
        names, task_idx = self.task_indices(tasks)
        xu = self.encode(inputs, mask)  # (B, M, H)
        fused = self.fusion(xu, mask, task_idx.to(xu.device))  # (B, T, D)
        logits, mus, logvars = {}, {}, {}
        for j, t in enumerate(names):
            rep = self.task_encoders[t](fused[:, j])  # X_Ti (B, fc_dims[1])
            mu, logvar = self.recognition(rep)
            z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
            logits[t], mus[t], logvars[t] = self.heads[t](z), mu, logvar
        return ModelOutput(logits=logits, mu=mus, logvar=logvars)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
