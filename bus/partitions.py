"""Devices into a fixed number of partitions, and partitions among a group's live workers (pure).

Why fixed: every publisher (a replay, a BLE gateway on another host) writes a device's partition
into the subject without asking anyone, so the number must be the same everywhere and forever for
a stream: :data:`PARTITIONS`. The partition is CRC-32 of the device id (UTF-8) modulo that number:
stable across processes, hosts and Python versions (unlike ``hash()``), and spreading ids evenly.

Why assignment by rank: every worker of a group sees the same members (their lease records), so
each computes the same split without talking to the others; partition ``p`` goes to the member of
rank ``p mod n`` in name order. When a member joins or dies the split changes by itself.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

#: partitions of the device space; a subject carries the device's as two digits (``m3s.07.raw…``)
PARTITIONS = 16
_GROUP = re.compile(r"[A-Za-z0-9_-]{1,32}")


def partition_of(device: str) -> int:
    """The device's partition, ``0 <= p < PARTITIONS``."""
    return zlib.crc32(device.encode("utf-8", "surrogatepass")) % PARTITIONS


def token(partition: int) -> str:
    """A partition as a subject token (two digits: never a topic kind)."""
    return f"{partition:02d}"


def is_token(text: str) -> bool:
    return len(text) == 2 and text.isdigit()


def check_group(name: str) -> str:
    """A worker group name, usable in consumer names and KV keys; ValueError otherwise."""
    if not _GROUP.fullmatch(name):
        raise ValueError(f"worker group {name!r} must be 1 to 32 letters, digits, '-' or '_'")
    return name


def assigned(members: Sequence[str], me: str, partitions: int = PARTITIONS) -> set[int]:
    """The partitions ``me`` should own among ``members`` (all live workers, ``me`` included)."""
    ranked = sorted(set(members) | {me})
    rank = ranked.index(me)
    return {p for p in range(partitions) if p % len(ranked) == rank}


def describe(owned: set[int]) -> str:
    """``0,1,2`` for messages; ``none`` when empty."""
    return ",".join(str(p) for p in sorted(owned)) or "none"
