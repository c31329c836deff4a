"""The wire format: one message = one multipart ZeroMQ frame list.

Frames: ``[topic, header, samples, *arrays]``.

- ``topic``: UTF-8, see :mod:`bus.topics` (the SUB filter matches on it).
- ``header``: compact JSON object, ``v`` (schema version), ``k`` kind, ``d`` device,
  ``m`` modality, ``s`` sequence number, ``t`` first-sample time (UTC, float seconds),
  ``f`` sample rate in Hz (0 for irregular or event streams), ``dt``/``sh`` dtype and shape
  of the samples, ``a`` name/dtype/shape of each extra array, ``x`` small JSON metadata.
- the array buffers themselves, raw little-endian bytes: sent without a copy and read back
  with ``np.frombuffer`` over the received frame.

No pickle: a peer can at worst send bytes that :func:`decode` rejects with
:class:`MalformedMessage`, whose ``reason`` is a short stable word for counting.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bus.topics import KINDS, RAW, parse_topic, topic_for

SCHEMA_VERSION = 1

#: dtypes that may cross the bus, by their wire name (always little-endian).
DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name).newbyteorder("<")
    for name in ("float64", "float32", "int64", "int32", "int16", "int8", "uint32", "uint16", "uint8", "bool")
}
_WIRE_NAME = {dt: name for name, dt in DTYPES.items()}
_MAX_NDIM = 4


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
    companions (a window's per-modality arrays); ``meta`` small JSON-able fields."""

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


def _wire_array(a: np.ndarray) -> tuple[np.ndarray, str]:
    dt = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
    name = _WIRE_NAME.get(np.dtype(dt).newbyteorder("<"))
    if name is None:
        raise TypeError(f"dtype {a.dtype} cannot cross the bus (allowed: {', '.join(DTYPES)})")
    return np.ascontiguousarray(a, dtype=DTYPES[name]), name


def encode(msg: Message) -> list[Any]:
    """Frames for ``send_multipart(..., copy=False)``; array frames are the contiguous arrays themselves (no copy)."""
    samples, sdt = _wire_array(np.asarray(msg.samples))
    extra = [(name, *_wire_array(np.asarray(a))) for name, a in msg.arrays.items()]
    header = {
        "v": msg.version,
        "k": msg.kind,
        "d": msg.device,
        "m": msg.modality,
        "s": msg.seq,
        "t": msg.t0_s,
        "f": msg.fs_hz,
        "dt": sdt,
        "sh": samples.shape,
    }
    if extra:
        header["a"] = [[name, dt, a.shape] for name, a, dt in extra]
    if msg.meta:
        header["x"] = msg.meta
    try:
        head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    except ValueError as exc:  # NaN/inf in t0, fs or meta
        raise ValueError(f"{msg.topic}: header must be finite JSON ({exc})") from None
    return [msg.topic.encode(), head, samples, *(a for _, a, _ in extra)]


def _buffer(frame: Any) -> memoryview | bytes:
    return frame.buffer if hasattr(frame, "buffer") else frame


def _read_array(frame: Any, dtype_name: Any, shape: Any, what: str) -> np.ndarray:
    if not isinstance(dtype_name, str) or dtype_name not in DTYPES:
        raise MalformedMessage("dtype", f"{what} dtype {dtype_name!r}")
    if (
        not isinstance(shape, list)
        or len(shape) > _MAX_NDIM
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise MalformedMessage("shape", f"{what} shape {shape!r}")
    dt = DTYPES[dtype_name]
    buf = _buffer(frame)
    expected = math.prod(shape) * dt.itemsize
    if len(buf) != expected:
        raise MalformedMessage("length", f"{what}: {len(buf)} bytes for shape {shape} of {dtype_name}")
    return np.frombuffer(buf, dtype=dt).reshape(shape)


def _field(header: dict, key: str, types: type | tuple[type, ...]) -> Any:
    value = header.get(key)
    if not isinstance(value, types) or isinstance(value, bool):
        raise MalformedMessage("header", f"field {key!r} is {value!r}")
    return value


def decode(frames: Sequence[Any]) -> Message:
    """Parse frames from ``recv_multipart`` (bytes or zmq.Frame); arrays view the frames.

    Raises :class:`MalformedMessage` for anything that is not a valid message of a
    schema version this code understands.
    """
    if len(frames) < 3:
        raise MalformedMessage("frames", f"{len(frames)} frames, need at least 3")
    try:
        topic = bytes(_buffer(frames[0])).decode()
        header = json.loads(bytes(_buffer(frames[1])))
    except (UnicodeDecodeError, ValueError):
        raise MalformedMessage("header", "topic or header is not UTF-8 JSON") from None
    if not isinstance(header, dict):
        raise MalformedMessage("header", "header is not a JSON object")
    version = _field(header, "v", int)
    if version != SCHEMA_VERSION:
        raise MalformedMessage("version", f"schema version {version}, this code reads {SCHEMA_VERSION}")
    kind = _field(header, "k", str)
    device = _field(header, "d", str)
    modality = _field(header, "m", str)
    seq = _field(header, "s", int)
    t0 = float(_field(header, "t", (int, float)))
    fs = float(_field(header, "f", (int, float)))
    if kind not in KINDS or seq < 0 or not math.isfinite(t0) or not (math.isfinite(fs) and fs >= 0):
        raise MalformedMessage("header", f"kind={kind!r} seq={seq} t0={t0} fs={fs}")
    try:
        expected_topic = topic_for(kind, device, modality if kind == RAW else None)
        parse_topic(topic)
    except ValueError as exc:
        raise MalformedMessage("topic", str(exc)) from None
    if topic != expected_topic:
        raise MalformedMessage("topic", f"frame topic {topic!r} but header says {expected_topic!r}")
    samples = _read_array(frames[2], header.get("dt"), header.get("sh"), "samples")
    specs = header.get("a", [])
    if not isinstance(specs, list) or len(specs) != len(frames) - 3:
        raise MalformedMessage("frames", f"{len(frames) - 3} array frames for {specs!r}")
    arrays: dict[str, np.ndarray] = {}
    for spec, frame in zip(specs, frames[3:]):
        if not (isinstance(spec, list) and len(spec) == 3 and isinstance(spec[0], str)) or spec[0] in arrays:
            raise MalformedMessage("header", f"array spec {spec!r}")
        arrays[spec[0]] = _read_array(frame, spec[1], spec[2], spec[0])
    meta = header.get("x", {})
    if not isinstance(meta, dict):
        raise MalformedMessage("header", "meta is not a JSON object")
    return Message(
        kind=kind, device=device, modality=modality, seq=seq, t0_s=t0, fs_hz=fs,
        samples=samples, arrays=arrays, meta=meta, version=version,
    )
