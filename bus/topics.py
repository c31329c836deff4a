"""Topic names of the bus.

SUB sockets match by byte prefix, so every topic ends in ``/``: a subscriber to
``raw/bvp/dev1/`` must not also receive ``raw/bvp/dev10/``. Raw streams put the
modality first (``raw/<modality>/<device>/``) so one prefix selects a modality
across all devices; the other kinds are per device (``<kind>/<device>/``).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

RAW = "raw"
WINDOW = "window"
AFFECT = "affect"
LABEL = "label"
STATUS = "status"
SYNC = "_sync"  # publisher flush markers; never of interest to stages
STORED = "stored"  # the store's word that a device is in the sink up to its end (what `m3sense run` waits for)
KINDS = (RAW, WINDOW, AFFECT, LABEL, STATUS, SYNC, STORED)

MODALITIES = ("bvp", "eda", "temp", "acc", "ibi", "hr", "battery", "tag")

_NAME = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")


def valid_name(name: str) -> bool:
    """Device ids and modalities are single topic segments: no ``/``, no spaces."""
    return bool(_NAME.match(name))


@functools.lru_cache(maxsize=65536)
def topic_for(kind: str, device: str, modality: str | None = None) -> str:
    """The topic string of a message; raises ValueError on a name that cannot be a segment."""
    if kind not in KINDS:
        raise ValueError(f"unknown topic kind {kind!r}")
    if not valid_name(device):
        raise ValueError(f"device id {device!r} must match {_NAME.pattern}")
    if kind == RAW:
        if modality is None or not valid_name(modality):
            raise ValueError(f"raw topics need a modality, got {modality!r}")
        return f"{RAW}/{modality}/{device}/"
    return f"{kind}/{device}/"


@dataclass(frozen=True, slots=True, kw_only=True)
class Topic:
    kind: str
    device: str
    modality: str | None


def parse_topic(topic: str) -> Topic:
    """Split a topic into its parts; raises ValueError if it is not one of ours."""
    parts = topic.split("/")
    if not parts or parts[-1] != "":
        raise ValueError(f"topic {topic!r} must end with '/'")
    parts = parts[:-1]
    if len(parts) == 3 and parts[0] == RAW:
        _, modality, device = parts
        if valid_name(modality) and valid_name(device):
            return Topic(kind=RAW, device=device, modality=modality)
    elif len(parts) == 2 and parts[0] in KINDS and parts[0] != RAW and valid_name(parts[1]):
        return Topic(kind=parts[0], device=parts[1], modality=None)
    raise ValueError(f"topic {topic!r} is not kind/device/ or raw/modality/device/")
