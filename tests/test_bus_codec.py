"""The wire format: round trips, rejection of damaged input, topics and gap counting."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from bus import DTYPES, GapTracker, MalformedMessage, Message, decode, encode, parse_topic, topic_for
from bus.message import MAX_RATE_HZ, MAX_TAIL_DEPTH, MAX_TIME_S, MIN_RATE_HZ

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-:", min_size=1, max_size=20)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), finite, st.text(max_size=10))
json_values = st.recursive(
    json_leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3), max_leaves=8
)
arrays = st.sampled_from(sorted(DTYPES)).flatmap(
    lambda dt: hnp.arrays(dtype=DTYPES[dt], shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=6))
)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    kind = draw(st.sampled_from(["raw", "window", "affect", "label", "status"]))
    modality = draw(names) if kind == "raw" else kind
    msg = Message(
        kind=kind,
        device=draw(names),
        modality=modality,
        seq=draw(st.integers(0, 2**62)),
        t0_s=draw(st.floats(0, MAX_TIME_S, exclude_max=True)),
        fs_hz=draw(st.just(0.0) | st.floats(MIN_RATE_HZ, MAX_RATE_HZ)),
        samples=draw(arrays),
        arrays=draw(st.dictionaries(names, arrays, max_size=3)),
        meta=draw(st.dictionaries(st.text(max_size=8), json_values, max_size=4)),
    )
    assume(not msg.fs_hz or msg.t0_s + msg.n / msg.fs_hz < MAX_TIME_S)  # its last sample is within range too
    return msg


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@settings(max_examples=300, deadline=None)
@given(messages())
def test_round_trip_preserves_every_field(msg: Message) -> None:
    frames = [bytes(f) for f in encode(msg)]
    back = decode(frames)
    assert (back.kind, back.device, back.modality, back.seq, back.version) == (
        msg.kind,
        msg.device,
        msg.modality,
        msg.seq,
        msg.version,
    )
    assert back.t0_s == msg.t0_s and back.fs_hz == msg.fs_hz
    assert _same(back.samples, msg.samples)
    assert list(back.arrays) == list(msg.arrays)
    assert all(_same(back.arrays[k], msg.arrays[k]) for k in msg.arrays)
    assert back.meta == msg.meta
    assert back.topic == msg.topic


def test_big_endian_and_non_contiguous_arrays_arrive_as_little_endian_values() -> None:
    data = np.arange(12, dtype=">f4").reshape(3, 4)[:, ::2]
    msg = Message(kind="raw", device="d", modality="acc", seq=0, t0_s=0.0, fs_hz=32.0, samples=data)
    back = decode([bytes(f) for f in encode(msg)])
    assert back.samples.dtype == np.dtype("<f4")
    np.testing.assert_array_equal(back.samples, data)


def test_unsupported_dtype_and_non_finite_header_are_refused_at_the_sender() -> None:
    with pytest.raises(TypeError):
        encode(Message(kind="raw", device="d", modality="x", seq=0, t0_s=0, fs_hz=1, samples=np.array(["a"])))
    with pytest.raises(ValueError):
        encode(Message(kind="raw", device="d", modality="x", seq=0, t0_s=math.nan, fs_hz=1))
    with pytest.raises(ValueError):
        encode(Message(kind="raw", device="d", modality="x", seq=0, t0_s=0, fs_hz=1, meta={"q": math.inf}))


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=6))
def test_arbitrary_frames_never_crash_the_decoder(frames: list[bytes]) -> None:
    try:
        decode(frames)
    except MalformedMessage as exc:
        assert exc.reason in {
            "frames",
            "header",
            "version",
            "topic",
            "dtype",
            "shape",
            "length",
            "time",
            "rate",
            "json_size",
            "json_depth",
            "json_number",
        }


@settings(max_examples=300, deadline=None)
@given(messages(), st.data())
def test_damaged_frames_are_rejected_or_decoded_never_crash(msg: Message, data: st.DataObject) -> None:
    frames = [bytearray(bytes(f)) for f in encode(msg)]
    i = data.draw(st.integers(0, len(frames) - 1))
    if frames[i]:
        j = data.draw(st.integers(0, len(frames[i]) - 1))
        frames[i][j] ^= data.draw(st.integers(1, 255))
    else:
        j = 0
        frames[i] += b"x"
    try:
        back = decode([bytes(f) for f in frames])
    except MalformedMessage:
        return
    # Accepted: then the damage shows in what arrived. The one harmless exception is a JSON
    # number in the header's tail spelled another way ("1.0" -> "1e0"); any other byte the
    # decoder ignores would let damage through unseen.
    if _identical(back, msg):
        original, numeric = bytes(encode(msg)[i]), b"0123456789.eE+-"
        assert original and i == 1 and original[j] in numeric and frames[i][j] in numeric, (i, j, original[j : j + 1])


def _identical(a: Message, b: Message) -> bool:
    fields = ("kind", "device", "modality", "seq", "t0_s", "fs_hz", "meta", "version", "incarnation")
    return (
        [getattr(a, f) for f in fields] + [list(a.arrays)] == [getattr(b, f) for f in fields] + [list(b.arrays)]
        and _same(a.samples, b.samples)
        and all(_same(a.arrays[k], b.arrays[k]) for k in a.arrays)
    )


def _with_tail(tail: bytes) -> list[bytes]:
    """A window message's frames with ``tail`` as its JSON tail (the encoder would refuse it)."""
    topic, head, samples = (
        bytes(f)
        for f in encode(
            Message(kind="window", device="d", modality="window", seq=0, t0_s=1.7e9, fs_hz=0.0, meta={"a": 1})
        )
    )
    return [topic, head[: -len(b'{"x":{"a":1}}')] + tail, samples]


@pytest.mark.parametrize(
    ("tail", "reason"),
    [
        (b'{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "json_size"),
        (b'{"x":{"a":' + b"[" * 20_000 + b"]" * 20_000 + b"}}", "json_depth"),
        (b'{"x":{"t_end":1' + b"0" * 400 + b"}}", "json_number"),
        (b'{"x":{"t_end":1e400}}', "json_number"),
        (b'{"x":{"t_end":NaN}}', "json_number"),
    ],
)
def test_hostile_json_tails_are_rejected_before_any_stage_sees_them(tail: bytes, reason: str) -> None:
    with pytest.raises(MalformedMessage) as err:
        decode(_with_tail(tail))
    assert err.value.reason == reason
    deep = MAX_TAIL_DEPTH - 2  # inside {"x":{...}}: as deep as allowed, brackets in strings not counted
    ok = b'{"x":{"a":' + b"[" * deep + b"]" * deep + b',"s":"[[[[[[[[[[[[[[[[[[[[\\""}}'
    assert decode(_with_tail(ok)).meta["s"] == "[" * 20 + '"'


@pytest.mark.parametrize(
    ("t0", "fs", "reason"), [(1e300, 4.0, "time"), (-1e12, 4.0, "time"), (1.7e9, 1e-300, "rate"), (1.7e9, 1e9, "rate")]
)
def test_absurd_times_and_rates_are_rejected(t0: float, fs: float, reason: str) -> None:
    frames = encode(Message(kind="raw", device="d", modality="eda", seq=0, t0_s=t0, fs_hz=fs, samples=np.zeros(3)))
    with pytest.raises(MalformedMessage) as err:
        decode([bytes(f) for f in frames])
    assert err.value.reason == reason


def test_truncated_payload_names_its_reason() -> None:
    msg = Message(kind="raw", device="d", modality="bvp", seq=3, t0_s=1.0, fs_hz=64.0, samples=np.zeros(11))
    frames = [bytes(f) for f in encode(msg)]
    with pytest.raises(MalformedMessage) as err:
        decode([frames[0], frames[1], frames[2][:-1]])
    assert err.value.reason == "length"
    with pytest.raises(MalformedMessage) as err:
        decode([b"raw/bvp/other", frames[1], frames[2]])
    assert err.value.reason == "topic"
    with pytest.raises(MalformedMessage) as err:
        decode([frames[0], frames[1][:-3], frames[2]])
    assert err.value.reason in ("header", "shape")


def test_topics_end_with_a_delimiter_so_prefixes_do_not_collide() -> None:
    assert topic_for("raw", "dev1", "bvp") == "raw/bvp/dev1/"
    assert not topic_for("raw", "dev10", "bvp").startswith(topic_for("raw", "dev1", "bvp"))
    assert topic_for("window", "dev1") == "window/dev1/"
    parsed = parse_topic("raw/eda/S2/")
    assert (parsed.kind, parsed.modality, parsed.device) == ("raw", "eda", "S2")
    for bad in ("raw/eda/S2", "raw/S2/", "nope/S2/", "window/a/b/"):
        with pytest.raises(ValueError):
            parse_topic(bad)
    with pytest.raises(ValueError):
        topic_for("raw", "a/b", "bvp")


def test_gap_tracker_counts_missing_and_late_messages_per_topic() -> None:
    g = GapTracker()
    for seq in (5, 6, 9, 8, 10):  # joins at 5, misses 7 and 8... 8 arrives late
        g.observe("raw/bvp/a/", seq)
    g.observe("raw/eda/a/", 0)
    g.observe("raw/eda/a/", 2)
    assert g.stats.gaps == 3 and g.stats.late == 1 and g.stats.received == 7
    assert g.stats.gaps_by_topic == {"raw/bvp/a/": 2, "raw/eda/a/": 1}
