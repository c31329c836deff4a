"""E4 BLE packets: the GATT layout, pure decoders and their matching encoders.

Nothing here does I/O. The layouts follow the community reverse engineering (e4-facts.md
section 1, mostly confidence [L]); what the sources disagree on is a field of
:class:`Layout` with the best-agreed default, so a user with a real wristband can change
it from the command line instead of editing code:

- BVP 0x3EA1: 20 bytes read as one big-endian 160-bit string: 22 seven-bit two's-complement
  deltas (11 green/red pairs, green first) then a 6-bit tail. We read the tail as a packet
  counter modulo 64 (``bvp_counter``); the RE sources call it "possibly a counter".
- EDA 0x3EA8: 6 x uint24 big-endian skin resistance (ohm), ``µS = 1e6 / raw`` (raw 0 -> 0),
  then a 2-byte counter (byte order unknown: ``counter_byteorder``).
- TEMP 0x3EA6: 4 x uint16 little-endian, ``°C = raw * 0.02 + temp_offset_c`` (-275.54 from
  the RE tools' calibration; a thermopile would give -273.15), then 4 metadata bytes that
  nobody has decoded, so no counter.
- ACC 0x3EA3: int8 (x, y, z) triplets in 1/64 g, then a 2-byte counter.
- battery 0x3EB3: one byte, percent; button 0x3EB2: byte 0 == 1 is a press.

A packet of the wrong length is a :class:`DecodeError` (reason ``length``), never a guess:
a truncated or oversized notification is counted and dropped by the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from e4 import RATES_HZ

BASE_UUID = "0000{:04x}-0000-1000-8000-00805f9b34fb"


def uuid16(short: int) -> str:
    """The full 128-bit UUID string of a 16-bit Bluetooth UUID."""
    return BASE_UUID.format(short)


DEVICE_NAME = "Empatica E4"

#: service UUID -> its characteristics (name, short uuid, properties).
SERVICES: dict[int, tuple[tuple[str, int, tuple[str, ...]], ...]] = {
    0x3E70: (("command", 0x3E71, ("write",)),),
    0x3EA0: (
        ("bvp", 0x3EA1, ("notify",)),
        ("acc", 0x3EA3, ("notify",)),
        ("temp", 0x3EA6, ("notify",)),
        ("eda", 0x3EA8, ("notify",)),
    ),
    0x3EB0: (
        ("button", 0x3EB2, ("notify",)),
        ("battery", 0x3EB3, ("notify",)),
    ),
}

#: characteristic name -> full UUID.
CHARACTERISTICS: dict[str, str] = {name: uuid16(short) for chars in SERVICES.values() for name, short, _ in chars}
UUID_TO_CHAR: dict[str, str] = {u: name for name, u in CHARACTERISTICS.items()}

#: notify characteristics we subscribe to, periodic streams first.
STREAMS = ("bvp", "acc", "temp", "eda", "button", "battery")
PERIODIC_RATES_HZ = {c: RATES_HZ[c] for c in ("bvp", "acc", "temp", "eda")}

BVP_PACKET_BYTES = 20
BVP_PAIRS = 11
_COUNTER_BYTES = 2


class DecodeError(ValueError):
    """A notification that does not fit its layout; ``reason`` is one word for counters."""

    def __init__(self, char: str, reason: str, detail: str) -> None:
        super().__init__(f"{char}: {reason}: {detail}")
        self.char = char
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class Layout:
    """The uncertain parts of the protocol, with the best-agreed defaults (e4-facts 1.2-1.4)."""

    start_command: str = "time"  # "time": 0x01 + uint32 LE Unix seconds; otherwise a hex string (e.g. "02")
    temp_scale_c: float = 0.02
    temp_offset_c: float = -275.54
    temp_samples: int = 4
    temp_trailer_bytes: int = 4
    eda_samples: int = 6
    acc_samples: int = 6
    counter_byteorder: Literal["big", "little"] = "big"
    bvp_counter: bool = True
    eda_counter: bool = True
    acc_counter: bool = True

    def __post_init__(self) -> None:
        if self.start_command != "time":
            try:
                bytes.fromhex(self.start_command)
            except ValueError:
                raise ValueError(f"start command {self.start_command!r} is neither 'time' nor hex") from None
        if self.counter_byteorder not in ("big", "little"):
            raise ValueError(f"counter byte order {self.counter_byteorder!r}")
        for name in ("temp_samples", "eda_samples", "acc_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")

    def samples_per_packet(self, char: str) -> int:
        return {"bvp": BVP_PAIRS, "acc": self.acc_samples, "temp": self.temp_samples, "eda": self.eda_samples}[char]

    def packet_bytes(self, char: str) -> int:
        return {
            "bvp": BVP_PACKET_BYTES,
            "eda": 3 * self.eda_samples + _COUNTER_BYTES,
            "temp": 2 * self.temp_samples + self.temp_trailer_bytes,
            "acc": 3 * self.acc_samples + _COUNTER_BYTES,
            "battery": 1,
            "button": 20,
        }[char]

    def counter_modulus(self, char: str) -> int | None:
        """How counters of ``char`` wrap, or None where the layout carries no counter."""
        if char == "bvp":
            return 64 if self.bvp_counter else None
        if char == "eda":
            return 1 << 16 if self.eda_counter else None
        if char == "acc":
            return 1 << 16 if self.acc_counter else None
        return None


DEFAULT_LAYOUT = Layout()


@dataclass(frozen=True, slots=True, kw_only=True)
class Packet:
    """One decoded notification.

    ``values`` per characteristic: bvp int16 (11, 2) green/red deltas (device counts);
    eda float64 (n,) µS; temp float64 (n,) °C; acc int16 (n, 3) 1/64 g; battery float64 (1,)
    fraction 0-1; button bool (1,) pressed. ``counter`` is None where the layout has none.
    """

    char: str
    values: np.ndarray
    counter: int | None = None


def start_command(layout: Layout, unix_s: float) -> bytes:
    """The bytes written to 0x3E71 to start streaming."""
    if layout.start_command == "time":
        return b"\x01" + int(unix_s).to_bytes(4, "little")
    return bytes.fromhex(layout.start_command)


def _check_length(char: str, data: bytes, expected: int) -> None:
    if len(data) != expected:
        reason = "truncated" if len(data) < expected else "oversized"
        raise DecodeError(char, reason, f"{len(data)} bytes, layout says {expected}")


def _signed(value: int, bits: int) -> int:
    return value - (1 << bits) if value & (1 << (bits - 1)) else value


def decode_bvp(data: bytes, layout: Layout = DEFAULT_LAYOUT) -> Packet:
    _check_length("bvp", data, BVP_PACKET_BYTES)
    word = int.from_bytes(data, "big")
    tail = word & 0x3F
    fields = [_signed((word >> (160 - 7 * (i + 1))) & 0x7F, 7) for i in range(2 * BVP_PAIRS)]
    values = np.asarray(fields, dtype=np.int16).reshape(BVP_PAIRS, 2)
    return Packet(char="bvp", values=values, counter=tail if layout.bvp_counter else None)


def encode_bvp(pairs: np.ndarray, counter: int = 0) -> bytes:
    """``pairs``: (11, 2) green/red deltas, each in [-64, 63]; ``counter`` mod 64."""
    pairs = np.asarray(pairs)
    if pairs.shape != (BVP_PAIRS, 2) or pairs.min(initial=0) < -64 or pairs.max(initial=0) > 63:
        raise ValueError(f"BVP needs (11, 2) deltas in [-64, 63], got shape {pairs.shape}")
    word = 0
    for v in pairs.reshape(-1).tolist():
        word = (word << 7) | (int(v) & 0x7F)
    word = (word << 6) | (counter & 0x3F)
    return word.to_bytes(BVP_PACKET_BYTES, "big")


def _counter(data: bytes, layout: Layout) -> int:
    return int.from_bytes(data[-_COUNTER_BYTES:], layout.counter_byteorder)


def decode_eda(data: bytes, layout: Layout = DEFAULT_LAYOUT) -> Packet:
    _check_length("eda", data, layout.packet_bytes("eda"))
    raw = np.frombuffer(data, dtype=np.uint8, count=3 * layout.eda_samples).reshape(-1, 3).astype(np.int64)
    ohm = (raw[:, 0] << 16) | (raw[:, 1] << 8) | raw[:, 2]
    with np.errstate(divide="ignore"):
        us = np.where(ohm > 0, 1e6 / np.maximum(ohm, 1), 0.0)
    return Packet(char="eda", values=us, counter=_counter(data, layout) if layout.eda_counter else None)


def eda_to_raw(us: np.ndarray) -> np.ndarray:
    """µS -> the uint24 resistance the E4 sends (0 µS -> 0: open circuit)."""
    us = np.asarray(us, dtype=np.float64)
    with np.errstate(divide="ignore"):
        raw = np.where(us > 0, np.rint(1e6 / np.where(us > 0, us, 1.0)), 0)
    return np.clip(raw, 0, (1 << 24) - 1).astype(np.int64)


def encode_eda(us: Sequence[float] | np.ndarray, counter: int = 0, layout: Layout = DEFAULT_LAYOUT) -> bytes:
    raw = eda_to_raw(np.asarray(us))
    if raw.shape != (layout.eda_samples,):
        raise ValueError(f"EDA needs {layout.eda_samples} samples, got {raw.shape}")
    body = b"".join(int(r).to_bytes(3, "big") for r in raw)
    return body + (counter % (1 << 16)).to_bytes(_COUNTER_BYTES, layout.counter_byteorder)


def decode_temp(data: bytes, layout: Layout = DEFAULT_LAYOUT) -> Packet:
    _check_length("temp", data, layout.packet_bytes("temp"))
    raw = np.frombuffer(data, dtype="<u2", count=layout.temp_samples)
    return Packet(char="temp", values=raw * layout.temp_scale_c + layout.temp_offset_c)


def encode_temp(celsius: Sequence[float] | np.ndarray, layout: Layout = DEFAULT_LAYOUT) -> bytes:
    c = np.asarray(celsius, dtype=np.float64)
    if c.shape != (layout.temp_samples,):
        raise ValueError(f"TEMP needs {layout.temp_samples} samples, got {c.shape}")
    raw = np.clip(np.rint((c - layout.temp_offset_c) / layout.temp_scale_c), 0, 0xFFFF).astype("<u2")
    return raw.tobytes() + bytes(layout.temp_trailer_bytes)


def decode_acc(data: bytes, layout: Layout = DEFAULT_LAYOUT) -> Packet:
    _check_length("acc", data, layout.packet_bytes("acc"))
    xyz = np.frombuffer(data, dtype=np.int8, count=3 * layout.acc_samples).reshape(-1, 3).astype(np.int16)
    return Packet(char="acc", values=xyz, counter=_counter(data, layout) if layout.acc_counter else None)


def encode_acc(xyz: np.ndarray, counter: int = 0, layout: Layout = DEFAULT_LAYOUT) -> bytes:
    xyz = np.asarray(xyz)
    if xyz.shape != (layout.acc_samples, 3) or xyz.min() < -128 or xyz.max() > 127:
        raise ValueError(f"ACC needs ({layout.acc_samples}, 3) int8 counts, got {xyz.shape}")
    return xyz.astype(np.int8).tobytes() + (counter % (1 << 16)).to_bytes(_COUNTER_BYTES, layout.counter_byteorder)


def decode_battery(data: bytes, layout: Layout = DEFAULT_LAYOUT) -> Packet:
    _check_length("battery", data, 1)
    if data[0] > 100:
        raise DecodeError("battery", "range", f"{data[0]} % is above 100")
    return Packet(char="battery", values=np.array([data[0] / 100.0]))


def encode_battery(fraction: float) -> bytes:
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"battery fraction {fraction} outside 0..1")
    return bytes([round(fraction * 100)])


def decode_button(data: bytes, layout: Layout = DEFAULT_LAYOUT) -> Packet:
    _check_length("button", data, 20)
    return Packet(char="button", values=np.array([data[0] == 1]))


def encode_button(pressed: bool = True) -> bytes:
    return bytes([1 if pressed else 0]) + bytes(19)


_DECODERS = {
    "bvp": decode_bvp,
    "eda": decode_eda,
    "temp": decode_temp,
    "acc": decode_acc,
    "battery": decode_battery,
    "button": decode_button,
}


def decode(char: str, data: bytes, layout: Layout = DEFAULT_LAYOUT) -> Packet:
    """Decode one notification of characteristic ``char`` (a name from :data:`STREAMS`)."""
    try:
        decoder = _DECODERS[char]
    except KeyError:
        raise DecodeError(char, "unknown", f"no decoder for characteristic {char!r}") from None
    return decoder(bytes(data), layout)


class BvpIntegrator:
    """Turns BVP delta packets into a running signal (device counts).

    The deltas are differences from the previous sample, so the level is only known up to
    a constant: it starts at 0 on each connection, and a lost packet shifts the level of
    everything after it by the sum of its deltas (a step that the preprocess band-pass
    removes, as it removes the arbitrary start level). The RE tools' own filter chain is a surrogate
    whose output is not comparable to Empatica's BVP either (e4-facts 1.3), so m3sense
    publishes the integrated green channel and lets the preprocess stage band-pass it.
    """

    def __init__(self) -> None:
        self._level = 0

    def reset(self) -> None:
        self._level = 0

    def push(self, packet: Packet) -> np.ndarray:
        """float64 (11,) BVP values of one packet."""
        green = np.cumsum(packet.values[:, 0], dtype=np.int64) + self._level
        self._level = int(green[-1])
        return green.astype(np.float64)


def bvp_to_deltas(levels: np.ndarray, start_level: int = 0) -> tuple[np.ndarray, int]:
    """Integer deltas (clamped to 7 bits) that make an integrator follow ``levels``.

    Clamping carries the error forward, so a steep edge is spread over a few samples rather
    than lost. Returns the deltas and the level actually reached (the encoder's state).
    """
    out = np.empty(len(levels), dtype=np.int16)
    level = start_level
    for i, target in enumerate(np.rint(levels).astype(np.int64).tolist()):
        d = max(-64, min(63, target - level))
        out[i] = d
        level += d
    return out, level
