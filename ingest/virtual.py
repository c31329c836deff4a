"""A virtual E4: a wristband that bleak connects to without a radio.

Theory of operation. A :class:`VirtualRadio` holds :class:`VirtualE4` peripherals by
address. :class:`VirtualBleakScanner` and :class:`VirtualBleakClient` are bleak backends
(``BleakScanner(backend=..., radio=radio)``, ``BleakClient(addr, backend=..., radio=radio)``),
so the real ingest code path (scan, connect, subscribe, write the start command, receive
notifications, be disconnected) runs unchanged against them.

A :class:`VirtualE4` has the E4 GATT layout, advertises as "Empatica E4" while nobody is
connected, and once the start command is written streams the packets of a recording,
encoded with :mod:`ingest.codec`, at the wristband's cadence on a shared clock (a
:class:`~ingest.clocks.ScaledClock` makes it faster than real time with consistent
timestamps). Its sample clock runs from power-on whether or not anyone listens, so samples
due while the link is down are lost, as on the real device; :attr:`VirtualE4.stats` counts
every sample it could not deliver, which is what a test compares the reported gaps with.

Faults (:class:`Faults`): notifications lost in the air, oversized (corrupt) or truncated
notifications, link drops every so often, and a zombie link that stays "connected" but
goes silent (the BlueZ failure the ingest watchdog exists for).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from bleak.assigned_numbers import CharacteristicPropertyName
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakDeviceNotFoundError, BleakError

from ingest import codec
from ingest.ble import BleBackend
from ingest.clocks import SystemClock
from replay import Recording, Signal

log = logging.getLogger(__name__)

BATTERY_PERIOD_S = 60.0


async def _cancel(task: asyncio.Task | None) -> None:
    """Cancel ``task`` and wait for it, without swallowing a cancellation of our own."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        if asyncio.current_task().cancelling():  # type: ignore[union-attr]
            raise


@dataclass(frozen=True, slots=True, kw_only=True)
class Faults:
    """What goes wrong. Fractions are per notification; times are device-clock seconds."""

    drop_fraction: float = 0.0
    corrupt_fraction: float = 0.0
    truncate_fraction: float = 0.0
    disconnect_every_s: float | None = None
    zombie_after_s: float | None = None
    seed: int = 0


@dataclass(slots=True)
class VirtualStats:
    """What the device did, per characteristic. ``undelivered`` counts the samples, after
    the first notification that reached a receiver, that did not reach it intact: due while
    no link was up, lost in the air, or sent corrupt or truncated (those are delivered, and
    the receiver's decoder must reject them). A receiver should report exactly these as gaps."""

    sent: Counter = field(default_factory=Counter)
    undelivered: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)
    corrupted: Counter = field(default_factory=Counter)
    truncated: Counter = field(default_factory=Counter)
    connections: int = 0
    link_drops: int = 0
    zombies: int = 0


class _Source:
    """Sample k of each periodic stream of a recording, looping at its end."""

    def __init__(self, recording: Recording) -> None:
        self._signals: dict[str, Signal] = dict(recording.signals)
        missing = [m for m in codec.PERIODIC_RATES_HZ if m not in self._signals]
        if missing:
            raise ValueError(f"recording {recording.device} lacks {missing} for a virtual E4")

    def take(self, modality: str, k0: int, n: int) -> np.ndarray:
        values = self._signals[modality].values
        return values[np.arange(k0, k0 + n) % len(values)]


class VirtualE4:
    """One virtual wristband (the peripheral side)."""

    def __init__(
        self,
        address: str,
        recording: Recording,
        *,
        clock: SystemClock | None = None,
        layout: codec.Layout = codec.DEFAULT_LAYOUT,
        faults: Faults = Faults(),
        battery: float = 0.8,
        rssi: int = -60,
        name: str = codec.DEVICE_NAME,
    ) -> None:
        self.address = address
        self.name = name
        self.rssi = rssi
        self.layout = layout
        self.faults = faults
        self.clock = clock or SystemClock()
        self.battery = battery
        self.stats = VirtualStats()
        self.link_dropped = asyncio.Event()  # set at each injected disconnect, for whoever waits on one
        self._source = _Source(recording)
        self._rng = random.Random(faults.seed)
        self._power_on_s = self.clock.now()
        rec_start = recording.start_s
        self._tags = sorted(float(t) - rec_start for t in recording.tags_s)
        self._bvp_level = 0  # the device's delta encoder state runs whether or not anyone listens
        self._next_packet = {c: 0 for c in codec.PERIODIC_RATES_HZ}
        self._link: VirtualBleakClient | None = None
        self._task: asyncio.Task | None = None
        self._notify: dict[str, NotifyCallback] = {}
        self._streaming = False
        self._reached: set[str] = set()  # characteristics that got a notification through

    # -- what the client backend calls ---------------------------------------------------

    @property
    def advertising(self) -> bool:
        return self._link is None

    def attach(self, link: VirtualBleakClient) -> None:
        if self._link is not None:
            raise BleakError(f"{self.address} is already connected")
        self._link = link
        self._notify.clear()
        self._streaming = False
        self.stats.connections += 1
        self._task = asyncio.get_running_loop().create_task(self._run(link), name=f"virtual-e4-{self.address}")

    def release(self, link: VirtualBleakClient) -> asyncio.Task | None:
        """Forget the link; returns the streaming task, which the caller ends."""
        if self._link is not link:
            return None
        self._link = None
        self._notify.clear()
        self._streaming = False
        task, self._task = self._task, None
        return task

    async def detach(self, link: VirtualBleakClient) -> None:
        task = self.release(link)
        await _cancel(task)

    def subscribe(self, char: str, callback: NotifyCallback) -> None:
        self._notify[char] = callback

    def unsubscribe(self, char: str) -> None:
        self._notify.pop(char, None)

    def write(self, char: str, data: bytes) -> None:
        if char != "command":
            raise BleakError(f"{char} is not writable")
        if (len(data) == 5 and data[0] == 0x01) or data == codec.start_command(self.layout, 0):
            self._streaming = True
        else:
            log.warning("virtual E4 %s ignores command %s", self.address, data.hex())

    # -- the device ----------------------------------------------------------------------

    def _packet_due(self, char: str, j: int) -> float:
        spp = self.layout.samples_per_packet(char)
        return self._power_on_s + (j + 1) * spp / codec.PERIODIC_RATES_HZ[char]

    def encode_packet(self, char: str, j: int) -> bytes:
        """Notification j of a periodic characteristic (BVP's delta encoder keeps state:
        call in order of j)."""
        spp = self.layout.samples_per_packet(char)
        x = self._source.take(char, j * spp, spp)
        if char == "bvp":
            deltas, self._bvp_level = codec.bvp_to_deltas(x, self._bvp_level)
            return codec.encode_bvp(np.stack([deltas, deltas // 2], axis=1), counter=j)
        if char == "eda":
            return codec.encode_eda(x, counter=j, layout=self.layout)
        if char == "temp":
            return codec.encode_temp(x, layout=self.layout)
        return codec.encode_acc(np.clip(x, -128, 127), counter=j, layout=self.layout)

    def _lose(self, char: str, samples: int) -> None:
        if char in self._reached:
            self.stats.undelivered[char] += samples

    def _deliver(self, char: str, data: bytes, samples: int) -> None:
        f = self.faults
        callback = self._notify.get(char) if self._streaming else None
        if callback is None:
            self._lose(char, samples)
            return
        r = self._rng.random()
        if r < f.drop_fraction:
            self.stats.dropped[char] += 1
            self._lose(char, samples)
            return
        r -= f.drop_fraction
        if r < f.corrupt_fraction:
            self.stats.corrupted[char] += 1
            self._lose(char, samples)
            data = data + bytes(self._rng.randrange(256) for _ in range(self._rng.randint(1, 8)))
        elif r - f.corrupt_fraction < f.truncate_fraction:
            self.stats.truncated[char] += 1
            self._lose(char, samples)
            data = data[: self._rng.randrange(len(data))]
        else:
            self._reached.add(char)
        self.stats.sent[char] += 1
        callback(bytearray(data))

    async def _run(self, link: VirtualBleakClient) -> None:
        """Emit every packet at its due time, from now until the link goes."""
        now = self.clock.now()
        connected_at = now
        heap: list[tuple[float, str, int]] = []
        for char in codec.PERIODIC_RATES_HZ:
            spp = self.layout.samples_per_packet(char)
            j = self._next_packet[char]
            while self._packet_due(char, j) <= now:  # due while nobody listened
                self.encode_packet(char, j)
                self._lose(char, spp)
                j += 1
            heapq.heappush(heap, (self._packet_due(char, j), char, j))
        heapq.heappush(heap, (now + 1.0, "battery", 0))  # once streaming has started, then every minute
        for offset in self._tags:
            if self._power_on_s + offset > now:
                heapq.heappush(heap, (self._power_on_s + offset, "button", 0))
        drop_at = connected_at + self.faults.disconnect_every_s if self.faults.disconnect_every_s else None
        zombie_at = connected_at + self.faults.zombie_after_s if self.faults.zombie_after_s else None
        while True:
            due, char, j = heap[0]
            if drop_at is not None and drop_at <= due:
                await self.clock.sleep_until(drop_at)
                self.stats.link_drops += 1
                self.link_dropped.set()
                link.lost()
                return
            await self.clock.sleep_until(due)
            heapq.heappop(heap)
            if zombie_at is not None and due >= zombie_at:
                self.stats.zombies += 1
                self._streaming = False  # "connected", silent, and stays that way until detached
                zombie_at = None
            if char == "battery":
                self._deliver("battery", codec.encode_battery(self.battery), 0)
                heapq.heappush(heap, (due + BATTERY_PERIOD_S, "battery", 0))
            elif char == "button":
                self._deliver("button", codec.encode_button(True), 0)
            else:
                data = self.encode_packet(char, j)
                self._next_packet[char] = j + 1
                self._deliver(char, data, self.layout.samples_per_packet(char))
                heapq.heappush(heap, (self._packet_due(char, j + 1), char, j + 1))


class VirtualRadio:
    """The virtual E4s a scanner can see and a client can connect to, by address."""

    def __init__(self) -> None:
        self.devices: dict[str, VirtualE4] = {}

    def add(self, device: VirtualE4) -> VirtualE4:
        self.devices[device.address.upper()] = device
        return device

    def lookup(self, address: str) -> VirtualE4 | None:
        return self.devices.get(address.upper())

    def backend(self) -> BleBackend:
        """What ``ingest.ble`` passes to bleak to reach these devices instead of a radio."""
        return BleBackend(
            scanner={"backend": VirtualBleakScanner, "radio": self},
            client={"backend": VirtualBleakClient, "radio": self},
        )


def _services() -> tuple[BleakGATTServiceCollection, dict[int, str]]:
    """The E4 GATT table as bleak objects, and characteristic handle -> name."""
    collection = BleakGATTServiceCollection()
    names: dict[int, str] = {}
    handle = 1
    for service_short, chars in codec.SERVICES.items():
        service = BleakGATTService(None, handle, codec.uuid16(service_short))
        collection.add_service(service)
        handle += 1
        for name, short, props in chars:
            # the codec names its properties as bleak does (the GATT tests read them back)
            properties = cast("list[CharacteristicPropertyName]", list(props))
            char = BleakGATTCharacteristic(None, handle, codec.uuid16(short), properties, lambda: 20, service)
            collection.add_characteristic(char)
            names[handle] = name
            handle += 1
            if "notify" in props:
                collection.add_descriptor(
                    BleakGATTDescriptor(None, handle, "00002902-0000-1000-8000-00805f9b34fb", char)
                )
                handle += 1
    return collection, names


class VirtualBleakClient(BaseBleakClient):
    """bleak client backend that talks to a :class:`VirtualE4` through a :class:`VirtualRadio`."""

    def __init__(self, address_or_ble_device: BLEDevice | str, *, radio: VirtualRadio, **kwargs: Any) -> None:
        super().__init__(
            address_or_ble_device,
            disconnected_callback=kwargs.get("disconnected_callback"),
            timeout=kwargs.get("timeout", 10.0),
        )
        self._radio = radio
        self._device: VirtualE4 | None = None
        self._names: dict[int, str] = {}

    @property
    def name(self) -> str:
        return self._device.name if self._device else self.address

    @property
    def mtu_size(self) -> int:
        return 23

    @property
    def is_connected(self) -> bool:
        return self._device is not None

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        device = self._radio.lookup(self.address)
        if device is None or not device.advertising:
            raise BleakDeviceNotFoundError(self.address, f"virtual E4 {self.address} is not advertising")
        await asyncio.sleep(0)  # a connect is never synchronous on a real stack
        device.attach(self)
        self._device = device
        self.services, self._names = _services()

    def lost(self) -> None:
        """The peripheral dropped the link (called from the device's task)."""
        device, self._device = self._device, None
        if device is None:
            return
        device.release(self)  # the device's task ends by returning after this call
        if self._disconnected_callback is not None:
            asyncio.get_running_loop().call_soon(self._disconnected_callback)

    async def disconnect(self) -> None:
        device, self._device = self._device, None
        if device is not None:
            await device.detach(self)

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("the E4 does not bond (e4-facts 1.1)")

    async def unpair(self) -> None:
        raise NotImplementedError("the E4 does not bond (e4-facts 1.1)")

    def _char_name(self, characteristic: BleakGATTCharacteristic) -> str:
        if self._device is None:
            raise BleakError("Not connected")
        return self._names[characteristic.handle]

    async def read_gatt_char(self, characteristic: BleakGATTCharacteristic, **kwargs: Any) -> bytearray:
        raise BleakError(f"{self._char_name(characteristic)} is not readable on an E4")

    async def read_gatt_descriptor(self, descriptor: BleakGATTDescriptor, **kwargs: Any) -> bytearray:
        raise BleakError("E4 descriptors are not readable here")

    async def write_gatt_char(self, characteristic: BleakGATTCharacteristic, data: Any, response: bool) -> None:
        name = self._char_name(characteristic)
        assert self._device is not None
        self._device.write(name, bytes(data))

    async def write_gatt_descriptor(self, descriptor: BleakGATTDescriptor, data: Any) -> None:
        raise ValueError("use start_notify instead of writing the CCCD (bleak >= 3.0)")

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        name = self._char_name(characteristic)
        if "notify" not in characteristic.properties:
            raise BleakError(f"{name} does not notify")
        assert self._device is not None
        self._device.subscribe(name, callback)

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        name = self._char_name(characteristic)
        assert self._device is not None
        self._device.unsubscribe(name)


class VirtualBleakScanner(BaseBleakScanner):
    """bleak scanner backend that hears the advertising virtual E4s of a radio."""

    def __init__(
        self,
        detection_callback: Callable | None = None,
        service_uuids: list[str] | None = None,
        scanning_mode: str = "active",
        *,
        radio: VirtualRadio,
        advert_interval_s: float = 0.02,
        **kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        self._radio = radio
        self._interval_s = advert_interval_s
        self._task: asyncio.Task | None = None

    def _hear(self) -> None:
        for device in list(self._radio.devices.values()):
            if not device.advertising:
                continue
            adv = AdvertisementData(
                local_name=device.name,
                manufacturer_data={},
                service_data={},
                service_uuids=[],
                tx_power=None,
                rssi=device.rssi,
                platform_data=(),
            )
            ble = self.create_or_update_device(device.address, device.address, device.name, None, adv)
            self.call_detection_callbacks(ble, adv)

    async def _advertise(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            self._hear()

    async def start(self) -> None:
        self.seen_devices = {}
        self._task = asyncio.get_running_loop().create_task(self._advertise())

    async def stop(self) -> None:
        task, self._task = self._task, None
        await _cancel(task)


def virtual_address(i: int) -> str:
    """The address of the i-th virtual wristband (a locally administered MAC)."""
    return f"E4:00:00:00:00:{i + 1:02X}"


def virtual_recordings(n: int, *, minutes: float = 10.0, seed: int = 0) -> list[Recording]:
    """Synthetic E4 sessions for ``n`` virtual wristbands (``replay.simulate``: labelled
    phases, per-subject physiology, off-wrist and motion stretches), looped by the device."""
    from replay import simulate_recordings

    return simulate_recordings(minutes=minutes, seed=seed, subjects=n)
