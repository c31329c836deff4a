"""Fuzz targets (issue 12, item 5): every edge where bytes from outside become data.

Each :class:`Target` pairs a Hypothesis strategy with a check that feeds one generated case to
the real code and states the only acceptable outcomes: the documented rejection
(:class:`~bus.message.MalformedMessage` with a reason, a :class:`~common.errors.DataError`
naming the file, a :class:`~ingest.codec.DecodeError`, a count in a stage's rejection counters)
or a clean result that the next stage accepts. Anything else escapes the check as a crash.

Strategies come in two flavours because they find different bugs: raw bytes (does anything
crash on garbage?) and structure-aware ones (a valid message or file with one or a few fields
made hostile, which gets past the first checks into the code behind them).

``tests/test_fuzz.py`` runs each target under pytest (``M3SENSE_FUZZ_EXAMPLES`` cases, 200 by
default, marker ``fuzz``); ``bench/fuzz.py`` runs them as a campaign and counts cases and crashes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
import math
import os
import struct
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from bus import MalformedMessage, Message, decode, encode
from bus.message import (
    _FIXED,
    _FIXED_V1,
    DTYPE_CODES,
    MAX_RATE_HZ,
    MAX_TIME_S,
    MIN_RATE_HZ,
)
from bus.topics import MODALITIES, parse_topic
from common.errors import DataError
from e4 import RATES_HZ
from replay.e4csv import FILES

EXAMPLES = int(os.environ.get("M3SENSE_FUZZ_EXAMPLES", "40"))


def fuzz_settings(examples: int = EXAMPLES) -> settings:
    """No deadline (a shared 2-core machine), no example database in the checkout."""
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=list(HealthCheck),
        phases=[p for p in Phase if p != Phase.explain],
    )


# --------------------------------------------------------------------------------------------
# Shared value strategies

T0 = 1_600_000_000.0
#: floats that break arithmetic: non-finite, huge, tiny, negative, zero
HOSTILE_FLOATS = st.sampled_from(
    [
        math.nan,
        math.inf,
        -math.inf,
        1e300,
        -1e300,
        1e-300,
        -1.0,
        0.0,
        2.0**63,
        MAX_TIME_S,
        -0.0,
        5e-324,
        1.7976931348623157e308,
    ]
)
ANY_FLOAT = st.floats() | HOSTILE_FLOATS
_NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-"
DEVICES = st.sampled_from(["d1", "d2", "x"]) | st.text(_NAME_CHARS, min_size=1, max_size=64)
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
JSON = st.recursive(
    JSON_SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=12
)


def _array(dtype: str, shape: tuple[int, ...], seed: int, special: float | None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(shape) * 10.0 ** rng.integers(0, 6)
    if special is not None and values.size and np.dtype(dtype).kind == "f":
        values.flat[int(rng.integers(0, values.size))] = special
    with np.errstate(invalid="ignore", over="ignore"):
        return values.astype(dtype)


def arrays(max_dims: int = 2, max_side: int = 6) -> st.SearchStrategy[np.ndarray]:
    """Any bus dtype and a small shape; values from one drawn seed (drawing each element makes
    generation, not the code under test, the cost of a case), floats sometimes NaN or infinite."""
    return st.builds(
        _array,
        st.sampled_from(DTYPE_CODES),
        hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0, max_side=max_side),
        st.integers(0, 2**32 - 1),
        st.none() | HOSTILE_FLOATS,
    )


def _meta_for(kind: str) -> st.SearchStrategy[dict]:
    """Meta a real message of ``kind`` has, each field sometimes replaced by any JSON value."""
    times = st.floats(T0 - 100, T0 + 1000) | HOSTILE_FLOATS.filter(math.isfinite) | st.integers()
    by_kind: dict[str, dict[str, st.SearchStrategy]] = {
        "label": {
            "task": st.sampled_from(["stress", "anxiety", "emotion"]),
            "label": st.text(max_size=10),
            "start_s": times,
            "end_s": times,
        },
        "status": {
            "event": st.sampled_from(
                ["start", "end", "announce", "gap", "battery", "connected", "on_wrist", "bad_packet", "tag"]
            ),
            "source": st.sampled_from(["replay", "live", "sim"]),
            "missing_samples": st.integers(),
            "duration_s": times,
            "battery": st.floats(0, 1),
            "on_wrist": st.booleans(),
            "stream": st.sampled_from(list(MODALITIES)),
        },
        "raw": {"unit": st.just("counts")},
        "window": {"t_end": times, "source": st.just("replay")},
        "affect": {
            "t_end": times,
            "t_start": times,
            "model": st.text(max_size=8),
            "source": st.just("live"),
            "tasks": st.dictionaries(
                st.sampled_from(["stress", "anxiety", "emotion", "x"]),
                st.fixed_dictionaries(
                    {"probs": st.dictionaries(st.text(max_size=6), JSON, max_size=3), "label": JSON, "status": JSON}
                ),
                max_size=3,
            ),
        },
    }
    fields = by_kind.get(kind, {})
    return st.fixed_dictionaries({}, optional={k: s | JSON for k, s in fields.items()}) | st.dictionaries(
        st.text(max_size=8), JSON, max_size=4
    )


@st.composite
def messages(draw: st.DrawFn, kinds: tuple[str, ...] = ("raw", "window", "affect", "label", "status")) -> Message:
    """A message the encoder accepts, fields drawn from their plausible ranges and beyond."""
    kind = draw(st.sampled_from(kinds))
    modality = (
        draw(st.sampled_from(list(MODALITIES)) | st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8))
        if kind == "raw"
        else kind
    )
    rate = st.sampled_from([0.0, 1.0, 4.0, 32.0, 64.0]) | st.floats(MIN_RATE_HZ, MAX_RATE_HZ)
    t0 = st.floats(T0 - 1e4, T0 + 1e4) | st.floats(0, MAX_TIME_S, exclude_max=True) | st.sampled_from([0.0, T0])
    named = st.dictionaries(st.text(st.characters(codec="ascii"), min_size=1, max_size=10), arrays(), max_size=3)
    return Message(
        kind=kind,
        device=draw(DEVICES),
        modality=modality,
        seq=draw(st.integers(0, 2**63 - 1)),
        t0_s=draw(t0),
        fs_hz=draw(rate),
        samples=draw(arrays()),
        arrays=draw(named),
        meta=draw(_meta_for(kind)),
    )


def frames_of(msg: Message) -> list[bytes]:
    """The frames as ZeroMQ sends them: the buffer of each (``bytes(a)`` of a 0-d array is not)."""
    return [f if isinstance(f, bytes) else memoryview(f).tobytes() for f in encode(msg)]


# --------------------------------------------------------------------------------------------
# Hostile edits of encoded frames (header layout: see bus.message)
def _fixed(head: bytes | bytearray) -> struct.Struct:
    """The fixed part of a header of this version (v1 has no incarnation)."""
    return _FIXED_V1 if head[:1] == b"\x01" else _FIXED


def _set_field(frames: list[bytes], index: int, value: Any) -> list[bytes]:
    head = bytearray(frames[1])
    fixed = _fixed(head)
    if len(head) < fixed.size:
        return frames
    fields = list(fixed.unpack_from(head))
    if index >= len(fields):
        return frames
    fields[index] = value
    try:
        fixed.pack_into(head, 0, *fields)
    except struct.error:
        return frames
    return [frames[0], bytes(head), *frames[2:]]


def _with_tail(frames: list[bytes], tail: bytes) -> list[bytes]:
    head = frames[1]
    if len(head) < _fixed(head).size:
        return frames
    end = _fixed(head).size + 4 * min(head[2], 4)
    return [frames[0], head[:3] + bytes([head[3] | 1]) + head[4:end] + tail, *frames[2:]]


HOSTILE_TAILS = st.one_of(
    st.integers(1, 200_000).map(lambda d: b'{"x":{"a":' + b"[" * d + b"]" * d + b"}}"),
    st.integers(1, 500).map(lambda n: b'{"x":{"n":1' + b"0" * n + b"}}"),
    st.sampled_from(
        [
            b'{"x":{"n":NaN}}',
            b'{"x":{"n":Infinity}}',
            b'{"x":{"n":1e999}}',
            b'{"x":[]}',
            b"[]",
            b'{"a":5}',
            b'{"a":[["s","float64",[4294967296,0]]]}',
            b'{"a":[["s","float64",[0,-1]]]}',
            b'{"a":[["s","float65",[1]]]}',
            b'{"a":[["s","float64",[1,1,1,1,1]]]}',
            b'{"a":[[1,2,3]]}',
            b'{"a":[["s","float64",[1]],["s","float64",[1]]]}',
            b"\xff\xfe",
            b"",
            b"{",
            b"null",
            b'{"x":{"t_end":"soon"}}',
            b'{"x":{"quality":"x"}}',
            b'{"x":{"tasks":[]}}',
        ]
    ),
    JSON.map(lambda v: json.dumps({"x": {"v": v}}).encode()),
    JSON.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64),
)


@st.composite
def mutated_frames(draw: st.DrawFn) -> list[bytes]:
    """A valid message's frames after one to three hostile edits."""
    frames = frames_of(draw(messages()))
    for _ in range(draw(st.integers(1, 3))):
        if len(frames) < 2:
            break  # already cut to a topic alone: nothing left to edit
        op = draw(st.sampled_from(["field", "byte", "tail", "cut_head", "samples", "frames", "topic"]))
        if op == "field":
            index = draw(st.integers(0, 7))
            value = draw(
                (
                    [st.integers(0, 255)] * 4
                    + [st.integers(-(2**63), 2**63 - 1)]
                    + [ANY_FLOAT] * 2
                    + [st.integers(0, 2**64 - 1)]
                )[index]
            )
            frames = _set_field(frames, index, value)
        elif op == "byte" and frames[1]:
            head = bytearray(frames[1])
            head[draw(st.integers(0, len(head) - 1))] = draw(st.integers(0, 255))
            frames = [frames[0], bytes(head), *frames[2:]]
        elif op == "tail":
            frames = _with_tail(frames, draw(HOSTILE_TAILS))
        elif op == "cut_head":
            frames = [frames[0], frames[1][: draw(st.integers(0, len(frames[1])))], *frames[2:]]
        elif op == "samples":
            i = draw(st.integers(2, max(2, len(frames) - 1)))
            if i < len(frames):
                frames = [
                    *frames[:i],
                    draw(st.binary(max_size=80) | st.just(frames[i][:-1] or b"\0")),
                    *frames[i + 1 :],
                ]
        elif op == "frames":
            frames = draw(st.sampled_from([frames[:-1], [*frames, b""], [*frames, b"\0" * 8], frames[:2]]))
        else:
            frames = [
                draw(
                    st.binary(max_size=40)
                    | st.sampled_from(
                        [b"raw/eda/", b"raw//d1/", b"window/d1", b"affect/d1/x/", b"_sync/d1/", b"raw/eda/d 1/"]
                    )
                ),
                *frames[1:],
            ]
    return frames


RANDOM_FRAMES = st.lists(st.binary(max_size=120), max_size=6)


# --------------------------------------------------------------------------------------------
# Targets


@dataclass(frozen=True)
class Target:
    """``harness()`` yields the check for one case (a context manager, for the resources it needs)."""

    name: str
    strategy: st.SearchStrategy
    harness: Callable[[], contextlib.AbstractContextManager[Callable[[Any], None]]]
    what: str


@contextlib.contextmanager
def _stateless(check: Callable[[Any], None]) -> Iterator[Callable[[Any], None]]:
    yield check


def check_decoded(msg: Message) -> None:
    """What :func:`bus.decode` promises about a message it returns, and that it re-encodes to itself."""
    parse_topic(msg.topic)
    assert 0 <= msg.t0_s < MAX_TIME_S and msg.seq >= 0
    assert msg.fs_hz == 0 or MIN_RATE_HZ <= msg.fs_hz <= MAX_RATE_HZ
    assert isinstance(msg.meta, dict) and msg.samples.ndim <= 4
    again = decode(frames_of(msg))
    assert (again.topic, again.seq, again.t0_s, again.fs_hz) == (msg.topic, msg.seq, msg.t0_s, msg.fs_hz)
    assert again.meta == msg.meta and again.samples.tobytes() == msg.samples.tobytes()
    assert {k: a.tobytes() for k, a in again.arrays.items()} == {k: a.tobytes() for k, a in msg.arrays.items()}


def decode_or_reject(frames: list[bytes]) -> Message | None:
    try:
        msg = decode(frames)
    except MalformedMessage as exc:
        assert exc.reason and exc.reason.isidentifier(), exc
        return None
    check_decoded(msg)
    return msg


def _decode_check(frames: list[bytes]) -> None:
    decode_or_reject(frames)


BUS_RANDOM = Target(
    "bus_decode_random",
    RANDOM_FRAMES,
    lambda: _stateless(_decode_check),
    "bus.message.decode on lists of random frames",
)
BUS_MUTATED = Target(
    "bus_decode_mutated",
    mutated_frames(),
    lambda: _stateless(_decode_check),
    "bus.message.decode on valid messages with hostile header fields, JSON tails and frames",
)


# --------------------------------------------------------------------------------------------
# Readers: E4 Connect exports (folder and zip)

NUMBER_TEXT = st.one_of(
    st.floats(-1e3, 1e3).map(lambda v: f"{v:.3f}"),
    st.integers(-200, 200).map(str),
    st.floats().map(repr),
    HOSTILE_FLOATS.map(repr),
    st.sampled_from(
        [
            "",
            " ",
            "nan",
            "NaN",
            "inf",
            "-inf",
            "1e999",
            "x",
            "1,2",
            "0x10",
            "--1",
            " 3 ",
            "1_000",
            "\x00",
            "１",
            "1e-400",
        ]
    ),
)


def mostly(good: st.SearchStrategy, bad: st.SearchStrategy, odds: int = 4) -> st.SearchStrategy:
    """``good`` ``odds`` times as often as ``bad``: hostile values, but enough valid files that
    the checks behind the first ones run too."""
    return st.sampled_from([good] * odds + [bad]).flatmap(lambda s: s)


START_TEXT = mostly(
    st.floats(T0 - 1e6, T0 + 1e6).map(lambda v: f"{v:.6f}"),
    st.sampled_from(["0", "-1e12", "1e300", "nan", "946684800", "4102444800", "abc", ""]) | NUMBER_TEXT,
)


def rate_text(nominal: float) -> st.SearchStrategy[str]:
    return mostly(
        st.sampled_from([f"{nominal:g}", f"{nominal:.6f}", f"{nominal * 1.5:g}"]),
        st.sampled_from(["128", "2", "0.001", "1e-300", "0", "-4", "nan", "inf", "1e9"]) | NUMBER_TEXT,
    )


@st.composite
def periodic_csv(draw: st.DrawFn, columns: int, nominal: float) -> str:
    """An export file: start row, rate row, value rows, with a few cells or rows made hostile.
    The value rows come from one drawn seed (drawing each cell would make generation, not the
    reader, the cost of a case)."""

    def row(cell: st.SearchStrategy[str]) -> list[str]:
        n = columns + draw(st.sampled_from([0] * 8 + [-1, 1]))
        return [draw(cell)] * n if draw(st.booleans()) else [draw(cell) for _ in range(n)]

    n = draw(st.integers(0, 60))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if columns == 3:
        values = [[str(v) for v in r] for r in rng.integers(-100, 100, (n, 3)).tolist()]
    else:
        values = [[f"{v:.2f}"] for v in rng.uniform(0, 100, n).tolist()]
    rows = [row(START_TEXT), row(rate_text(nominal)), *values]
    for _ in range(draw(st.integers(0, 3)) if n else 0):
        i = 2 + draw(st.integers(0, n - 1))
        if draw(st.booleans()):
            rows[i] = [draw(st.text(max_size=20))]
        else:
            rows[i][draw(st.integers(0, len(rows[i]) - 1))] = draw(NUMBER_TEXT)
    end = draw(st.sampled_from(["\n", "", "\n\n", " \n"]))
    return draw(st.sampled_from(["\n", "\r\n"])).join(", ".join(r) for r in rows) + end


@st.composite
def ibi_csv(draw: st.DrawFn) -> str:
    rows = [f"{draw(START_TEXT)}, {draw(st.sampled_from(['IBI', 'ibi', ' IBI', 'x', '']))}"]
    good = st.tuples(st.floats(0, 600), st.floats(0.3, 1.5)).map(lambda r: f"{r[0]:.6f},{r[1]:.6f}")
    bad = st.tuples(NUMBER_TEXT, NUMBER_TEXT).map(",".join)
    rows += draw(st.lists(good | bad, max_size=20))
    return "\n".join(rows) + "\n"


@st.composite
def labels_csv(draw: st.DrawFn) -> str:
    header = draw(st.sampled_from(["start,end,task,label"] * 5 + ["start,end,task", "", "x"]))
    time = st.floats(T0 - 100, T0 + 700).map(lambda v: f"{v:.3f}") | START_TEXT
    good = st.tuples(
        time,
        time,
        st.sampled_from(["stress", "anxiety", "emotion", ""]),
        st.sampled_from(["baseline", "stress", "amusement", "high", "low", "", "a b"]),
    )
    rows = draw(st.lists(good.map(",".join) | st.text(max_size=30), max_size=8))
    return "\n".join([header, *rows]) + "\n"


def _valid_periodic(t0: float, modality: str, n: int, rng: np.random.Generator) -> str:
    columns, fs = (3 if modality == "acc" else 1), RATES_HZ[modality]
    head = [", ".join([f"{t0:.6f}"] * columns), ", ".join([f"{fs:.6f}"] * columns)]
    if columns == 3:
        rows = [",".join(map(str, r)) for r in rng.integers(-100, 100, (n, 3)).tolist()]
    else:
        rows = [f"{v:.2f}" for v in rng.uniform(0.1, 100, n).tolist()]
    return "\n".join(head + rows) + "\n"


@st.composite
def export_files(draw: st.DrawFn) -> dict[str, str | bytes]:
    """A valid export (signals, beats, tags and labels inside it), then up to three of its files
    replaced by hostile versions: structured ones, random text, random bytes, or none at all."""
    t0 = draw(st.floats(T0 - 1e6, T0 + 1e6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    files: dict[str, str | bytes] = {}
    for modality, name in FILES.items():
        if modality == "eda" or draw(st.integers(0, 3)):
            files[name] = _valid_periodic(t0, modality, draw(st.integers(0, 80)), rng)
    span = 20.0
    offsets = np.sort(rng.uniform(0, span, draw(st.integers(0, 6))))
    files["IBI.csv"] = f"{t0:.6f}, IBI\n" + "".join(f"{o:.6f},{rng.uniform(0.4, 1.2):.6f}\n" for o in offsets)
    files["tags.csv"] = "".join(f"{t0 + o:.6f}\n" for o in rng.uniform(0, span, draw(st.integers(0, 3))))
    if draw(st.booleans()):
        a, b = sorted(rng.uniform(0, span, 2).tolist())
        files["labels.csv"] = f"start,end,task,label\n{t0 + a:.3f},{t0 + b + 1:.3f},stress,stress\n"
    hostile = {
        **{name: periodic_csv(3 if m == "acc" else 1, RATES_HZ[m]) for m, name in FILES.items()},
        "IBI.csv": ibi_csv(),
        "labels.csv": labels_csv(),
        "tags.csv": st.lists(START_TEXT | NUMBER_TEXT, max_size=5).map(lambda r: "\n".join(r) + "\n"),
    }
    for name in draw(st.lists(st.sampled_from(sorted(hostile)), max_size=3, unique=True)):
        files[name] = draw(mostly(hostile[name], st.text(max_size=200) | st.binary(max_size=200) | st.none(), 3))
    return {k: v for k, v in files.items() if v is not None}


def check_recording(rec: Any, missing: bool = False) -> None:
    """What a reader promises about a recording it returns: the checks of the module docstring,
    and that every message replaying it would publish is one the bus accepts (else it would be
    dropped downstream: a silent loss after the reader said yes)."""
    from e4 import rate_is_plausible
    from replay import recording_messages
    from replay.e4csv import MAX_START_S, MIN_START_S

    assert rec.signals
    for modality, sig in rec.signals.items():
        assert MIN_START_S <= sig.t0_s < MAX_START_S and rate_is_plausible(modality, sig.fs_hz), (modality, sig)
        # NaN marks a slot nobody filled, for readers of per-sample stamps (replay.timed); E4 exports
        # hold no such thing and their reader refuses non-finite values
        assert (~np.isinf(sig.values)).all() if missing else np.isfinite(sig.values).all()
    for times in (rec.ibi_t_s, rec.ibi_s, rec.tags_s):
        assert np.isfinite(times).all()
    n = 0
    for _, msg in recording_messages(rec):
        decoded = decode(frames_of(msg))  # MalformedMessage here is a crash of the check: a reader bug
        assert decoded.topic == msg.topic
        n += 1
    assert n >= 2


def _write_zip(files: dict[str, str | bytes], nested: bool) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, content in files.items():
            z.writestr(f"S1_E4_Data/{name}" if nested else name, content)
    return buf.getvalue()


@contextlib.contextmanager
def _reader_harness() -> Iterator[Callable[[Any], None]]:
    from replay.e4csv import read_source

    with tempfile.TemporaryDirectory(prefix="m3sense-fuzz-") as tmp:
        root = Path(tmp)
        count = [0]

        def check(case: tuple[dict[str, str | bytes], str]) -> None:
            files, form = case
            count[0] += 1
            if form == "folder":
                where = root / f"c{count[0]}" / "S1_E4_Data"
                where.mkdir(parents=True)
                for name, content in files.items():
                    (where / name).write_bytes(content if isinstance(content, bytes) else content.encode())
            else:
                where = root / f"c{count[0]}_E4_Data.zip"
                where.write_bytes(_write_zip(files, nested=form == "zip_nested"))
            try:
                recordings = read_source(where)
            except DataError as exc:  # the documented refusal: one line naming the file (and line)
                assert str(exc).startswith(str(where)) and "\n" not in str(exc), exc
                return
            for rec in recordings:
                check_recording(rec)

        yield check


E4_EXPORTS = Target(
    "e4_export_reader",
    st.tuples(export_files(), st.sampled_from(["folder", "zip", "zip_nested"])),
    _reader_harness,
    "replay.e4csv.read_source on generated export folders and zips",
)


@contextlib.contextmanager
def _random_zip_harness() -> Iterator[Callable[[Any], None]]:
    from replay.e4csv import read_source

    with tempfile.TemporaryDirectory(prefix="m3sense-fuzz-") as tmp:
        count = [0]

        def check(case: tuple[dict[str, str | bytes], int, int]) -> None:
            files, at, byte = case
            count[0] += 1
            data = bytearray(_write_zip(files, nested=False))
            if data:
                data[at % len(data)] = byte  # a damaged archive: directory, headers or data
            where = Path(tmp) / f"c{count[0]}.zip"
            where.write_bytes(bytes(data))
            try:
                recordings = read_source(where)
            except DataError as exc:
                assert str(exc).startswith(str(where)) and "\n" not in str(exc), exc
                return
            for rec in recordings:
                check_recording(rec)

        yield check


E4_ZIP_DAMAGED = Target(
    "e4_zip_damaged",
    st.tuples(export_files(), st.integers(0, 2**16), st.integers(0, 255)),
    _random_zip_harness,
    "replay.e4csv.read_source on zips with one damaged byte",
)


# --------------------------------------------------------------------------------------------
# Readers of data sets in their own layouts (WESAD, K-EmoCon, VerBIO, unlabelled folders): a valid
# small copy of each (the reader tests' fixtures), one of its files damaged per case


def _pristine_datasets(root: Path) -> dict[str, tuple[str, list[Path]]]:
    """name -> (source string, the files one case may damage)."""
    from replay import simulate_recordings
    from replay.e4csv import write_e4_export
    from tests.dataset_fixtures import write_kemocon, write_verbio, write_wesad_subject

    write_wesad_subject(root / "wesad" / "WESAD", "S5", seed=5)
    write_kemocon(root / "kemocon", pids=(1,))
    write_verbio(root / "verbio", {"PRE": {"P001": 30}}, seconds=30, seed=3)
    for i, rec in enumerate(simulate_recordings(minutes=0.5, seed=2, subjects=2, labels="none")):
        write_e4_export(rec, root / "unlabelled" / f"person{i}" / "session1")
    sources = {"wesad": "wesad:", "kemocon": "kemocon:", "verbio": "verbio:", "unlabelled": "unlabelled:"}
    return {
        name: (prefix, sorted(p for p in (root / name).rglob("*") if p.is_file())) for name, prefix in sources.items()
    }


def _damage(data: bytes, how: int, at: int, text: str) -> bytes:
    """One damage of a file: a byte changed, cut short, garbage appended, or a line replaced
    with hostile text (what a valid file with one bad row looks like)."""
    if not data:
        return text.encode()
    i = at % len(data)
    if how == 0:
        return data[:i] + bytes([(data[i] + 1 + at // len(data)) % 256]) + data[i + 1 :]
    if how == 1:
        return data[:i]
    if how == 2:
        return data + text.encode("utf-8", "surrogatepass")
    lines = data.split(b"\n")
    lines[at % len(lines)] = text.encode("utf-8", "surrogatepass")
    return b"\n".join(lines)


DATASET_CASES = st.tuples(
    st.sampled_from(["wesad", "kemocon", "verbio", "unlabelled"]),
    st.integers(0, 2**16),
    st.integers(0, 3),
    st.integers(0, 2**24),
    mostly(st.lists(NUMBER_TEXT, min_size=1, max_size=6).map(",".join), st.text(max_size=40)),
)


@contextlib.contextmanager
def _dataset_harness() -> Iterator[Callable[[Any], None]]:
    import shutil

    from replay.e4csv import read_source

    with tempfile.TemporaryDirectory(prefix="m3sense-fuzz-") as tmp:
        pristine = _pristine_datasets(Path(tmp) / "pristine")
        count = [0]

        def check(case: tuple[str, int, int, int, str]) -> None:
            name, which, how, at, text = case
            count[0] += 1
            prefix, files = pristine[name]
            src = Path(tmp) / "pristine" / name
            dst = Path(tmp) / f"c{count[0]}"
            shutil.copytree(src, dst, copy_function=os.link)  # hard links: only the damaged file is new
            victim = dst / files[which % len(files)].relative_to(src)
            data = victim.read_bytes()
            victim.unlink()
            victim.write_bytes(_damage(data, how, at, text))
            try:
                recordings = read_source(f"{prefix}{dst}")
            except DataError as exc:
                assert str(exc).startswith(str(dst)) and "\n" not in str(exc), exc
                return
            finally:
                shutil.rmtree(dst)
            for rec in recordings:
                check_recording(rec, missing=name in ("kemocon", "verbio"))

        yield check


DATASETS = Target(
    "dataset_readers",
    DATASET_CASES,
    _dataset_harness,
    "replay readers of WESAD, K-EmoCon, VerBIO and unlabelled folders, one file of a valid copy damaged",
)

# --------------------------------------------------------------------------------------------
# BLE: the E4 packet decoders, one wristband's ingest pipeline, and the raw-log reader


def _layouts() -> st.SearchStrategy:
    from ingest.codec import Layout

    return mostly(
        st.just(Layout()),
        st.builds(
            Layout,
            temp_samples=st.integers(1, 8),
            eda_samples=st.integers(1, 8),
            acc_samples=st.integers(1, 8),
            counter_byteorder=st.sampled_from(["big", "little"]),
            bvp_counter=st.booleans(),
            eda_counter=st.booleans(),
            acc_counter=st.booleans(),
            temp_offset_c=st.floats(-300, 0),
        ),
    )


def _packet(char: str, layout: Any, rng: np.random.Generator) -> bytes:
    """A well-formed notification of ``char`` with random content and counter."""
    from ingest import codec

    counter = int(rng.integers(0, 2**16))
    if char == "bvp":
        return codec.encode_bvp(rng.integers(-64, 64, (codec.BVP_PAIRS, 2)), counter % 64)
    if char == "eda":
        return codec.encode_eda(
            rng.choice([0.0, 0.05, 1.0, 5.0, 40.0], layout.eda_samples) * rng.uniform(0.5, 2), counter, layout
        )
    if char == "temp":
        return codec.encode_temp(rng.uniform(20, 40, layout.temp_samples), layout)
    if char == "acc":
        return codec.encode_acc(rng.integers(-128, 128, (layout.acc_samples, 3)), counter, layout)
    if char == "battery":
        return codec.encode_battery(float(rng.uniform(0, 1)))
    return codec.encode_button(bool(rng.integers(0, 2)))


@st.composite
def packets(draw: st.DrawFn, layout: Any, rng: np.random.Generator | None = None) -> tuple[str, bytes]:
    """(characteristic, notification): a well-formed packet of random content, sometimes with a
    byte changed, cut or added; or random bytes for a random characteristic."""
    from ingest import codec

    char = draw(st.sampled_from(codec.STREAMS))
    data = _packet(char, layout, rng or np.random.default_rng(draw(st.integers(0, 2**32 - 1))))
    edit = draw(st.sampled_from(["none"] * 6 + ["byte", "cut", "grow", "random"]))
    if edit == "byte":
        b = bytearray(data)
        b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
        data = bytes(b)
    elif edit == "cut":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif edit == "grow":
        data += draw(st.binary(min_size=1, max_size=4))
    elif edit == "random":
        char, data = draw(st.sampled_from([*codec.STREAMS, "command", "x"])), draw(st.binary(max_size=24))
    return char, data


def _check_packet(case: tuple[Any, tuple[str, bytes]]) -> None:
    from ingest import codec

    layout, (char, data) = case
    try:
        pkt = codec.decode(char, data, layout)
    except codec.DecodeError as exc:
        assert exc.reason.isidentifier() and exc.char == char
        return
    assert pkt.char == char and len(pkt.values) >= 1
    if pkt.values.dtype.kind == "f":
        assert np.isfinite(pkt.values).all()
    if char in codec.PERIODIC_RATES_HZ:
        assert len(pkt.values) == layout.samples_per_packet(char)


BLE_DECODE = Target(
    "ble_decode",
    _layouts().flatmap(lambda lay: st.tuples(st.just(lay), packets(lay))),
    lambda: _stateless(_check_packet),
    "ingest.codec.decode on E4 notifications, valid and damaged",
)


def _notifications(layout: Any, codes: list[int]) -> list[tuple[str, bytes, float]]:
    """One notification per code (a single drawn integer each keeps generation cheap; its bits
    choose the step since the last arrival, the characteristic and the damage, and seed the
    content): nominal spacing with jitter, sometimes a clock stepping back, a long silence or
    a reconnect ("link"); mostly well-formed packets, sometimes a byte changed, cut or added,
    or random bytes."""
    from ingest import codec

    t, out = T0, []
    for code in codes:
        rng = np.random.default_rng(code)
        step = code % 64
        t += (
            rng.uniform(0, 0.2)
            if step < 56
            else -rng.uniform(0, 5)
            if step < 59
            else rng.uniform(0, 3600)
            if step < 63
            else 0.0
        )
        if step == 63:
            out.append(("link", b"", t))
            continue
        char = codec.STREAMS[(code >> 6) % len(codec.STREAMS)]
        data = _packet(char, layout, rng)
        edit = (code >> 9) % 16
        if edit == 12:
            b = bytearray(data)
            b[int(rng.integers(0, len(b)))] = int(rng.integers(0, 256))
            data = bytes(b)
        elif edit == 13:
            data = data[: int(rng.integers(0, len(data)))]
        elif edit == 14:
            data += rng.bytes(int(rng.integers(1, 5)))
        elif edit == 15:
            char, data = [*codec.STREAMS, "command", "x"][int(rng.integers(0, 8))], rng.bytes(int(rng.integers(0, 25)))
        out.append((char, data, t))
    return out


NOTIFICATION_RUNS = st.tuples(_layouts(), st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=60)).map(
    lambda c: (c[0], _notifications(*c))
)


def emit_message(emit: Any, device: str, seq: int) -> Message:
    return Message(
        kind=emit.kind,
        device=device,
        modality=emit.modality if emit.kind == "raw" else emit.kind,
        seq=seq,
        t0_s=emit.t0_s,
        fs_hz=emit.fs_hz,
        samples=emit.samples,
        meta=emit.meta,
    )


def _check_ingest(case: tuple[Any, list[tuple[str, bytes, float]]]) -> None:
    """Every notification is decoded or counted as bad, and each message made is one the bus accepts."""
    from ingest.device import DeviceIngest

    layout, run = case
    ingest = DeviceIngest(layout=layout)
    for seq, (char, data, arrival) in enumerate(run):
        if char == "link":
            ingest.relink()
            continue
        for emit in ingest.packet(char, data, arrival):
            decode(frames_of(emit_message(emit, "e4-0123456789abcdef", seq)))


BLE_INGEST = Target(
    "ble_device_ingest",
    NOTIFICATION_RUNS,
    lambda: _stateless(_check_ingest),
    "ingest.device.DeviceIngest (decode, timestamps, gaps, beats) on notification runs",
)


RAW_LOG_LINES = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {
                "t": mostly(st.floats(T0, T0 + 100), ANY_FLOAT | JSON),
                "device": mostly(DEVICES, JSON),
                "char": mostly(st.sampled_from(["bvp", "eda", "temp", "acc", "battery", "button", "link"]), JSON),
                "data": mostly(st.binary(max_size=24).map(bytes.hex), JSON),
            }
        ).map(lambda d: json.dumps(d)),
        st.text(max_size=60),
    ),
    max_size=30,
)


@contextlib.contextmanager
def _raw_log_harness() -> Iterator[Callable[[Any], None]]:
    from ingest.ble import replay_raw_log

    with tempfile.TemporaryDirectory(prefix="m3sense-fuzz-") as tmp:
        path = Path(tmp) / "raw.jsonl"

        def check(lines: list[str]) -> None:
            path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
            for device, emit in replay_raw_log(path):
                assert isinstance(device, str) and math.isfinite(emit.t0_s) and math.isfinite(emit.fs_hz)

        yield check


RAW_LOG = Target(
    "ble_raw_log_reader",
    RAW_LOG_LINES,
    _raw_log_harness,
    "ingest.ble.replay_raw_log (ble decode --raw-log) on damaged JSON-lines logs",
)


# --------------------------------------------------------------------------------------------
# The stages' message handlers, fed decoded messages in-process: a valid replay stream with
# hostile messages and hostile edits of its own messages mixed in


@functools.lru_cache(maxsize=8)
def _base_stream(seed: int) -> tuple[Message, ...]:
    """A replayed 26 s wristband (labelled, a window's worth) as the bus carries it, in 2 s
    chunks (the wristband's own packets would make each case ten times dearer for no new paths)."""
    from replay import LabelInterval
    from tests.preprocess_helpers import T0 as REC_T0, chunk_messages, every, make_recording

    rec = make_recording(
        26.0,
        seed=seed,
        device="d1",
        labels=[LabelInterval(start_s=REC_T0, end_s=REC_T0 + 30, task="stress", label="stress")],
    )
    return tuple(chunk_messages(rec, every(2.0, rec)))


@st.composite
def hostile_edit(draw: st.DrawFn, msg: Message) -> Message:
    """``msg`` with one field made hostile, still a message the encoder accepts."""
    what = draw(st.sampled_from(["samples", "t0", "fs", "meta", "meta_field", "device", "arrays"]))
    if what == "samples":
        return replace(
            msg,
            samples=draw(
                arrays()
                | st.sampled_from(
                    [
                        np.full(6, np.nan),
                        np.full(6, np.inf),
                        np.full(6, 1e308),
                        np.zeros((6, 4)),
                        np.zeros(0),
                        np.ones(50_000),
                        np.full(11, -1e300),
                    ]
                )
            ),
        )
    if what == "t0":
        return replace(
            msg,
            t0_s=draw(
                st.sampled_from([0.0, MAX_TIME_S - 1, msg.t0_s + 1e6, msg.t0_s - 1e6])
                | st.floats(0, MAX_TIME_S, exclude_max=True)
            ),
        )
    if what == "fs":
        return replace(
            msg,
            fs_hz=draw(
                st.sampled_from([0.0, MIN_RATE_HZ, MAX_RATE_HZ, msg.fs_hz * 2.0001])
                | st.floats(MIN_RATE_HZ, MAX_RATE_HZ)
            ),
        )
    if what == "meta":
        return replace(msg, meta=draw(_meta_for(msg.kind)))
    if what == "meta_field":
        key = draw(st.sampled_from([*msg.meta, "event", "source", "task", "label", "t_end", "quality", "tasks"]))
        return replace(msg, meta={**msg.meta, key: draw(JSON | HOSTILE_FLOATS.filter(math.isfinite))})
    if what == "device":
        return replace(msg, device=draw(DEVICES))
    return replace(
        msg, arrays=draw(st.dictionaries(st.sampled_from(["bvp", "eda", "bvp_mask", "x"]), arrays(), max_size=3))
    )


@st.composite
def hostile_streams(draw: st.DrawFn, kinds: tuple[str, ...], base: Callable[[int], tuple[Message, ...]]) -> list:
    """Frames: a base stream in order, with some of its messages edited or dropped and hostile
    messages (valid-looking or mutated frames) inserted."""
    stream = list(base(draw(st.integers(0, 7))))
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(stream) - 1))
        stream[i] = draw(hostile_edit(stream[i])) if draw(st.booleans()) else stream[i]
    out: list[list[bytes]] = [frames_of(m) for m in stream]
    for _ in range(draw(st.integers(0, 4))):
        extra = draw(st.sampled_from(["message", "mutated"]))
        frames = frames_of(draw(messages(kinds))) if extra == "message" else draw(mutated_frames())
        out.insert(draw(st.integers(0, len(out))), frames)
    if draw(st.integers(0, 9)) == 0:
        del out[draw(st.integers(0, len(out) - 1))]  # one lost on the way
    return out


def _receiver() -> Any:
    """A real Subscriber's receive path (decode, malformed counts, sequence gaps) without a socket."""
    from bus import Subscriber

    return Subscriber("tcp://127.0.0.1:9", [""])


@contextlib.contextmanager
def _preprocess_harness() -> Iterator[Callable[[Any], None]]:
    from preprocess.preprocessor import Preprocessor
    from preprocess.window import DeviceEnd, Window

    def check(stream: list[list[bytes]]) -> None:
        pre, sub, seq = Preprocessor(device_timeout_s=30.0), _receiver(), 0
        for k, frames in enumerate(stream):
            msg = sub._accept(frames)
            now = k * 0.05
            out = pre.push(msg, now_s=now) if msg is not None else []
            out += pre.expire(now)
            items: list[Window | DeviceEnd] = [*out, *pre.take_ended()]
            for item in items:  # what preprocess.node._publish sends
                check_decoded(decode(frames_of(item.to_message(seq=seq))))
                seq += 1
        last: list[Window | DeviceEnd] = [*pre.flush(), *pre.take_ended()]
        for item in last:
            check_decoded(decode(frames_of(item.to_message(seq=seq))))

    yield check


PREPROCESS = Target(
    "preprocess_handler",
    hostile_streams(("raw", "label", "status", "window", "affect"), _base_stream),
    _preprocess_harness,
    "preprocess.Preprocessor push/expire/flush on hostile streams; every window and end marker it makes must decode",
)


@functools.lru_cache(maxsize=8)
def _store_stream(seed: int) -> tuple[Message, ...]:
    """A replayed wristband and the affect answers for it."""
    from tests.servers import affect_meta

    base = list(_base_stream(seed))
    t = base[0].t0_s
    answers = [
        Message(
            kind="affect",
            device="d1",
            modality="affect",
            seq=k,
            t0_s=t + 20 + 5 * k,
            fs_hz=0.0,
            meta=affect_meta(t + 20 + 5 * k, low_quality=k == 1),
        )
        for k in range(3)
    ]
    end = Message(kind="affect", device="d1", modality="affect", seq=3, t0_s=t + 40, fs_hz=0.0, meta={"event": "end"})
    return (*base[:-1], *answers, base[-1], end)


@contextlib.contextmanager
def _store_harness() -> Iterator[Callable[[Any], None]]:
    """The store node's own handler (``StoreNode._handle``) into a real SQLite file."""
    from storage.node import StoreNode
    from storage.sqlite import SqliteSink

    loop = asyncio.new_event_loop()
    with tempfile.TemporaryDirectory(prefix="m3sense-fuzz-") as tmp:
        count = [0]

        async def one(stream: list[list[bytes]]) -> None:
            count[0] += 1
            async with SqliteSink(Path(tmp) / f"c{count[0] % 4}.db") as sink:
                node, sub = StoreNode("tcp://127.0.0.1:9", sink), _receiver()
                for frames in stream:
                    msg = sub._accept(frames)
                    if msg is not None:
                        await node._handle(sub, msg)
                await sink.write(node.builder.flush())

        try:
            yield lambda stream: loop.run_until_complete(one(stream))
        finally:
            loop.close()


STORE = Target(
    "store_handler",
    hostile_streams(("raw", "status", "affect", "window", "label"), _store_stream),
    _store_harness,
    "storage.node.StoreNode._handle on hostile streams, into SQLite",
)


@functools.lru_cache(maxsize=8)
def _window_message(seed: int) -> Message:
    from tests.model_helpers import window

    return window(device="d1", t0=T0 + 5 * seed, seed=seed, labels={"stress": "stress"}).to_message(seq=seed)


@st.composite
def hostile_windows(draw: st.DrawFn) -> list[list[bytes]]:
    """A few window messages, each valid or with hostile fields (meta values, quality fields,
    arrays of any shape, dtype or value), then the device's end marker."""
    out = []
    for k in range(draw(st.integers(1, 2))):
        msg = replace(_window_message(draw(st.integers(0, 7))), seq=k)
        for _ in range(draw(st.integers(0, 3))):
            what = draw(st.sampled_from(["edit", "quality", "array"]))
            if what == "edit":
                msg = draw(hostile_edit(msg))
            elif what == "quality":
                q = dict(msg.meta["quality"]) if isinstance(msg.meta.get("quality"), dict) else {}
                q[draw(st.sampled_from([*q, "x"]))] = draw(JSON | HOSTILE_FLOATS.filter(math.isfinite))
                msg = replace(msg, meta={**msg.meta, "quality": q})
            else:
                name = draw(st.sampled_from([*msg.arrays, "x"]))
                a = draw(
                    arrays(max_dims=2, max_side=8)
                    | st.sampled_from(
                        [
                            np.full_like(msg.arrays.get(name, np.zeros(80)), np.nan),
                            np.full((1280,), 1e308),
                            np.zeros((80, 3)),
                            np.full((640, 3), -np.inf),
                        ]
                    )
                )
                msg = replace(msg, arrays={**msg.arrays, name: a})
        out.append(frames_of(msg))
    end = Message(
        kind="window", device="d1", modality="window", seq=len(out), t0_s=T0 + 60, fs_hz=0.0, meta={"event": "end"}
    )
    return [*out, frames_of(end)]


@contextlib.contextmanager
def _infer_harness() -> Iterator[Callable[[Any], None]]:
    """The infer node's path for each message, in its order (inference.node.serve): the meta
    check, the node's MicroBatcher, the shipped model's answers with fresh calibrations, and
    the affect message, which the bus must accept."""
    from inference.answer import Calibrations, load_answerer
    from inference.calibration import CalibrationConfig
    from inference.dataset import window_meta_problem
    from inference.node import MicroBatcher, is_end_marker
    from inference.predict import affect_meta

    answerer = load_answerer(None, backend="onnx", threads=1)

    def check(stream: list[list[bytes]]) -> None:
        calibrations = Calibrations(answerer.calibration_config or CalibrationConfig())
        batcher, sub = MicroBatcher(max_batch=4, max_wait_s=0.0), _receiver()
        for k, frames in enumerate(stream):
            msg = sub._accept(frames)
            if msg is None or (not is_end_marker(msg) and window_meta_problem(msg.meta) is not None):
                continue  # counted and dropped by the node
            for due in batcher.push(msg, float(k)):
                results = answerer.answer_windows(list(due.windows), calibrations) if due.windows else []
                for window, answers in zip(due.windows, results):
                    meta = affect_meta(window, answers, answerer.model_id)
                    check_decoded(
                        decode(
                            frames_of(
                                Message(
                                    kind="affect",
                                    device=window.device,
                                    modality="affect",
                                    seq=0,
                                    t0_s=meta["t_end"],
                                    fs_hz=0.0,
                                    meta=meta,
                                )
                            )
                        )
                    )

    yield check


INFER = Target(
    "infer_handler",
    hostile_windows(),
    _infer_harness,
    "inference: window meta check, MicroBatcher and the shipped model's answers on hostile windows",
)

TARGETS = (
    BUS_RANDOM,
    BUS_MUTATED,
    E4_EXPORTS,
    E4_ZIP_DAMAGED,
    BLE_DECODE,
    BLE_INGEST,
    RAW_LOG,
    PREPROCESS,
    STORE,
    INFER,
    DATASETS,
)


class TimeUp(Exception):
    """Raised in place of further cases once a campaign's time for a target is over."""


def run(target: Target, examples: int = EXAMPLES, counter: list[int] | None = None, until: float | None = None) -> None:
    """Run ``examples`` cases of ``target`` (each case counted in ``counter[0]``); a crash
    propagates as Hypothesis reports it: the shrunk case and its traceback. With ``until``
    (a ``time.perf_counter()`` value), cases after it raise :class:`TimeUp` instead of running."""
    import time

    with target.harness() as check:

        def case(value: Any) -> None:
            if until is not None and time.perf_counter() > until:
                raise TimeUp
            if counter is not None:
                counter[0] += 1
            check(value)

        given(target.strategy)(fuzz_settings(examples)(case))()
