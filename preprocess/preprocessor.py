"""Many devices: route messages to one :class:`DeviceWindower` each, open and close them.

A device's first message starts its state. A device is closed (its pending windows
flushed, its buffers freed, its counters folded into the totals, a :class:`DeviceEnd`
queued for :meth:`Preprocessor.take_ended`) on its ``status`` end message, when nothing has
come from it for ``device_timeout_s`` on the caller's clock, or at :meth:`flush`:
the core never reads a clock, the shell passes ``now_s`` (loop time live, the message's due
time offline), so tests and replays are deterministic.
"""

from __future__ import annotations

from collections import Counter

from bus import STATUS, Message
from preprocess.window import DeviceEnd, Window
from preprocess.windower import DeviceWindower, WindowConfig


class Preprocessor:
    def __init__(self, config: WindowConfig | None = None, *, device_timeout_s: float = 120.0) -> None:
        if not device_timeout_s > 0:
            raise ValueError(f"device_timeout_s must be > 0, got {device_timeout_s}")
        self.config = config or WindowConfig()
        self.device_timeout_s = device_timeout_s
        self._devices: dict[str, DeviceWindower] = {}
        self._last_seen: dict[str, float] = {}
        self._closed: Counter[str] = Counter()
        self._ended: list[DeviceEnd] = []

    @property
    def devices(self) -> list[str]:
        return list(self._devices)

    def push(self, msg: Message, *, now_s: float) -> list[Window]:
        """Feed one message that arrived at ``now_s``; returns the windows it completes."""
        dev = self._devices.get(msg.device)
        ending = msg.kind == STATUS and msg.meta.get("event") == "end"
        if dev is None:
            if ending:
                self._closed["end_of_unknown_device"] += 1
                return []
            dev = self._devices[msg.device] = DeviceWindower(msg.device, self.config)
            self._closed["devices_opened"] += 1
        self._last_seen[msg.device] = now_s
        out = dev.push(msg)
        if ending:
            self._close(msg.device, "end")
        return out

    def expire(self, now_s: float) -> list[Window]:
        """Close the devices silent since ``now_s - device_timeout_s``; returns their last windows."""
        out: list[Window] = []
        for device in [d for d, t in self._last_seen.items() if t < now_s - self.device_timeout_s]:
            out += self._devices[device].flush()
            self._closed["devices_timed_out"] += 1
            self._close(device, "timeout")
        return out

    def flush(self) -> list[Window]:
        """Close every device (shutdown, end of an offline run)."""
        out: list[Window] = []
        for device in list(self._devices):
            out += self._devices[device].flush()
            self._close(device, "shutdown")
        return out

    def take_ended(self) -> list[DeviceEnd]:
        """The devices closed since the last call, in closing order (publish after their windows)."""
        ended, self._ended = self._ended, []
        return ended

    def _close(self, device: str, reason: str) -> None:
        dev = self._devices.pop(device)
        del self._last_seen[device]
        self._closed.update(dev.counters)
        self._closed["devices_closed"] += 1
        self._ended.append(DeviceEnd(device=device, t_s=dev.last_data_s or 0.0, reason=reason, source=dev.source))

    def counters(self) -> Counter:
        """Totals over open and closed devices."""
        total = Counter(self._closed)
        for dev in self._devices.values():
            total.update(dev.counters)
        return total

    def nbytes(self) -> int:
        return sum(d.nbytes() for d in self._devices.values())
