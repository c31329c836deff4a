"""What the MQTT sink publishes, as topics and JSON payloads (pure: records in, messages out).

Topic layout (``<prefix>`` is ``m3sense`` unless the SINK says ``prefix=``; every message
QoS 1; all but none retained, so a client that subscribes later sees the current state):

- ``<prefix>/status``: ``online`` / ``offline``, the store's availability (its MQTT Last
  Will is ``offline``, so a killed store shows offline);
- ``<prefix>/<device>/availability``: ``online`` from the device's first record or a
  ``start``/``connected`` status, ``offline`` after ``end``/``disconnected`` and when the store stops;
- ``<prefix>/<device>/<task>/state``: the latest window of the task, ``{"t", "label",
  "confidence", "status", "off_wrist", "motion", "missing_fraction", "probs", "model", "source"}``
  (``label``/``confidence`` null when the window has no answer; ``status`` says why);
- ``<prefix>/<device>/physio``: the latest 1 Hz values, ``{"t", "eda_us", "temp_c", "hr_bpm",
  "hr_device_bpm"}`` (the signals the device has sent so far);
- ``<prefix>/<device>/device``: ``{"t", "event", "battery", "on_wrist"}``: the latest status
  event, battery fraction (0..1) and on-wrist state (from ``on_wrist`` status events, or
  from the windows' ``off_wrist`` quality flag where no such event comes, as in a replay);
- ``<prefix>/<device>/alert``: the latest alert event ``{"t", "rule", "task", "event",
  "confidence", "text"}``;
- ``<discovery>/<component>/m3sense_<device>_<key>/config``: Home Assistant MQTT discovery,
  one config per entity, published when the device first sends what the entity shows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from storage.records import AffectRecord, AlertRecord, PhysioRecord, Record, StatusRecord

ONLINE, OFFLINE = "online", "offline"
_OFFLINE_EVENTS = ("end", "disconnected")

#: physio signal -> (entity key, name, unit, device_class)
PHYSIO_ENTITIES = {
    "eda_us": ("eda", "EDA", "µS", None),
    "temp_c": ("skin_temperature", "Skin temperature", "°C", "temperature"),
    "hr_bpm": ("heart_rate", "Heart rate", "bpm", None),
    "hr_device_bpm": ("heart_rate_device", "Heart rate (device)", "bpm", None),
}


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message. ``records``: how many records it carries (their fate is its fate);
    ``affect``: how many of them are affect records; ``control``: discovery or availability,
    never evicted from a full buffer (they are few, and republished on every reconnect)."""

    topic: str
    payload: bytes
    retain: bool = True
    records: int = 0
    affect: int = 0
    control: bool = False


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def entity_id(device: str) -> str:
    """A device id as Home Assistant's discovery topics allow it (``[A-Za-z0-9_-]``)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", device)


@dataclass(frozen=True, slots=True)
class Layout:
    prefix: str = "m3sense"
    discovery: str = "homeassistant"  # "" for no discovery

    @property
    def store_availability(self) -> str:
        return f"{self.prefix}/status"

    def availability(self, device: str) -> str:
        return f"{self.prefix}/{device}/availability"

    def state(self, device: str, task: str) -> str:
        return f"{self.prefix}/{device}/{task}/state"

    def physio(self, device: str) -> str:
        return f"{self.prefix}/{device}/physio"

    def device_info(self, device: str) -> str:
        return f"{self.prefix}/{device}/device"

    def alert(self, device: str) -> str:
        return f"{self.prefix}/{device}/alert"

    def config_topic(self, component: str, device: str, key: str) -> str:
        return f"{self.discovery}/{component}/m3sense_{entity_id(device)}_{key}/config"


def state_payload(r: AffectRecord) -> dict[str, Any]:
    return {
        "t": r.time_s,
        "label": r.label,
        "confidence": r.confidence,
        "status": r.status,
        "off_wrist": r.off_wrist,
        "motion": r.motion,
        "missing_fraction": r.missing_fraction,
        "probs": dict(r.probs),
        "model": r.model,
        "source": r.source,
    }


def alert_payload(r: AlertRecord) -> dict[str, Any]:
    return {"t": r.time_s, "rule": r.rule, "task": r.task, "event": r.event, "confidence": r.confidence, "text": r.text}


def discovery_config(layout: Layout, device: str, key: str) -> tuple[str, dict[str, Any]]:
    """The discovery topic and config of one entity (``key``: a task, ``<task>_confidence``,
    a physio entity key, ``battery``, ``on_wrist`` or ``alert``)."""
    uid = f"m3sense_{entity_id(device)}_{key}"
    config: dict[str, Any] = {
        "unique_id": uid,
        "availability": [{"topic": layout.store_availability}, {"topic": layout.availability(device)}],
        "availability_mode": "all",
        "payload_available": ONLINE,
        "payload_not_available": OFFLINE,
        "qos": 1,
        "device": {
            "identifiers": [f"m3sense_{entity_id(device)}"],
            "name": f"E4 {device}",
            "manufacturer": "Empatica",
            "model": "E4 wristband (m3sense)",
        },
        "origin": {"name": "m3sense"},
    }
    component = "sensor"
    task = key.removesuffix("_confidence")
    if key in ("stress", "anxiety", "emotion"):
        config.update(
            name=key.capitalize(),
            state_topic=layout.state(device, key),
            icon="mdi:emoticon-outline",
            value_template="{{ value_json.label if value_json.label is not none else value_json.status }}",
            json_attributes_topic=layout.state(device, key),
        )
    elif key.endswith("_confidence"):
        config.update(
            name=f"{task.capitalize()} confidence",
            state_topic=layout.state(device, task),
            unit_of_measurement="%",
            state_class="measurement",
            icon="mdi:percent",
            value_template="{{ (value_json.confidence * 100) | round(1) "
            "if value_json.confidence is not none else None }}",
        )
    elif key == "battery":
        config.update(
            name="Battery",
            state_topic=layout.device_info(device),
            device_class="battery",
            unit_of_measurement="%",
            state_class="measurement",
            entity_category="diagnostic",
            value_template="{{ (value_json.battery * 100) | round(0) if value_json.battery is not none else None }}",
        )
    elif key == "on_wrist":
        component = "binary_sensor"
        config.update(
            name="On wrist",
            state_topic=layout.device_info(device),
            icon="mdi:watch",
            value_template="{{ 'ON' if value_json.on_wrist else 'OFF' }}",
        )
    elif key == "alert":
        component = "binary_sensor"
        config.update(
            name="Alert",
            state_topic=layout.alert(device),
            device_class="problem",
            value_template="{{ 'ON' if value_json.event == 'raise' else 'OFF' }}",
            json_attributes_topic=layout.alert(device),
        )
    else:
        signal = next(s for s, e in PHYSIO_ENTITIES.items() if e[0] == key)
        _, name, unit, device_class = PHYSIO_ENTITIES[signal]
        config.update(
            name=name,
            state_topic=layout.physio(device),
            unit_of_measurement=unit,
            state_class="measurement",
            value_template=f"{{{{ value_json.{signal} }}}}",
        )
        if device_class:
            config["device_class"] = device_class
    return layout.config_topic(component, device, key), config


@dataclass(slots=True)
class _Device:
    entities: set[str] = field(default_factory=set)
    online: bool = False
    ended: bool = False  # went offline by an end/disconnected event
    physio: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=lambda: {"t": None, "event": None, "battery": None, "on_wrist": None})


class MessageBuilder:
    """Records in, :class:`Outgoing` messages out, keeping per device what its retained
    snapshots (physio, device info) and its discovery configs need."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._devices: dict[str, _Device] = {}

    def devices(self) -> list[str]:
        return list(self._devices)

    def _control(self, topic: str, payload: bytes) -> Outgoing:
        return Outgoing(topic, payload, control=True)

    def _device(self, device: str, out: list[Outgoing], r: Record) -> _Device:
        """The device's state; online again with any record but the physiology a stream's end
        flushes after its ``end`` event (those come after the device went offline)."""
        d = self._devices.get(device)
        if d is None:
            d = self._devices[device] = _Device()
        if not d.online and not (d.ended and isinstance(r, PhysioRecord)):
            d.online, d.ended = True, False
            out.append(self._control(self.layout.availability(device), ONLINE.encode()))
        return d

    def _entity(self, d: _Device, device: str, key: str, out: list[Outgoing]) -> None:
        if self.layout.discovery and key not in d.entities:
            d.entities.add(key)
            topic, config = discovery_config(self.layout, device, key)
            out.append(self._control(topic, _json(config)))

    def _info(self, device: str, d: _Device, records: int) -> Outgoing:
        return Outgoing(self.layout.device_info(device), _json(d.info), records=records)

    def messages(self, records: Sequence[Record]) -> list[Outgoing]:
        out: list[Outgoing] = []
        physio: dict[str, int] = {}
        for r in records:
            d = self._device(r.device, out, r)
            if isinstance(r, AffectRecord):
                for key in (r.task, f"{r.task}_confidence"):
                    self._entity(d, r.device, key, out)
                out.append(Outgoing(self.layout.state(r.device, r.task), _json(state_payload(r)), records=1, affect=1))
                if r.off_wrist is not None and d.info["on_wrist"] is not (not r.off_wrist):
                    d.info.update(on_wrist=not r.off_wrist, t=r.time_s)
                    self._entity(d, r.device, "on_wrist", out)
                    out.append(self._info(r.device, d, 0))
            elif isinstance(r, PhysioRecord):
                if r.signal in PHYSIO_ENTITIES:
                    self._entity(d, r.device, PHYSIO_ENTITIES[r.signal][0], out)
                d.physio[r.signal] = r.value
                d.physio["t"] = r.time_s
                physio[r.device] = physio.get(r.device, 0) + 1
            elif isinstance(r, StatusRecord):
                out += self._status(r, d)
            elif isinstance(r, AlertRecord):
                self._entity(d, r.device, "alert", out)
                out.append(Outgoing(self.layout.alert(r.device), _json(alert_payload(r)), records=1))
        for device, n in physio.items():
            out.append(Outgoing(self.layout.physio(device), _json(self._devices[device].physio), records=n))
        return out

    def _status(self, r: StatusRecord, d: _Device) -> list[Outgoing]:
        out: list[Outgoing] = []
        try:
            detail = json.loads(r.detail)
        except ValueError:
            detail = {}
        d.info.update(t=r.time_s, event=r.event)
        if r.event == "battery":
            battery = detail.get("battery", r.value)
            if isinstance(battery, (int, float)) and not isinstance(battery, bool):
                d.info["battery"] = float(battery)
                self._entity(d, r.device, "battery", out)
        elif r.event == "on_wrist" and isinstance(detail.get("on_wrist"), bool):
            d.info["on_wrist"] = detail["on_wrist"]
            self._entity(d, r.device, "on_wrist", out)
        out.append(self._info(r.device, d, 1))
        if r.event in _OFFLINE_EVENTS and d.online:  # (a later record, a start, brings it back online)
            d.online, d.ended = False, True
            out.append(self._control(self.layout.availability(r.device), OFFLINE.encode()))
        return out

    def offline(self) -> list[Outgoing]:
        """Every device offline: what a store that stops cleanly says last."""
        out = []
        for device, d in self._devices.items():
            if d.online:
                d.online = False
                out.append(self._control(self.layout.availability(device), OFFLINE.encode()))
        return out
