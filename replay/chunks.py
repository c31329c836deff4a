"""A recording as the sequence of bus messages a wristband would have produced.

Chunks follow the E4's BLE packet sizes (e4-facts.md 1.4: BVP 11 samples, ACC 6, EDA 6,
TEMP 4) so downstream stages see a wristband's cadence; HR comes once a second, each IBI
beat, tag and label interval as its own message. A message is *due* when its last sample
exists (a wristband cannot send a sample before it is measured), and messages come out in
due order, which is the order the replay clock publishes them and the order the offline
training path consumes them: both use this one function.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Any

import numpy as np

from bus import LABEL, RAW, STATUS, Message, SequenceCounter, topic_for
from replay.recording import LabelInterval, Recording

#: samples per message, by modality (the wristband's packet cadence)
PACKET_SAMPLES = {"bvp": 11, "acc": 6, "eda": 6, "temp": 4, "hr": 1}


# An entry before numbering: (due_s, order, kind, modality, t0_s, fs_hz, samples, meta)
_Entry = tuple


def packet_samples(modality: str, fs_hz: float, packet_s: float | None = None) -> int:
    """Samples per message: the wristband's packet, or about ``packet_s`` seconds of the stream
    when that is more (a gateway relaying many wristbands sends fewer, larger messages; each
    sample then waits up to ``packet_s`` longer before it is sent)."""
    size = PACKET_SAMPLES[modality]
    return size if packet_s is None else max(size, round(packet_s * fs_hz))


def _periodic(rec: Recording, modality: str, packet_s: float | None) -> Iterator[_Entry]:
    sig = rec.signals[modality]
    size = packet_samples(modality, sig.fs_hz, packet_s)
    step = (size - 1) / sig.fs_hz
    for start in range(0, sig.n, size):
        chunk = sig.values[start : start + size]
        t0 = sig.t0_s + start / sig.fs_hz
        due = t0 + (step if len(chunk) == size else (len(chunk) - 1) / sig.fs_hz)
        yield due, 0, RAW, modality, t0, sig.fs_hz, chunk, None


def _events(rec: Recording) -> Iterator[_Entry]:
    for t, ibi in zip(rec.ibi_t_s.tolist(), rec.ibi_s.tolist()):
        yield t, 0, RAW, "ibi", t, 0.0, np.array([ibi], dtype=np.float64), None
    for t in rec.tags_s.tolist():
        yield t, 0, RAW, "tag", t, 0.0, _NO_SAMPLES, None
    for iv in rec.labels:
        # labels sort before samples due at the same instant, so a window never misses its label
        yield iv.start_s, -1, LABEL, LABEL, iv.start_s, 0.0, _NO_SAMPLES, _label_meta(iv)


_NO_SAMPLES = np.zeros(0, dtype=np.float64)


def _key(entry: _Entry) -> tuple[float, int]:
    return entry[0], entry[1]


def _label_meta(iv: LabelInterval) -> dict[str, Any]:
    """A label message's meta: the interval it announces (replayed and re-announced alike)."""
    return {"task": iv.task, "label": iv.label, "start_s": iv.start_s, "end_s": iv.end_s}


def _status(device: str, seq: int, t_s: float, meta: dict[str, Any]) -> Message:
    """A ``status`` message (start, end or announce of a replayed device): no samples, no rate."""
    return Message(kind=STATUS, device=device, modality=STATUS, seq=seq, t0_s=t_s, fs_hz=0.0, meta=meta)


def recording_messages(
    rec: Recording, *, source: str = "replay", packet_s: float | None = None
) -> Iterator[tuple[float, Message]]:
    """``(due_s, message)`` pairs in due order, sequence numbers per topic from 0, framed by
    ``status`` start and end messages; ``packet_s`` (see :func:`packet_samples`) gathers each
    signal into messages of about that many seconds instead of the wristband's packets."""
    seq = SequenceCounter()
    device = rec.device
    start = rec.start_s
    status_topic = topic_for(STATUS, device)
    yield (
        start,
        _status(device, seq.next(status_topic), start, {"event": "start", "source": source, "recording": rec.source}),
    )
    topics: dict[str, str] = {}
    streams = [_periodic(rec, m, packet_s) for m in rec.signals] + [iter(sorted(_events(rec), key=_key))]
    last = start
    for due, _, kind, modality, t0, fs, samples, meta in heapq.merge(*streams, key=_key):
        topic = topics.get(modality)
        if topic is None:
            topic = topics[modality] = topic_for(kind, device, modality if kind == RAW else None)
        last = due if due > last else last
        yield (
            due,
            Message(
                kind=kind,
                device=device,
                modality=modality,
                seq=seq.next(topic),
                t0_s=t0,
                fs_hz=fs,
                samples=samples,
                meta=meta or {},
            ),
        )
    yield last, _status(device, seq.next(status_topic), last, {"event": "end", "source": source})


def announcement(rec: Recording, now_s: float, *, source: str = "replay") -> list[Message]:
    """What a stage that (re)subscribes mid-replay must hear to carry on as if it had seen the
    start: the device's source (an ``announce`` status, which unlike ``start`` does not reset
    anything) and every label interval not over by ``now_s``. Sequence numbers are 0: the
    replay numbers them in its stream."""
    device = rec.device
    out = [_status(device, 0, now_s, {"event": "announce", "source": source, "recording": rec.source})]
    out += [
        Message(kind=LABEL, device=device, modality=LABEL, seq=0, t0_s=iv.start_s, fs_hz=0.0, meta=_label_meta(iv))
        for iv in rec.labels
        if iv.end_s > now_s
    ]
    return out


def topics_of(rec: Recording) -> list[str]:
    """The topics a replay of ``rec`` publishes on (what it waits for subscribers of)."""
    topics = [topic_for(RAW, rec.device, m) for m in rec.signals]
    if len(rec.ibi_s):
        topics.append(topic_for(RAW, rec.device, "ibi"))
    if len(rec.tags_s):
        topics.append(topic_for(RAW, rec.device, "tag"))
    if rec.labels:
        topics.append(topic_for(LABEL, rec.device))
    return topics
