"""``replay --packet-s S``: a gateway relaying many wristbands sends about S seconds of each
signal per message instead of the wristband's packets. The samples, their times and the windows
preprocess cuts from them are the same; only the number of messages and when each is due change."""

from __future__ import annotations

import numpy as np

from preprocess import Preprocessor
from replay.chunks import PACKET_SAMPLES, recording_messages
from tests.conftest import run_cli
from tests.preprocess_helpers import make_recording


def _by_topic(messages):
    out: dict[str, list] = {}
    for due, msg in messages:
        if msg.kind == "raw" and msg.fs_hz > 0:
            out.setdefault(msg.topic, []).append((due, msg))
    return out


def test_larger_messages_carry_the_same_samples_at_the_same_times() -> None:
    rec = make_recording(60.0, seed=4)
    packets, seconds = _by_topic(recording_messages(rec)), _by_topic(recording_messages(rec, packet_s=1.0))
    assert packets.keys() == seconds.keys()
    for topic, msgs in seconds.items():
        fs = msgs[0][1].fs_hz
        modality = msgs[0][1].modality
        size = max(PACKET_SAMPLES[modality], round(fs))
        assert all(m.n == size for _, m in msgs[:-1])  # about a second each, never below a packet
        assert len(msgs) < len(packets[topic]) or size == PACKET_SAMPLES[modality]
        for due, m in msgs:  # due when its last sample exists, as a wristband's packet is
            assert due == m.t0_s + (m.n - 1) / fs
            assert m.seq == msgs.index((due, m))
        whole = np.concatenate([m.samples for _, m in msgs])
        assert np.array_equal(whole, np.concatenate([m.samples for _, m in packets[topic]]))
        starts = np.array([m.t0_s for _, m in msgs])
        assert np.allclose(starts, rec.signals[modality].t0_s + np.cumsum([0] + [m.n for _, m in msgs[:-1]]) / fs)


def test_preprocess_cuts_the_same_windows_from_either() -> None:
    rec = make_recording(80.0, seed=7)

    def windows(packet_s: float | None):
        pre = Preprocessor()
        out = []
        for due, msg in recording_messages(rec, packet_s=packet_s):
            out += pre.push(msg, now_s=due)
        return out + pre.flush()

    a, b = windows(None), windows(1.0)
    assert len(a) == len(b) > 5
    for wa, wb in zip(a, b):
        assert (wa.t_start_s, wa.quality) == (wb.t_start_s, wb.quality)
        for m in wa.signals:
            np.testing.assert_allclose(wb.signals[m], wa.signals[m], rtol=1e-6, atol=1e-9)


def test_a_packet_longer_than_a_hop_is_refused_in_one_line(tmp_path) -> None:
    proc = run_cli("replay", str(tmp_path), "--packet-s", "6")
    assert proc.returncode == 2 and "at most 5 seconds" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
