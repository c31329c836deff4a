"""The wire format: one message = one multipart ZeroMQ frame list.

Frames: ``[topic, header, samples, *arrays]``.

- ``topic``: UTF-8, see :mod:`bus.topics`. It names the kind, the modality (raw only) and
  the device, so the header does not repeat them; the SUB filter matches on it.
- ``header``: a fixed little-endian struct, then an optional JSON tail:

  ====== ====== ==========================================================
  offset type   field
  ====== ====== ==========================================================
  0      u8     schema version (:data:`SCHEMA_VERSION`)
  1      u8     dtype code of the samples (index into :data:`DTYPE_CODES`)
  2      u8     number of dimensions of the samples (0 to 4)
  3      u8     flags: bit 0 set when a JSON tail follows the dimensions
  4      i64    sequence number on this topic
  12     f64    time of the first sample, Unix seconds UTC
  20     f64    sample rate in Hz (0 for irregular and event streams)
  28     u64    incarnation of the publisher (version 2 on; random per process, never 0)
  36     u32[n] the samples' dimensions
  ...    JSON   ``{"a": [[name, dtype, shape], ...], "x": {metadata}}``
  ====== ====== ==========================================================

- the array buffers themselves, raw little-endian bytes: handed to ZeroMQ without a copy
  and read back as read-only ``np.frombuffer`` views over the received frame (no second copy).

The incarnation tells a restarted publisher from the one before it: its sequence numbers
start again at 0, and a receiver that compared numbers alone would take them for late
duplicates and miss the restart. Version 1 headers (no incarnation, dimensions at 28) still
decode, with incarnation 0 ("unknown"); a version-1 reader refuses version 2 as ``version``,
counted and logged once, so a mixed deployment fails loudly rather than silently.

The binary header keeps the per-message cost of the bus close to bare pyzmq (see
``bench/bench_bus.py``); metadata that only some messages carry (a window's quality, a
label's interval) rides in the JSON tail. No pickle: a peer can at worst send bytes that
:func:`decode` rejects with :class:`MalformedMessage`, whose ``reason`` is a short stable
word for counting.
"""

from __future__ import annotations

import functools
import json
import math
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bus.topics import KINDS, RAW, parse_topic, topic_for

SCHEMA_VERSION = 2
_READABLE_VERSIONS = (1, 2)

#: dtypes that may cross the bus; the position is the wire code (always little-endian).
DTYPE_CODES = ("float64", "float32", "int64", "int32", "int16", "int8", "uint32", "uint16", "uint8", "bool")
DTYPES: dict[str, np.dtype] = {name: np.dtype(name).newbyteorder("<") for name in DTYPE_CODES}
_CODE = {DTYPES[name]: i for i, name in enumerate(DTYPE_CODES)}
_BY_CODE = tuple(DTYPES[name] for name in DTYPE_CODES)
_MAX_NDIM = 4
_FIXED_V1 = struct.Struct("<BBBBqdd")
_FIXED = struct.Struct("<BBBBqddQ")
#: bytes before the dimensions in a header of the current version
HEADER_SIZE = _FIXED.size
_DIMS = tuple(struct.Struct(f"<{n}I") for n in range(_MAX_NDIM + 1))
_HAS_TAIL = 1
#: Bounds a well-formed message stays far inside; what exceeds them is hostile or broken, and
#: rejecting it here keeps every stage's handlers free of recursion, overflow and huge buffers.
MAX_TAIL_BYTES = 64 * 1024  # a window's or affect answer's metadata is under 2 KiB
MAX_TAIL_DEPTH = 16  # the deepest real tail is 3 levels
MAX_TIME_S = 2.0**33  # Unix seconds, about the year 2242 (0 is allowed: tests, relative clocks)
MIN_RATE_HZ, MAX_RATE_HZ = 1e-3, 1e4  # a positive rate outside these is no wearable's
_MAX_INT_DIGITS = 19  # JSON integers must fit an int64
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_OPEN, _CLOSE = np.frombuffer(b"[{", np.uint8), np.frombuffer(b"]}", np.uint8)


class MalformedMessage(ValueError):
    """A message that is not ours or is damaged. ``reason`` is one word for counters."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _empty() -> np.ndarray:
    return np.zeros(0, dtype=np.float64)


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """One bus message. ``samples`` is the primary payload; ``arrays`` carries named
    companions (a window's per-modality arrays); ``meta`` small JSON-able fields.
    For kinds other than ``raw`` the modality is the kind itself."""

    kind: str
    device: str
    modality: str
    seq: int
    t0_s: float
    fs_hz: float
    samples: np.ndarray = field(default_factory=_empty)
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)
    version: int = SCHEMA_VERSION
    #: the sending process's incarnation (0: not stamped yet, or a version-1 sender)
    incarnation: int = 0

    @property
    def topic(self) -> str:
        return topic_for(self.kind, self.device, self.modality if self.kind == RAW else None)

    @property
    def n(self) -> int:
        """Number of samples (rows of ``samples``)."""
        return int(self.samples.shape[0]) if self.samples.ndim else 1

    def sample_times(self) -> np.ndarray:
        """Timestamps of the samples (s): ``t0 + k / fs``; undefined for irregular streams."""
        if self.fs_hz <= 0:
            raise ValueError(f"{self.topic} is irregular (fs=0): samples carry no implied times")
        return self.t0_s + np.arange(self.n) / self.fs_hz


def _wire_array(a: np.ndarray) -> tuple[np.ndarray, int]:
    code = _CODE.get(a.dtype)
    if code is not None and a.flags.c_contiguous:
        return a, code  # the common case: native little-endian and contiguous, sent as is
    code = _CODE.get(a.dtype.newbyteorder("<"))
    if code is None:
        raise TypeError(f"dtype {a.dtype} cannot cross the bus (allowed: {', '.join(DTYPE_CODES)})")
    if a.ndim > _MAX_NDIM:
        raise ValueError(f"arrays of more than {_MAX_NDIM} dimensions cannot cross the bus")
    return np.ascontiguousarray(a, dtype=_BY_CODE[code]), code


def encode(msg: Message, incarnation: int | None = None) -> list[Any]:
    """Frames for ``send_multipart(..., copy=False)``; array frames are the contiguous arrays themselves.
    ``incarnation`` (a publisher's own) replaces the message's when given."""
    samples, code = _wire_array(np.asarray(msg.samples))
    if samples.ndim > _MAX_NDIM:
        raise ValueError(f"arrays of more than {_MAX_NDIM} dimensions cannot cross the bus")
    if msg.kind != RAW and msg.modality != msg.kind:
        raise ValueError(f"a {msg.kind} message's modality must be {msg.kind!r}, got {msg.modality!r}")
    if not (math.isfinite(msg.t0_s) and math.isfinite(msg.fs_hz) and msg.fs_hz >= 0):
        raise ValueError(f"{msg.topic}: t0 and fs must be finite (fs >= 0), got {msg.t0_s}, {msg.fs_hz}")
    extra = [(name, *_wire_array(np.asarray(a))) for name, a in msg.arrays.items()]
    tail = b""
    if extra or msg.meta:
        doc: dict[str, Any] = {}
        if extra:
            doc["a"] = [[name, DTYPE_CODES[c], list(a.shape)] for name, a, c in extra]
        if msg.meta:
            doc["x"] = msg.meta
        try:
            tail = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
        except ValueError as exc:
            raise ValueError(f"{msg.topic}: metadata must be finite JSON ({exc})") from None
    flags = _HAS_TAIL if tail else 0
    if msg.version == 1:
        head = _FIXED_V1.pack(1, code, samples.ndim, flags, msg.seq, msg.t0_s + 0.0, msg.fs_hz + 0.0)
    else:
        inc = msg.incarnation if incarnation is None else incarnation
        if not 0 <= inc < 2**64:
            raise ValueError(f"{msg.topic}: incarnation {inc} does not fit a u64")
        head = _FIXED.pack(msg.version, code, samples.ndim, flags, msg.seq, msg.t0_s + 0.0, msg.fs_hz + 0.0, inc)
    head += _DIMS[samples.ndim].pack(*samples.shape) + tail
    return [msg.topic.encode(), head, samples, *(a for _, a, _ in extra)]


def _buffer(frame: Any) -> memoryview | bytes:
    return frame if type(frame) is bytes else frame.buffer


def _array(frame: Any, dt: np.dtype, shape: Sequence[int], what: str) -> np.ndarray:
    buf = _buffer(frame)
    expected = math.prod(shape) * dt.itemsize
    if len(buf) != expected:
        raise MalformedMessage("length", f"{what}: {len(buf)} bytes for shape {tuple(shape)} of {dt}")
    try:
        return np.frombuffer(buf, dtype=dt).reshape(shape)
    except ValueError:  # found by fuzzing: an empty shape whose other sides overflow numpy's size
        raise MalformedMessage("shape", f"{what}: shape {tuple(shape)} of {dt}") from None


@functools.lru_cache(maxsize=65536)
def _topic_parts(topic: bytes) -> tuple[str, str, str]:
    """(kind, device, modality) named by a topic; ValueError if it is not one of ours."""
    parts = parse_topic(topic.decode())
    return parts.kind, parts.device, parts.modality or parts.kind


def _tail_arrays(doc: dict, frames: Sequence[Any]) -> dict[str, np.ndarray]:
    specs = doc.get("a", [])
    if type(specs) is not list or len(specs) != len(frames):
        raise MalformedMessage("frames", f"{len(frames)} array frames for {specs!r}")
    arrays: dict[str, np.ndarray] = {}
    for spec, frame in zip(specs, frames):
        if not (type(spec) is list and len(spec) == 3 and type(spec[0]) is str) or spec[0] in arrays:
            raise MalformedMessage("header", f"array spec {spec!r}")
        name, dtype_name, shape = spec
        dt = DTYPES.get(dtype_name) if type(dtype_name) is str else None
        if dt is None:
            raise MalformedMessage("dtype", f"{name} dtype {dtype_name!r}")
        if type(shape) is not list or len(shape) > _MAX_NDIM or not all(type(d) is int and d >= 0 for d in shape):
            raise MalformedMessage("shape", f"{name} shape {shape!r}")
        arrays[name] = _array(frame, dt, shape, name)
    return arrays


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise MalformedMessage("json_number", f"a {len(text)}-digit integer in the JSON tail")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise MalformedMessage("json_number", f"{text[:32]} in the JSON tail")
    return value


def _no_constant(text: str) -> float:
    raise MalformedMessage("json_number", f"{text} in the JSON tail")


def _json_tail(tail: bytes) -> Any:
    """The tail parsed, after checking what ``json.loads`` cannot bound: size, nesting depth
    (measured on the bytes with strings blanked, so nothing recurses), and numbers that no
    stage could use (non-finite floats, integers beyond int64)."""
    if len(tail) > MAX_TAIL_BYTES:
        raise MalformedMessage("json_size", f"{len(tail)}-byte JSON tail, at most {MAX_TAIL_BYTES}")
    if tail.count(b"[") + tail.count(b"{") > MAX_TAIL_DEPTH:  # else it cannot nest deeper
        b = np.frombuffer(_JSON_STRING.sub(b'""', tail), np.uint8)
        depth = np.cumsum(np.isin(b, _OPEN).astype(np.int32) - np.isin(b, _CLOSE))
        if depth.size and depth.max() > MAX_TAIL_DEPTH:
            raise MalformedMessage("json_depth", f"JSON tail nested {depth.max()} deep, at most {MAX_TAIL_DEPTH}")
    try:
        return json.loads(tail, parse_int=_bounded_int, parse_float=_finite_float, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, MalformedMessage):
            raise
        raise MalformedMessage("header", "the header's JSON tail is not UTF-8 JSON") from None


def decode(frames: Sequence[Any]) -> Message:
    """Parse frames from ``recv_multipart`` (bytes or zmq.Frame); arrays view the frames.

    Raises :class:`MalformedMessage` for anything that is not a valid message of a
    schema version this code understands.
    """
    if len(frames) < 3:
        raise MalformedMessage("frames", f"{len(frames)} frames, need at least 3")
    try:
        kind, device, modality = _topic_parts(bytes(_buffer(frames[0])))
    except (UnicodeDecodeError, ValueError):
        raise MalformedMessage("topic", "the topic is not kind/device/ or raw/modality/device/") from None
    head = bytes(_buffer(frames[1]))
    if len(head) < _FIXED_V1.size:
        raise MalformedMessage("header", f"{len(head)}-byte header, need at least {_FIXED_V1.size}")
    version = head[0]
    if version not in _READABLE_VERSIONS:
        raise MalformedMessage("version", f"schema version {version}, this code reads {_READABLE_VERSIONS}")
    fixed = _FIXED if version == 2 else _FIXED_V1
    if len(head) < fixed.size:
        raise MalformedMessage("header", f"{len(head)}-byte header, need at least {fixed.size}")
    version, code, ndim, flags, seq, t0, fs, *inc = fixed.unpack_from(head)
    incarnation = inc[0] if inc else 0
    if code >= len(_BY_CODE):
        raise MalformedMessage("dtype", f"samples dtype code {code}")
    if ndim > _MAX_NDIM or len(head) < fixed.size + 4 * ndim:
        raise MalformedMessage("shape", f"{ndim} dimensions in a {len(head)}-byte header")
    if seq < 0 or not math.isfinite(t0) or not (math.isfinite(fs) and fs >= 0) or flags & ~_HAS_TAIL:
        raise MalformedMessage("header", f"seq={seq} t0={t0} fs={fs} flags={flags}")
    if any(x == 0 and math.copysign(1.0, x) < 0 for x in (t0, fs)):  # the sender writes no -0.0: damage
        raise MalformedMessage("header", f"a negative zero in t0={t0} or fs={fs}")
    if not 0 <= t0 < MAX_TIME_S:
        raise MalformedMessage("time", f"t0={t0} is not a Unix time in [0, {MAX_TIME_S:.0f})")
    if fs and not MIN_RATE_HZ <= fs <= MAX_RATE_HZ:
        raise MalformedMessage("rate", f"fs={fs} Hz outside [{MIN_RATE_HZ}, {MAX_RATE_HZ}]")
    end = fixed.size + 4 * ndim
    shape = _DIMS[ndim].unpack_from(head, fixed.size)
    if fs and t0 + (shape[0] if ndim else 1) / fs >= MAX_TIME_S:  # the last sample too (found by fuzzing:
        # a chunk ending past the bound made preprocess publish an end marker the bus refused)
        raise MalformedMessage("time", f"samples from t0={t0} at {fs} Hz end after {MAX_TIME_S:.0f}")
    samples = _array(frames[2], _BY_CODE[code], shape, "samples")
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {}
    if flags & _HAS_TAIL:
        doc = _json_tail(head[end:])
        if type(doc) is not dict or type(doc.get("x", {})) is not dict:
            raise MalformedMessage("header", "the JSON tail is not an object with an object 'x'")
        arrays = _tail_arrays(doc, frames[3:])
        meta = doc.get("x", {})
    elif len(head) != end or len(frames) != 3:
        raise MalformedMessage("frames", f"{len(frames)} frames and {len(head) - end} stray header bytes")
    return Message(
        kind=kind,
        device=device,
        modality=modality,
        seq=seq,
        t0_s=t0,
        fs_hz=fs,
        samples=samples,
        arrays=arrays,
        meta=meta,
        version=version,
        incarnation=incarnation,
    )


__all__ = [
    "DTYPES",
    "DTYPE_CODES",
    "HEADER_SIZE",
    "KINDS",
    "SCHEMA_VERSION",
    "MalformedMessage",
    "Message",
    "decode",
    "encode",
]
