"""Synthetic E4 sessions with known phases, labels and faults.

Why: the only real data here is WESAD (stress). The anxiety and emotion tasks, the unlabelled
domain, tests and demos need recordings whose phases and faults are known exactly. Numbers come
from ``reference/physiology.md`` (its generator table). Each subject's baselines and response gains
are drawn per modality and independently, with non-responders, because in WESAD the modalities
dissociate per person (flat EDA with a big HR rise, and the reverse): a model trained on some
simulated subjects can fail on another, as it does on real ones.

A session is a contiguous sequence of phases; each phase kind carries one label per task
(``PHASE_LABELS``), chosen so the three tasks agree physiologically but are not the same labelling:
the speech anticipation is anxious without being the TSST, a pleasant chat is high-valence,
high-arousal emotion without being amusement. Labels are conservative like WESAD's: a few seconds
at each phase edge stay unlabelled.

What the signals contain (all on the E4 clock, E4 rates, units and dtypes of ``PERIODIC``):
- BVP 64 Hz, zero mean, E4-like units: a pulse per beat with a fast systolic upstroke, dicrotic
  wave, respiratory amplitude modulation and baseline wander; motion artefacts driven by the same
  arm movement that the accelerometer shows.
- Laughs (amusement and chat, ~3 per minute scaled per person): a brief HR rise, an SCR, a pulse
  that shrinks and sinks for a few seconds, an arm jolt. They are the only thing that marks the
  pleasant, emotion-high phases, which shift nothing tonically (WESAD's amusement does not); the
  rate is this simulator's assumption, set so that most 20 s windows of those phases hold one.
- Beats come from an integrated instantaneous rate: HR level and stress response, respiratory
  sinus arrhythmia, a 0.1 Hz component and beat jitter, so RMSSD is close to the subject's value
  and falls under stress. IBI rows keep only beats "detected" as the E4 would: fewer with arm
  activity, none off-wrist, dropped in runs; times are quantised to the 64 Hz sample grid.
- HR 1 Hz like HR.csv: starts 10 s after the session, each value the mean over the preceding 10 s
  of the instantaneous HR of the IBI rows, held where there are none.
- EDA 4 Hz, µS: tonic level (log-linear in arousal, slow recovery), SCRs as a Poisson process with
  Bateman-shaped responses, rate and size up under stress, laugh-linked SCRs, motion spikes.
- TEMP 4 Hz, °C, 0.01 steps: warm-up after donning, slow drift, vasoconstriction under stress.
- ACC 32 Hz int16, 1/64 g, clipped to -128..127: gravity per posture, orientation wander, activity
  per phase kind, motion bursts.
- Faults (ground truth in ``SimulatedSession``): motion bursts (ACC large, BVP corrupted, EDA
  spikes, no beats detected) and off-wrist stretches (EDA ~0 µS, TEMP relaxing toward the room,
  BVP without pulse, ACC still with a constant gravity vector, each bracketed by a doff/don burst).

Data gaps (stretches with no samples at all) cannot be expressed in a periodic ``Signal``; they are
made at the bus level by dropping messages, not here.

Determinism: every subject has its own ``numpy`` stream seeded by ``(seed, subject index)``, split
into independent child streams per component, so a subject does not depend on how many subjects
were asked for, and switching ``motion``/``off_wrist``/``labels`` leaves the underlying physiology
(HR, beats, EDA and TEMP outside fault stretches) unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import chain, pairwise
from types import MappingProxyType

import numpy as np
from scipy import signal as sps
from scipy.ndimage import uniform_filter1d
from scipy.special import ndtr

from common.errors import UserError
from replay.recording import PERIODIC, TASKS, LabelInterval, Recording, Signal

__all__ = [
    "LABEL_MARGIN_S",
    "LABEL_MODES",
    "PHASE_LABELS",
    "BadSimulationArgument",
    "Phase",
    "SimulatedSession",
    "SubjectProfile",
    "simulate_recordings",
    "simulate_sessions",
]

LABEL_MODES = ("all", *TASKS, "none")

#: Label of each task during each phase kind (None: the task has no class for it, e.g. meditation
#: is not a stress class, as in WESAD).
PHASE_LABELS: Mapping[str, Mapping[str, str | None]] = MappingProxyType(
    {
        "baseline": MappingProxyType({"stress": "baseline", "anxiety": "low", "emotion": "low"}),
        "anticipation": MappingProxyType({"stress": None, "anxiety": "high", "emotion": "low"}),
        "stress": MappingProxyType({"stress": "stress", "anxiety": "high", "emotion": "low"}),
        "amusement": MappingProxyType({"stress": "amusement", "anxiety": "low", "emotion": "high"}),
        "meditation": MappingProxyType({"stress": None, "anxiety": "low", "emotion": "low"}),
        "chat": MappingProxyType({"stress": None, "anxiety": "low", "emotion": "high"}),
    }
)

#: Unlabelled seconds kept at each phase edge (labels are conservative, as in real data sets).
LABEL_MARGIN_S = 5.0

_TAU_HR_S = (20.0, 60.0)  # (rise, decay): HR back within ~5 bpm 2-5 min after the TSST
_TAU_EDA_S = (90.0, 600.0)  # tonic EDA excess halves ~8-12 min after its peak
_TAU_SCR_S = (30.0, 240.0)
_TAU_VASO_S = (500.0, 1500.0)  # wrist TEMP: -0.7 °C over ~11 min, keeps drifting down after
_TAU_CONTACT_S = (150.0, 100.0)  # TEMP sensor warming on skin / cooling in room air
_TAU_ELECTRODE_S = (20.0, 0.1)  # EDA settles after re-wear, drops at once when removed
_MIN_DURATION_S = 30.0


class BadSimulationArgument(UserError, ValueError):
    """An argument out of range: a ValueError for callers, a one-line user error for the CLI,
    which passes its flags straight through."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _KindSpec:
    nominal_min: float  # typical phase length
    drive: float  # stress-axis arousal (0 rest, 1 TSST); amusement/chat are drawn per subject
    acc_sd: float  # SD of |ACC| (1/64 g) from ordinary movement, bursts come on top
    bursts_per_min: float  # gross motion bursts
    scr_factor: float  # SCR rate beyond what the arousal implies (few SCRs in meditation)
    resp_factor: float  # breathing rate relative to the subject's resting rate
    rsa_factor: float  # respiratory sinus arrhythmia relative to rest
    standing: bool


# acc_sd and bursts_per_min are set so that SD |ACC| over a phase, bursts included, lands near
# WESAD's (baseline 2.2, TSST 5.3, amusement 1.3, meditation 0.6 counts).
_KINDS: Mapping[str, _KindSpec] = MappingProxyType(
    {
        "baseline": _KindSpec(
            nominal_min=8,
            drive=0.0,
            acc_sd=1.4,
            bursts_per_min=0.12,
            scr_factor=1.0,
            resp_factor=1.0,
            rsa_factor=1.0,
            standing=False,
        ),
        "anticipation": _KindSpec(
            nominal_min=3,
            drive=0.6,
            acc_sd=1.8,
            bursts_per_min=0.2,
            scr_factor=1.0,
            resp_factor=1.1,
            rsa_factor=0.9,
            standing=False,
        ),
        "stress": _KindSpec(
            nominal_min=9,
            drive=1.0,
            acc_sd=3.8,
            bursts_per_min=0.4,
            scr_factor=1.0,
            resp_factor=1.2,
            rsa_factor=0.8,
            standing=True,
        ),
        "amusement": _KindSpec(
            nominal_min=6,
            drive=0.0,
            acc_sd=0.6,
            bursts_per_min=0.05,
            scr_factor=0.5,
            resp_factor=1.0,
            rsa_factor=1.0,
            standing=False,
        ),
        "meditation": _KindSpec(
            nominal_min=6,
            drive=-0.15,
            acc_sd=0.3,
            bursts_per_min=0.02,
            scr_factor=0.4,
            resp_factor=0.55,
            rsa_factor=1.6,
            standing=False,
        ),
        "chat": _KindSpec(
            nominal_min=7,
            drive=0.0,
            acc_sd=2.5,
            bursts_per_min=0.3,
            scr_factor=1.0,
            resp_factor=1.1,
            rsa_factor=0.7,
            standing=False,
        ),
    }
)
# Laughter is what marks the pleasant phases from a wrist (physiology.md §4: brief laugh-linked
# bumps, no tonic shift): frequent enough that most 20 s windows of them hold a laugh. Amusement's
# low scr_factor keeps its SCR rate, laugh SCRs included, near baseline, as in WESAD.
_LAUGHS_PER_MIN = {"amusement": 3.0, "chat": 3.0}


@dataclass(frozen=True, slots=True, kw_only=True)
class SubjectProfile:
    """One simulated person: resting values and response gains (ground truth for tests)."""

    hr_rest_bpm: float
    rmssd_rest_ms: float
    hr_stress_gain_bpm: float  # HR change at full stress drive; ~20 % of subjects < 5 bpm
    hrv_stress_drop: float  # fraction of RSA lost at full stress drive
    resp_rest_hz: float
    hr_offset_bpm: Mapping[str, float]  # extra HR per phase kind (amusement, chat, meditation)
    arousal: Mapping[str, float]  # stress-axis drive of the kinds that vary per person
    eda_rest_us: float
    eda_stress_ln_ratio: float  # ln(EDA stress / rest); ~15 % non-responders near 0
    scr_rest_per_min: float  # all SCRs >= ~0.005 µS
    scr_stress_factor: float
    scr_amp_us: float  # median SCR amplitude at rest
    scr_decay_s: float
    temp_skin_c: float  # settled wrist temperature
    temp_warmup_c: float  # how far below settled the session starts
    temp_warmup_tau_s: float
    temp_stress_drop_c: float  # asymptotic wrist cooling at full stress drive
    temp_room_c: float
    bvp_pp: float  # resting pulse peak-to-peak (E4 units)
    bvp_rise_s: float  # systolic upstroke time
    bvp_dicrotic: float  # dicrotic wave relative to the systolic peak
    bvp_motion_gain: float  # BVP units per 1/64 g of arm movement
    acc_norm: float  # |gravity| in counts
    acc_activity_scale: float
    seated_gravity: tuple[float, float, float]  # unit vector
    standing_gravity: tuple[float, float, float]
    beat_quality: float  # share of beats the E4 keeps when perfectly still
    laugh_rate_factor: float  # how readily this person laughs (x the phase's laughs per minute)


@dataclass(frozen=True, slots=True, kw_only=True)
class Phase:
    """One protocol phase on [start_s, end_s) (Unix s); ``labels`` maps every task to its class."""

    kind: str
    start_s: float
    end_s: float

    @property
    def labels(self) -> Mapping[str, str | None]:
        return PHASE_LABELS[self.kind]


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulatedSession:
    """A synthetic recording with its ground truth. Intervals are [start_s, end_s) in Unix s."""

    recording: Recording
    phases: tuple[Phase, ...]
    off_wrist_s: tuple[tuple[float, float], ...]
    motion_s: tuple[tuple[float, float], ...]
    laughs_s: tuple[float, ...]
    subject: SubjectProfile


def simulate_recordings(
    *,
    minutes: float,
    seed: int,
    subjects: int = 1,
    labels: str = "all",
    start_s: float = 1_700_000_000.0,
    off_wrist: bool = True,
    motion: bool = True,
    mark_rest: bool = False,
) -> list[Recording]:
    """The recordings of :func:`simulate_sessions`, without the ground truth."""
    return [
        s.recording
        for s in simulate_sessions(
            minutes=minutes,
            seed=seed,
            subjects=subjects,
            labels=labels,
            start_s=start_s,
            off_wrist=off_wrist,
            motion=motion,
            mark_rest=mark_rest,
        )
    ]


def simulate_sessions(
    *,
    minutes: float,
    seed: int,
    subjects: int = 1,
    labels: str = "all",
    start_s: float = 1_700_000_000.0,
    off_wrist: bool = True,
    motion: bool = True,
    mark_rest: bool = False,
) -> list[SimulatedSession]:
    """Simulate ``subjects`` people (devices ``sim01``, ``sim02``, ...) for ``minutes`` each.

    ``labels``: "all" (intervals for every task), one task name (only that task, like WESAD,
    VerBIO or K-EmoCon), or "none" (an unlabelled recording). ``off_wrist``: allow off-wrist
    stretches (one per session of 10 min or more, one more per further 60 min). ``motion``: allow
    gross motion bursts. ``mark_rest``: the wearer marks the baseline as their rest with the E4
    button (a double press 5 s into it, a press 5 s before its end), as a study protocol would
    ask; the phase-change presses are there either way. Raises BadSimulationArgument (a ValueError)
    for arguments out of range.
    """
    bad = BadSimulationArgument
    if not (math.isfinite(float(minutes)) and float(minutes) * 60.0 >= _MIN_DURATION_S):
        raise bad(f"minutes must be a number >= {_MIN_DURATION_S / 60:g}, got {minutes!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise bad(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(subjects, (int, np.integer)) or not 1 <= subjects <= 99:
        raise bad(f"subjects must be an integer in 1..99, got {subjects!r}")
    if labels not in LABEL_MODES:
        raise bad(f"labels must be one of {', '.join(LABEL_MODES)}, got {labels!r}")
    if not math.isfinite(start_s):
        raise bad(f"start_s must be finite, got {start_s!r}")
    return [
        _simulate_subject(
            duration_s=float(minutes) * 60.0,
            seed=int(seed),
            index=i,
            label_mode=labels,
            start_s=float(start_s),
            off_wrist=off_wrist,
            motion=motion,
            mark_rest=bool(mark_rest),
        )
        for i in range(1, subjects + 1)
    ]


# ---------------------------------------------------------------------------------------------
# one subject

_STREAMS = ("profile", "schedule", "events", "heart", "eda", "temp", "acc", "motion", "offwrist", "quality")


def _simulate_subject(
    *,
    duration_s: float,
    seed: int,
    index: int,
    label_mode: str,
    start_s: float,
    off_wrist: bool,
    motion: bool,
    mark_rest: bool = False,
) -> SimulatedSession:
    seqs = np.random.SeedSequence([seed, index]).spawn(len(_STREAMS))
    rng = {name: np.random.default_rng(s) for name, s in zip(_STREAMS, seqs)}
    prof = _draw_profile(rng["profile"])
    kinds, bounds, phase_gain, activity_gain = _draw_schedule(rng["schedule"], duration_s)
    drive = np.array([_KINDS[k].drive if k not in prof.arousal else prof.arousal[k] for k in kinds]) * phase_gain
    off = _draw_off_wrist(rng["offwrist"], duration_s) if off_wrist else []
    bursts = _draw_bursts(rng["motion"], duration_s, kinds, bounds, off) if motion else []
    laughs = _draw_laughs(rng["events"], kinds, bounds, prof.laugh_rate_factor)

    n = {m: round(duration_s * PERIODIC[m][0]) for m in ("bvp", "acc", "eda", "temp")}
    t = {m: np.arange(k) / PERIODIC[m][0] for m, k in n.items()}
    on_segments = _on_segments(off, duration_s)

    acc, acc_dyn, acc_sd = _accelerometer(
        rng["acc"], prof, t["acc"], kinds, bounds, activity_gain, bursts, laughs, on_segments
    )
    beats, bvp_clean = _heart(rng["heart"], prof, t["bvp"], kinds, bounds, drive, laughs)
    bvp = _finish_bvp(rng["heart"], prof, t["bvp"], bvp_clean, t["acc"], acc_dyn, on_segments)
    ibi_t, ibi = _detected_beats(rng["quality"], prof, beats, t["acc"], acc_sd, on_segments)
    eda = _eda(rng["eda"], prof, t["eda"], kinds, bounds, drive, laughs, bursts, on_segments)
    temp = _temp(rng["temp"], prof, t["temp"], bounds, drive, on_segments)
    hr = _hr_csv(ibi_t, ibi, duration_s, prof.hr_rest_bpm)

    phases = tuple(Phase(kind=k, start_s=start_s + a, end_s=start_s + b) for k, (a, b) in zip(kinds, bounds))
    values = {"bvp": bvp, "eda": eda, "temp": temp, "acc": acc}
    signals = {
        m: Signal(modality=m, t0_s=start_s, fs_hz=PERIODIC[m][0], values=values[m].astype(PERIODIC[m][1]))
        for m in ("acc", "bvp", "eda", "temp")
    }
    signals["hr"] = Signal(
        modality="hr", t0_s=start_s + 10.0, fs_hz=PERIODIC["hr"][0], values=hr.astype(PERIODIC["hr"][1])
    )
    tags = np.array([a + rng["events"].uniform(0.2, 1.5) for a, _ in bounds[1:]]) + start_s
    if mark_rest:  # fixed offsets, no random draw: the rest of the session stays the same
        rest = bounds[0]
        tags = np.sort(np.concatenate([tags, start_s + np.array([rest[0] + 5.0, rest[0] + 5.8, rest[1] - 5.0])]))
    recording = Recording(
        device=f"sim{index:02d}",
        source="synthetic",
        signals=signals,
        ibi_t_s=ibi_t + start_s,
        ibi_s=ibi,
        tags_s=tags,
        labels=_label_intervals(phases, label_mode),
    )
    return SimulatedSession(
        recording=recording,
        phases=phases,
        subject=prof,
        off_wrist_s=tuple((start_s + a, start_s + b) for a, b in off),
        motion_s=tuple((start_s + a, start_s + b) for a, b in _merge(bursts)),
        laughs_s=tuple(float(start_s + x) for x in laughs),
    )


def _label_intervals(phases: Sequence[Phase], mode: str) -> tuple[LabelInterval, ...]:
    tasks = TASKS if mode == "all" else (mode,) if mode in TASKS else ()
    out: list[LabelInterval] = []
    for ph in phases:
        margin = min(LABEL_MARGIN_S, 0.1 * (ph.end_s - ph.start_s))
        out.extend(
            LabelInterval(start_s=ph.start_s + margin, end_s=ph.end_s - margin, task=task, label=label)
            for task in tasks
            if (label := ph.labels[task]) is not None
        )
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# people, schedules, events


def _unit(v: np.ndarray) -> tuple[float, float, float]:
    v = v / np.linalg.norm(v)
    return (float(v[0]), float(v[1]), float(v[2]))


def _draw_profile(rng: np.random.Generator) -> SubjectProfile:
    """Per-modality gains drawn independently (physiology.md §7: dissociation, non-responders)."""
    hr_nonresponder = rng.random() < 0.2
    eda_nonresponder = rng.random() < 0.15
    temp_nonresponder = rng.random() < 0.15
    eda_rest = float(np.clip(np.exp(rng.normal(math.log(0.67), 1.0)), 0.15, 8.0))
    return SubjectProfile(
        hr_rest_bpm=float(np.clip(rng.normal(72.0, 9.0), 55.0, 95.0)),
        rmssd_rest_ms=float(np.clip(rng.normal(42.0, 15.0), 15.0, 90.0)),
        hr_stress_gain_bpm=float(
            rng.uniform(0.0, 4.0) if hr_nonresponder else np.clip(rng.normal(16.0, 9.0), 5.0, 40.0)
        ),
        hrv_stress_drop=float(rng.uniform(0.2, 0.45)),
        resp_rest_hz=float(rng.uniform(0.2, 0.3)),
        hr_offset_bpm=MappingProxyType(
            {
                "amusement": float(rng.normal(-3.0, 5.0)),
                "chat": float(rng.normal(3.0, 3.0)),
                "meditation": float(rng.normal(-1.0, 2.0)),
            }
        ),
        arousal=MappingProxyType({"amusement": float(rng.normal(0.05, 0.1)), "chat": float(rng.uniform(0.1, 0.4))}),
        eda_rest_us=eda_rest,
        eda_stress_ln_ratio=float(
            rng.uniform(-0.15, 0.25) if eda_nonresponder else np.clip(rng.normal(1.2, 0.5), 0.4, 2.2)
        ),
        scr_rest_per_min=float(np.clip(np.exp(rng.normal(math.log(5.0), 0.6)), 0.5, 15.0)),
        scr_stress_factor=float(
            rng.uniform(1.0, 1.4) if eda_nonresponder else np.clip(np.exp(rng.normal(math.log(3.5), 0.4)), 1.5, 8.0)
        ),
        scr_amp_us=float(np.clip(0.02 * np.exp(rng.normal(0.0, 0.4)) * math.sqrt(eda_rest / 0.67), 0.008, 0.08)),
        scr_decay_s=float(rng.uniform(2.5, 6.0)),
        temp_skin_c=float(np.clip(rng.normal(33.4, 1.2), 30.5, 35.8)),
        temp_warmup_c=float(rng.uniform(0.3, 2.0)),
        temp_warmup_tau_s=float(rng.uniform(900.0, 1500.0)),
        temp_stress_drop_c=float(
            rng.uniform(0.0, 0.2) if temp_nonresponder else np.clip(rng.normal(2.0, 0.7), 0.5, 3.5)
        ),
        temp_room_c=float(rng.uniform(23.0, 27.0)),
        bvp_pp=float(rng.uniform(30.0, 90.0)),
        bvp_rise_s=float(rng.uniform(0.11, 0.16)),
        bvp_dicrotic=float(rng.uniform(0.05, 0.3)),
        bvp_motion_gain=float(rng.uniform(1.5, 4.0)),
        acc_norm=float(rng.uniform(62.5, 65.0)),
        acc_activity_scale=float(np.exp(rng.normal(0.0, 0.25))),
        seated_gravity=_unit(np.array([-0.4, 0.05, 0.9]) + rng.normal(0.0, 0.3, 3)),
        standing_gravity=_unit(np.array([0.9, -0.2, 0.3]) + rng.normal(0.0, 0.3, 3)),
        beat_quality=float(rng.uniform(0.7, 0.95)),
        laugh_rate_factor=float(np.clip(np.exp(rng.normal(0.0, 0.35)), 0.5, 2.0)),
    )


def _draw_schedule(
    rng: np.random.Generator, duration_s: float
) -> tuple[list[str], list[tuple[float, float]], np.ndarray, np.ndarray]:
    """Phase kinds and [start, end) in session seconds, plus per-phase response/activity gains.

    Baseline first (as in WESAD), then the stress block (anticipation + stress) and amusement in
    random order, then meditation and chat in random order; cycles repeat to fill the time. The
    nominal lengths are scaled to fill the session exactly; short sessions drop the anticipation
    so that three phases still include stress and amusement.
    """
    candidates: list[str] = []
    nominal: list[float] = []
    while sum(nominal) < duration_s or len(candidates) < 6:
        core = [["anticipation", "stress"], ["amusement"]]
        extra = [["meditation"], ["chat"]]
        rng.shuffle(core)
        rng.shuffle(extra)
        for kind in ["baseline", *chain(*core), *chain(*extra)]:
            candidates.append(kind)
            nominal.append(_KINDS[kind].nominal_min * 60.0 * rng.uniform(0.8, 1.25))

    def count(lengths: list[float]) -> int:
        return max(3, int(np.searchsorted(np.cumsum(lengths), duration_s)) + 1)

    n = count(nominal)
    if n < 5:
        keep = [i for i, k in enumerate(candidates) if k != "anticipation"]
        candidates = [candidates[i] for i in keep]
        nominal = [nominal[i] for i in keep]
        n = count(nominal)
    lengths = np.array(nominal[:n]) * duration_s / sum(nominal[:n])
    edges = np.concatenate([[0.0], np.cumsum(lengths)])
    edges[-1] = duration_s
    bounds = [(float(a), float(b)) for a, b in pairwise(edges)]
    return (candidates[:n], bounds, np.exp(rng.normal(0.0, 0.2, n)), np.exp(rng.normal(0.0, 0.15, n)))


def _draw_off_wrist(rng: np.random.Generator, duration_s: float) -> list[tuple[float, float]]:
    """One stretch per session of >= 10 min, one more per further 60 min, in equal slots."""
    minutes = duration_s / 60.0
    if minutes < 10.0:
        return []
    count = 1 + int((minutes - 10.0) // 60.0)
    slot = (duration_s - 180.0) / count
    out = []
    for i in range(count):
        length = min(rng.uniform(40.0, 150.0), 0.5 * slot)
        start = 120.0 + i * slot + rng.uniform(0.0, slot - length)
        out.append((float(start), float(start + length)))
    return out


def _draw_bursts(
    rng: np.random.Generator,
    duration_s: float,
    kinds: Sequence[str],
    bounds: Sequence[tuple[float, float]],
    off: Sequence[tuple[float, float]],
) -> list[tuple[float, float, float]]:
    """Gross motion (start, end, SD in 1/64 g): Poisson per phase, plus taking the band off and
    putting it on around each off-wrist stretch; none while the band lies still off-wrist."""
    out = []
    for kind, (a, b) in zip(kinds, bounds):
        for start in np.sort(rng.uniform(a, b, rng.poisson(_KINDS[kind].bursts_per_min * (b - a) / 60.0))):
            out.append((float(start), float(start + rng.uniform(2.0, 10.0)), float(rng.uniform(20.0, 50.0))))
    for a, b in off:
        out.append((max(0.0, a - rng.uniform(2.0, 5.0)), a, float(rng.uniform(20.0, 40.0))))
        out.append((b, b + rng.uniform(2.0, 5.0), float(rng.uniform(20.0, 40.0))))
    out = [(s, min(e, duration_s), sd) for s, e, sd in out if s < duration_s]
    return sorted(iv for iv in _clip_out(out, off) if iv[1] - iv[0] > 0.5)


def _clip_out(
    bursts: list[tuple[float, float, float]], off: Sequence[tuple[float, float]]
) -> list[tuple[float, float, float]]:
    """Bursts with the off-wrist stretches cut out (a band on a table does not move)."""
    for a, b in off:
        cut = []
        for s, e, sd in bursts:
            if e <= a or s >= b:
                cut.append((s, e, sd))
                continue
            if s < a:
                cut.append((s, a, sd))
            if e > b:
                cut.append((b, e, sd))
        bursts = cut
    return bursts


def _merge(bursts: Sequence[tuple[float, float, float]]) -> list[tuple[float, float]]:
    merged: list[list[float]] = []
    for s, e, _ in sorted(bursts):
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return [(a, b) for a, b in merged]


def _draw_laughs(
    rng: np.random.Generator, kinds: Sequence[str], bounds: Sequence[tuple[float, float]], rate_factor: float
) -> np.ndarray:
    """Laugh times (s): brief HR/SCR/pulse/arm bumps instead of a tonic shift (physiology.md §4)."""
    return np.sort(
        np.concatenate(
            [
                rng.uniform(a, b, rng.poisson(rate_factor * _LAUGHS_PER_MIN.get(k, 0.0) * (b - a) / 60.0))
                for k, (a, b) in zip(kinds, bounds)
            ]
        )
    )


def _on_segments(off: Sequence[tuple[float, float]], duration_s: float) -> tuple[list[tuple[float, float]], np.ndarray]:
    """Contact segments covering the session and their targets (1 worn, 0 off-wrist)."""
    edges = [0.0, *chain(*off), duration_s]
    segments = [(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]
    return segments, np.array([1.0 - (i % 2) for i in range(len(segments))])


# ---------------------------------------------------------------------------------------------
# signal helpers


def _lagged(
    t_s: np.ndarray,
    bounds: Sequence[tuple[float, float]],
    targets: np.ndarray,
    tau_s: tuple[float, float],
    y0: float = 0.0,
) -> np.ndarray:
    """First-order approach to piecewise-constant targets, rising with tau_s[0] and falling with
    tau_s[1]: physiological responses start fast and recover slowly. Exact per segment."""
    y = np.empty_like(t_s)
    for (a, b), g in zip(bounds, targets):
        i, j = np.searchsorted(t_s, [a, b])
        tau = tau_s[0] if g > y0 else tau_s[1]
        y[i:j] = g + (y0 - g) * np.exp(-(t_s[i:j] - a) / tau)
        y0 = g + (y0 - g) * math.exp(-(b - a) / tau)
    return y


def _ou(rng: np.random.Generator, n: int, fs_hz: float, tau_s: float) -> np.ndarray:
    """Stationary unit-variance AR(1) (sampled Ornstein-Uhlenbeck) noise."""
    rho = math.exp(-1.0 / (tau_s * fs_hz))
    x0 = rng.normal()
    y, _ = sps.lfilter([math.sqrt(1.0 - rho * rho)], [1.0, -rho], rng.normal(size=n), zi=[rho * x0])
    return y


def _slow(rng: np.random.Generator, t_s: np.ndarray, tau_s: float) -> np.ndarray:
    """Unit-variance smooth noise with correlation time ~tau_s, interpolated onto ``t_s``.

    White noise through two cascaded first-order lags on a 1 Hz grid, warmed up so it starts
    stationary. Smooth on purpose: the 1 s steps of a plain Ornstein-Uhlenbeck path would look
    like SCRs in EDA.
    """
    rho = math.exp(-1.0 / tau_s)
    warm = int(5.0 * tau_s) + 1
    x = rng.normal(size=int(t_s[-1]) + 2 + warm)
    y = sps.lfilter([1.0 - rho], [1.0, -rho], sps.lfilter([1.0 - rho], [1.0, -rho], x))[warm:]
    r2 = rho * rho
    y /= math.sqrt((1.0 - rho) ** 4 * (1.0 + r2) / (1.0 - r2) ** 3)
    return np.interp(t_s, np.arange(y.size, dtype=float), y)


def _bumps(n: int, fs_hz: float, times_s: np.ndarray, amps: np.ndarray, tau_s: float) -> np.ndarray:
    """Sum of amp * (t/tau) e^(1 - t/tau) after each time: a bump peaking at tau with height amp."""
    x = np.zeros(n)
    idx = np.round(np.asarray(times_s) * fs_hz).astype(int)
    ok = (idx >= 0) & (idx < n)
    np.add.at(x, idx[ok], np.asarray(amps, dtype=float)[ok])
    a = math.exp(-1.0 / (tau_s * fs_hz))
    return sps.lfilter([0.0, a * math.e / (tau_s * fs_hz)], [1.0, -2.0 * a, a * a], x)


def _band_noise(
    rng: np.random.Generator, shape: tuple[int, ...], fs_hz: float, band_hz: tuple[float, float]
) -> np.ndarray:
    """Unit-SD band-limited noise along axis 0."""
    sos = sps.butter(2, band_hz, btype="bandpass", fs=fs_hz, output="sos")
    x = sps.sosfilt(sos, rng.normal(size=shape), axis=0)
    return x / x.std(axis=0)


def _per_phase(t_s: np.ndarray, bounds: Sequence[tuple[float, float]], values: np.ndarray) -> np.ndarray:
    idx = np.searchsorted([a for a, _ in bounds], t_s, side="right") - 1
    return np.asarray(values)[np.clip(idx, 0, len(bounds) - 1)]


def _contact(
    t_s: np.ndarray, on: tuple[list[tuple[float, float]], np.ndarray], tau_s: tuple[float, float]
) -> np.ndarray:
    return _lagged(t_s, on[0], on[1], tau_s, y0=1.0)


def _worn(t_s: np.ndarray, on: tuple[list[tuple[float, float]], np.ndarray]) -> np.ndarray:
    return _per_phase(t_s, on[0], on[1]) > 0.5


def _envelope(t_s: np.ndarray, bursts: Sequence[tuple[float, float, float]]) -> np.ndarray:
    """Sum of Hann-shaped envelopes (height = each burst's SD) over the bursts."""
    env = np.zeros_like(t_s)
    for s, e, sd in bursts:
        i, j = np.searchsorted(t_s, [s, e])
        env[i:j] += sd * np.sin(np.pi * (t_s[i:j] - s) / (e - s)) ** 2
    return env


# ---------------------------------------------------------------------------------------------
# modalities


def _accelerometer(
    rng: np.random.Generator,
    prof: SubjectProfile,
    t: np.ndarray,
    kinds: Sequence[str],
    bounds: Sequence[tuple[float, float]],
    activity_gain: np.ndarray,
    bursts: Sequence[tuple[float, float, float]],
    laughs: np.ndarray,
    on: tuple[list[tuple[float, float]], np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ACC counts (n,3) int16, the movement part (n,3) float and its SD (n,) per sample."""
    fs = PERIODIC["acc"][0]
    posture = np.array(
        [
            np.array(prof.standing_gravity if _KINDS[k].standing else prof.seated_gravity) + rng.normal(0.0, 0.15, 3)
            for k in kinds
        ]
    )
    window = int(3 * fs)
    gravity = uniform_filter1d(_per_phase(t, bounds, posture), window, axis=0, mode="nearest")
    gravity = gravity + 0.06 * np.stack([_slow(rng, t, 30.0) for _ in range(3)], axis=1)
    gravity *= prof.acc_norm / np.linalg.norm(gravity, axis=1, keepdims=True)

    sd = _per_phase(t, bounds, np.array([_KINDS[k].acc_sd for k in kinds]) * activity_gain)
    sd = uniform_filter1d(sd * prof.acc_activity_scale, window, mode="nearest")
    sd = sd + _bumps(t.size, fs, laughs, np.full(laughs.size, 3.0), 0.7) + _envelope(t, bursts)
    moving = _band_noise(rng, (t.size, 3), fs, (0.2, 5.0)) * sd[:, None]

    worn = _worn(t, on)
    table = np.array(_unit(rng.normal(0.0, 1.0, 3))) * 64.0
    acc = np.where(worn[:, None], gravity + moving, table + rng.normal(0.0, 0.3, (t.size, 3)))
    moving = np.where(worn[:, None], moving, 0.0)
    counts = np.clip(np.round(acc), -128, 127).astype(np.int16)
    return counts, moving, np.where(worn, sd, 0.0)


def _heart(
    rng: np.random.Generator,
    prof: SubjectProfile,
    t: np.ndarray,
    kinds: Sequence[str],
    bounds: Sequence[tuple[float, float]],
    drive: np.ndarray,
    laughs: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Beat times (s, the pulse foot) and the pulse wave before high-pass, motion and noise."""
    fs = PERIODIC["bvp"][0]
    hr_target = prof.hr_stress_gain_bpm * drive + np.array([prof.hr_offset_bpm.get(k, 0.0) for k in kinds])
    stress = np.clip(_lagged(t, bounds, drive, _TAU_HR_S), 0.0, 1.5)
    hr = (
        prof.hr_rest_bpm
        + _lagged(t, bounds, hr_target, _TAU_HR_S)
        + 2.0 * _slow(rng, t, 60.0)
        + _bumps(t.size, fs, laughs, rng.uniform(6.0, 14.0, laughs.size), 3.0)
    )

    resp_hz = prof.resp_rest_hz * _lagged(
        t, bounds, np.array([_KINDS[k].resp_factor for k in kinds]), (10.0, 10.0), y0=1.0
    )
    resp_hz *= 1.0 + 0.1 * _slow(rng, t, 20.0)
    resp = 2.0 * np.pi * np.cumsum(resp_hz) / fs + rng.uniform(0.0, 2.0 * np.pi)

    # RSA amplitude so that RSA + jitter + 64 Hz timing give roughly the subject's RMSSD at rest.
    rmssd = prof.rmssd_rest_ms / 1000.0
    period = 60.0 / prof.hr_rest_bpm
    rsa_rest = 0.8 * rmssd / (math.sqrt(2.0) * math.sin(math.pi * prof.resp_rest_hz * period))
    rsa = (
        rsa_rest
        * _lagged(t, bounds, np.array([_KINDS[k].rsa_factor for k in kinds]), (10.0, 10.0), y0=1.0)
        * (1.0 - prof.hrv_stress_drop * stress)
    )
    grid = np.arange(int(t[-1] * 4.0) + 8) / 4.0
    lf = 0.6 * rmssd * np.interp(t, grid, _band_noise(rng, (grid.size,), 4.0, (0.07, 0.13)))
    inst_period = 60.0 / np.clip(hr, 40.0, 180.0) + rsa * np.sin(resp) + lf
    theta = rng.uniform(0.0, 1.0) + np.concatenate([[0.0], np.cumsum(1.0 / inst_period[:-1])]) / fs
    k = np.arange(1, int(theta[-1]) + 1)
    i = np.searchsorted(theta, k)
    beats = t[i - 1] + (k - theta[i - 1]) / (theta[i] - theta[i - 1]) / fs
    beats = np.sort(beats + rng.normal(0.0, 0.2 * rmssd, beats.size))

    # Pulse wave: virtual beats before the first and after the last so every sample has a beat.
    ext = np.concatenate(
        [[min(2.0 * beats[0] - beats[1], 0.0)], beats, [max(2.0 * beats[-1] - beats[-2], t[-1] + 1.0)]]
    )
    j = np.searchsorted(ext, t, side="right") - 1
    tau, T = t - ext[j], ext[j + 1] - ext[j]
    vaso = np.clip(_lagged(t, bounds, drive, _TAU_VASO_S), 0.0, 1.5)
    # A laugh's expiratory bursts raise the chest pressure: for a few seconds the pulse shrinks
    # and the wave's baseline sinks, then both recover.
    laugh = _bumps(t.size, fs, laughs, np.ones(laughs.size), 1.5)
    amplitude = prof.bvp_pp * (1.0 - 0.2 * vaso) * (1.0 + 0.08 * np.sin(resp)) * (1.0 - 0.5 * np.clip(laugh, 0.0, 1.5))
    wave = amplitude * _pulse(tau, T, prof.bvp_rise_s, prof.bvp_dicrotic * (1.0 - 0.5 * stress))
    wave += prof.bvp_pp * (0.1 * np.sin(resp + 1.0) - 0.3 * laugh)
    return beats, wave


def _pulse(tau: np.ndarray, period: np.ndarray, rise_s: float, dicrotic: np.ndarray) -> np.ndarray:
    """One PPG beat, foot at tau=0: a fast cosine upstroke, decay and a dicrotic wave; the line
    from (0, 0) to (period, shape(period)) is removed so consecutive beats join at a sharp foot."""

    def shape(x: np.ndarray) -> np.ndarray:
        up = 0.5 - 0.5 * np.cos(np.pi * np.clip(x / rise_s, 0.0, 1.0))
        fall = np.exp(-np.maximum(x - rise_s, 0.0) / (0.4 * period))
        centre = rise_s + np.minimum(0.3, 0.33 * period)
        return up * fall + dicrotic * np.exp(-0.5 * ((x - centre) / 0.06) ** 2)

    return shape(tau) - tau / period * shape(period)


def _finish_bvp(
    rng: np.random.Generator,
    prof: SubjectProfile,
    t: np.ndarray,
    wave: np.ndarray,
    t_acc: np.ndarray,
    acc_moving: np.ndarray,
    on: tuple[list[tuple[float, float]], np.ndarray],
) -> np.ndarray:
    """E4-like BVP: high-passed to zero mean, arm movement artefact, no pulse off-wrist, noise."""
    fs = PERIODIC["bvp"][0]
    sos = sps.butter(2, 0.3, btype="highpass", fs=fs, output="sos")
    # Gross movement shifts the sensor on the skin: artefacts grow faster than the movement,
    # up to the ±600..1800 excursions seen in WESAD.
    mix = np.interp(t, t_acc, acc_moving @ np.array(_unit(rng.normal(0.0, 1.0, 3))))
    artefact = 1800.0 * np.tanh(prof.bvp_motion_gain * mix * (1.0 + np.abs(mix) / 15.0) / 1800.0)
    bvp = sps.sosfiltfilt(sos, wave) + artefact
    worn = _worn(t, on)
    bvp = np.where(worn, bvp, 0.3 * _slow(rng, t, 5.0)) + rng.normal(0.0, 0.7, t.size)
    return np.round(bvp, 2)


def _detected_beats(
    rng: np.random.Generator,
    prof: SubjectProfile,
    beats: np.ndarray,
    t_acc: np.ndarray,
    acc_sd: np.ndarray,
    on: tuple[list[tuple[float, float]], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """IBI rows as the E4 writes them: a row needs both of its beats kept; beats are lost more
    with arm activity (WESAD: 71 % of meditation, 48 % baseline, 13 % TSST) and in runs."""
    fs = PERIODIC["bvp"][0]  # the E4 times beats on its BVP grid
    times = np.round(beats * fs) / fs
    activity = np.interp(beats, t_acc, acc_sd)
    worn = _worn(beats, on)
    p_keep = prof.beat_quality * np.exp(-((activity / 2.8) ** 1.5)) * worn
    keep = ndtr(_ou(rng, beats.size, 1.0, 6.0)) < p_keep  # losses correlated over ~6 beats
    row = keep[1:] & keep[:-1]
    return times[1:][row], np.diff(times)[row]


def _hr_csv(ibi_t: np.ndarray, ibi: np.ndarray, duration_s: float, fallback_bpm: float) -> np.ndarray:
    """HR.csv values (bpm, 1 Hz from session start + 10 s): mean instantaneous HR of the IBI rows
    in the 10 s before each second, held over stretches without rows."""
    n = max(0, math.floor(duration_s - 10.0))
    ends = 10.0 + np.arange(n)
    lo, hi = np.searchsorted(ibi_t, ends - 10.0), np.searchsorted(ibi_t, ends)
    csum = np.concatenate([[0.0], np.cumsum(60.0 / ibi)])
    count = hi - lo
    hr = np.full(n, np.nan)
    has = count > 0
    hr[has] = (csum[hi] - csum[lo])[has] / count[has]
    if not has.any():
        return np.full(n, round(fallback_bpm, 2))
    idx = np.where(has, np.arange(n), 0)
    np.maximum.accumulate(idx, out=idx)
    idx[: np.argmax(has)] = np.argmax(has)
    return np.round(hr[idx], 2)


def _eda(
    rng: np.random.Generator,
    prof: SubjectProfile,
    t: np.ndarray,
    kinds: Sequence[str],
    bounds: Sequence[tuple[float, float]],
    drive: np.ndarray,
    laughs: np.ndarray,
    bursts: Sequence[tuple[float, float, float]],
    on: tuple[list[tuple[float, float]], np.ndarray],
) -> np.ndarray:
    """Wrist EDA (µS): tonic x exp(gain * arousal), Poisson SCRs, motion spikes, contact."""
    fs = PERIODIC["eda"][0]
    tonic = prof.eda_rest_us * np.exp(
        prof.eda_stress_ln_ratio * _lagged(t, bounds, drive, _TAU_EDA_S) + 0.15 * _slow(rng, t, 600.0)
    )
    scr_drive = _lagged(t, bounds, drive, _TAU_SCR_S)
    rate = (
        prof.scr_rest_per_min
        * np.maximum(1.0 + (prof.scr_stress_factor - 1.0) * scr_drive, 0.1)
        * _lagged(t, bounds, np.array([_KINDS[k].scr_factor for k in kinds]), (30.0, 30.0), y0=1.0)
    )
    onsets = rng.random(t.size) < rate / 60.0 / fs
    impulses = np.where(
        onsets, prof.scr_amp_us * (1.0 + 1.5 * np.maximum(scr_drive, 0.0)) * np.exp(rng.normal(0.0, 0.9, t.size)), 0.0
    )
    laugh_idx = np.round((laughs + 1.5) * fs).astype(int)
    laugh_idx = laugh_idx[laugh_idx < t.size]
    np.add.at(impulses, laugh_idx, prof.scr_amp_us * rng.uniform(2.0, 6.0, laugh_idx.size))
    # Bateman response (rise 0.75 s, decay per subject) scaled to a unit peak.
    rise, decay = 0.75, prof.scr_decay_s
    peak_t = math.log(decay / rise) * rise * decay / (decay - rise)
    peak = math.exp(-peak_t / decay) - math.exp(-peak_t / rise)
    ad, ar = math.exp(-1.0 / (decay * fs)), math.exp(-1.0 / (rise * fs))
    phasic = sps.lfilter([1.0], [1.0, -ad], impulses) - sps.lfilter([1.0], [1.0, -ar], impulses)
    eda = tonic + phasic / peak
    eda *= np.exp(0.004 * _envelope(t, bursts) * _band_noise(rng, (t.size,), fs, (0.05, 1.0)))
    contact = _contact(t, on, _TAU_ELECTRODE_S)
    eda = contact * eda + np.abs(rng.normal(0.0, 0.002, t.size)) + rng.normal(0.0, 0.001, t.size)
    return np.round(np.maximum(eda, 0.0), 6)


def _temp(
    rng: np.random.Generator,
    prof: SubjectProfile,
    t: np.ndarray,
    bounds: Sequence[tuple[float, float]],
    drive: np.ndarray,
    on: tuple[list[tuple[float, float]], np.ndarray],
) -> np.ndarray:
    """Wrist skin temperature (°C, 0.01 steps): warm-up, drift, stress cooling, room air."""
    skin = (
        prof.temp_skin_c
        - prof.temp_warmup_c * np.exp(-t / prof.temp_warmup_tau_s)
        + 0.15 * _slow(rng, t, 900.0)
        - prof.temp_stress_drop_c * _lagged(t, bounds, drive, _TAU_VASO_S)
    )
    contact = _contact(t, on, _TAU_CONTACT_S)
    temp = prof.temp_room_c + contact * (skin - prof.temp_room_c) + rng.normal(0.0, 0.01, t.size)
    return np.round(temp, 2)
