"""The store's heart rate from BVP gathers contiguous packets into 1 s chunks before the beat
detector sees them (storage/physio.py): the same rates at the same times as packet by packet,
across holes in the stream and a change of sampling rate, with nothing held back at the end."""

from __future__ import annotations

import numpy as np

from bus import Message
from storage.physio import BeatRate, PhysioDownsampler
from tests.test_storage_records import T0, pulse_wave


def _packets(x: np.ndarray, t0: float, fs: float, size: int = 11) -> list[tuple[float, np.ndarray]]:
    return [(t0 + i / fs, x[i : i + size]) for i in range(0, x.size, size)]


def _rates(packets: list[tuple[float, np.ndarray]], batch_s: float) -> list[tuple[float, float]]:
    br = BeatRate(64.0, batch_s=batch_s)
    out = []
    for t0, x in packets:
        out += br.push(t0, x)
    return out + br.flush()


def test_gathered_chunks_give_the_rates_of_packet_by_packet_across_a_hole() -> None:
    x = pulse_wave(75, 60, seed=5)
    before_hole = _packets(x[: 64 * 25], T0, 64.0)
    after_hole = _packets(x[64 * 25 :], T0 + 25 + 3.0, 64.0)  # 3 s with no samples: the detector restarts
    packets = before_hole + after_hole
    per_packet = _rates(packets, batch_s=0.0)
    gathered = _rates(packets, batch_s=1.0)
    assert len(per_packet) > 40
    assert gathered == per_packet
    times = [t for t, _ in gathered]
    assert not any(T0 + 25.5 < t < T0 + 28 for t in times)  # nothing made up inside the hole


def test_nothing_is_held_back_at_a_rate_change_or_at_the_end() -> None:
    """A wristband whose BVP rate changes: the samples gathered at the old rate are finished
    with the old detector, not dropped with it; the device's end finishes the rest."""
    down = PhysioDownsampler()
    x64, x32 = pulse_wave(70, 30, fs=64.0, seed=1), pulse_wave(70, 30, fs=32.0, seed=2)
    got = []
    for seq, (t0, x) in enumerate(_packets(x64, T0, 64.0) + _packets(x32, T0 + 30, 32.0, size=6)):
        fs = 64.0 if t0 < T0 + 30 else 32.0
        msg = Message(
            kind="raw", device="d1", modality="bvp", seq=seq, t0_s=t0, fs_hz=fs, samples=np.asarray(x, dtype=np.float32)
        )
        got += down.push(msg)
    got += down.flush_device("d1")
    times = sorted(t for s, t, _ in got if s == "hr_bpm")
    reference = BeatRate(64.0, batch_s=0.0)
    first_part = [t for t, _ in [*reference.push(T0, x64), *reference.flush()]]
    assert first_part and set(first_part) <= set(times)  # every rate of the 64 Hz stretch, its last second too
    assert max(times) > T0 + 50  # the 32 Hz stretch was measured to its end
