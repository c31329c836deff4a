"""The bus: topics, the message codec, sequence bookkeeping, the hub and asyncio sockets.

The only code every stage shares; stages import what is listed in ``__all__``.
"""

from bus.endpoints import DEFAULT_BUS, BadBusAddress, HubEndpoints, free_bus_address, hub_endpoints
from bus.hub import Hub
from bus.message import DTYPES, SCHEMA_VERSION, MalformedMessage, Message, decode, encode
from bus.sequence import BusStats, GapTracker, SequenceCounter
from bus.sockets import Publisher, Subscriber
from bus.topics import AFFECT, KINDS, LABEL, MODALITIES, RAW, STATUS, WINDOW, Topic, parse_topic, topic_for, valid_name

__all__ = [
    "AFFECT",
    "DEFAULT_BUS",
    "DTYPES",
    "KINDS",
    "LABEL",
    "MODALITIES",
    "RAW",
    "SCHEMA_VERSION",
    "STATUS",
    "WINDOW",
    "BadBusAddress",
    "BusStats",
    "GapTracker",
    "Hub",
    "HubEndpoints",
    "MalformedMessage",
    "Message",
    "Publisher",
    "SequenceCounter",
    "Subscriber",
    "Topic",
    "decode",
    "encode",
    "free_bus_address",
    "hub_endpoints",
    "parse_topic",
    "topic_for",
    "valid_name",
]
