"""The window ledger of a store worker group (``store --workers-group NAME`` on NATS), partition by
partition in a JetStream key-value bucket, so the next owner of a partition counts on from where
the last one flushed.

Why: a store counts the windows that never reached it from each device's last stored position
(:mod:`storage.positions`). One store keeps those in a file; in a group, the devices of a
partition move to another worker when theirs dies or the group changes, and that worker, with no
position for them, would count every window numbered below the first it gets as lost. So each
worker puts, after each sink flush and before acknowledging what the flush covered, the
positions of each partition it owns whose devices moved (``p.<NN>`` in
``m3sense-store-<group>-ledger``); a worker loads a partition's entry before it handles the
first message of a partition it took. A worker forgets a partition's entry the moment it gives
the partition up; a put still in flight then (or from a worker whose lease ran out while it was
stalled) is older than the new owner's, which names the revision it saw and, finding another,
puts its own positions over it: the owner's word is the one that stays.
"""

from __future__ import annotations

import logging
from typing import Any

import nats.errors
import nats.js.errors
from nats.js import api

from bus.nats_backend import STREAM_MAX_AGE_S, _replicas, while_electing
from bus.partitions import token

log = logging.getLogger(__name__)


def bucket_name(group_bucket: str) -> str:
    """The ledger bucket beside a group's lease bucket (``m3sense-store-<group>``)."""
    return f"{group_bucket}-ledger"


class PartitionLedgers:
    """``await load(p)`` -> the JSON of partition ``p``'s positions (None: none kept);
    ``await save(p, text)``; ``release(p)`` once ``p`` is another worker's."""

    def __init__(self, kv: Any) -> None:
        self.kv = kv
        self._revision: dict[int, int] = {}  # per owned partition: the revision last read or written (0: none)

    @classmethod
    async def open(cls, js: Any, nc: Any, group_bucket: str) -> PartitionLedgers:
        name = bucket_name(group_bucket)
        config = api.KeyValueConfig(bucket=name, ttl=STREAM_MAX_AGE_S, history=1, replicas=_replicas(nc))
        try:
            return cls(await js.create_key_value(config=config))
        except nats.js.errors.BadRequestError:  # made by another worker of the group
            return cls(await js.key_value(name))

    async def load(self, p: int) -> str | None:
        try:
            entry = await while_electing(lambda: self.kv.get(f"p.{token(p)}"))
        except nats.js.errors.KeyNotFoundError:
            self._revision[p] = 0
            return None
        self._revision[p] = entry.revision or 0
        return (entry.value or b"").decode(errors="replace") or None

    def loaded(self, p: int) -> bool:
        return p in self._revision

    def release(self, p: int) -> None:
        self._revision.pop(p, None)

    async def save(self, p: int, text: str) -> bool:
        """Put ``p``'s positions (this worker owns ``p``: it loaded it and has not released it)."""
        if p not in self._revision:
            return False
        key = f"p.{token(p)}"
        try:
            try:
                self._revision[p] = await self._put(key, text, self._revision[p])
            except nats.js.errors.KeyWrongLastSequenceError:  # a stale put of the last owner came after ours
                log.warning("store: partition %d's ledger was written by its last owner late; written again", p)
                self._revision[p] = await self._put(key, text, await self._current_revision(key))
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("store: could not save partition %d's ledger (%s); a takeover may over-count losses", p, exc)
            return False
        return True

    async def _put(self, key: str, text: str, last: int) -> int:
        if last:
            return await self.kv.update(key, text.encode(), last=last)
        return await self.kv.create(key, text.encode())

    async def _current_revision(self, key: str) -> int:
        try:
            return (await self.kv.get(key)).revision or 0
        except nats.js.errors.KeyNotFoundError:
            return 0
