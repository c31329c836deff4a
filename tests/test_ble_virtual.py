"""The real BLE code path (bleak, the shell, the bus) against virtual E4s.

Virtual wristbands run on a ScaledClock: their packets come faster than real time and
the host timestamps run on the same clock, so a few real seconds cover a minute of
streaming. Nothing here sleeps: runs end by duration or by an event, and receives time out.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import tracemalloc
from collections import defaultdict
from dataclasses import replace
from itertools import pairwise
from typing import Any

import numpy as np
import pytest

from bus import Message, Publisher, Subscriber
from ingest import codec
from ingest.ble import Link, LinkConfig, Wristband, device_id, scan, stream
from ingest.clocks import ScaledClock
from ingest.virtual import Faults, VirtualBleakClient, VirtualE4, VirtualRadio, virtual_address, virtual_recordings
from tests.conftest import Proc

NO_FAULTS = Faults()
DEFAULT_LINK = LinkConfig()
PACKET = {c: codec.DEFAULT_LAYOUT.samples_per_packet(c) for c in codec.PERIODIC_RATES_HZ}


@pytest.fixture(scope="module")
def recordings() -> list:
    return virtual_recordings(3, minutes=1.0, seed=7)


def make_radio(recordings: list, clock: ScaledClock, n: int, faults: Faults = NO_FAULTS) -> VirtualRadio:
    radio = VirtualRadio()
    for i in range(n):
        radio.add(VirtualE4(virtual_address(i), recordings[i], clock=clock, faults=replace(faults, seed=i)))
    return radio


async def collect(sub: Subscriber, clock: ScaledClock, until: asyncio.Task) -> list[tuple[float, Message]]:
    """Every message until ``until`` is done and the bus has been quiet for a moment."""
    got: list[tuple[float, Message]] = []
    while True:
        try:
            msg = await sub.recv(timeout_s=0.5 if until.done() else 10.0)
        except TimeoutError:
            if until.done():
                return got
            raise
        got.append((clock.now(), msg))


async def run_virtual(
    bus: str,
    recordings: list,
    *,
    n: int,
    scale: float,
    duration_s: float,
    faults: Faults = NO_FAULTS,
    config: LinkConfig = DEFAULT_LINK,
) -> tuple:
    clock = ScaledClock(scale)
    radio = make_radio(recordings, clock, n, faults)
    bands = [Wristband(address=a, device=device_id(a)) for a in radio.devices]
    async with Subscriber(bus, ["raw/", "status/"]) as sub, Publisher(bus) as pub:
        assert not await pub.wait_for_subscribers([f"raw/bvp/{b.device}/" for b in bands], 10)
        task = asyncio.create_task(
            stream(pub, bands, config=config, clock=clock, backend=radio.backend(), duration_s=duration_s)
        )
        got = await collect(sub, clock, task)
        links = task.result()
        return got, links, radio, sub.stats


def by_stream(got: list[tuple[float, Message]]) -> dict[tuple[str, str], list[tuple[float, Message]]]:
    out: dict[tuple[str, str], list] = defaultdict(list)
    for t, m in got:
        out[(m.device, m.modality if m.kind == "raw" else "status")].append((t, m))
    return out


def test_scan_finds_virtual_e4s_by_name_with_rssi(recordings: list) -> None:
    radio = make_radio(recordings, ScaledClock(1.0), 3)
    found = asyncio.run(scan(0.2, radio.backend()))
    assert sorted(a for a, _, _ in found) == sorted(radio.devices)
    assert {name for _, name, _ in found} == {"Empatica E4"}
    assert all(rssi == -60 for _, _, rssi in found)


def test_three_wristbands_at_nominal_rates_with_continuous_sequence_numbers(hub, bus_address, recordings) -> None:
    got, links, _radio, stats = asyncio.run(run_virtual(bus_address, recordings, n=3, scale=5.0, duration_s=40.0))
    assert stats.gaps == 0 and not stats.malformed
    streams = by_stream(got)
    for band in links:
        dev = band.band.device
        for modality, fs in codec.PERIODIC_RATES_HZ.items():
            msgs = streams[(dev, modality)]
            seqs = [m.seq for _, m in msgs]
            assert seqs == list(range(len(seqs)))
            # samples follow each other on the nominal grid (only drift slews, well under a sample)
            for (_, a), (_, b) in pairwise(msgs):
                assert abs(b.t0_s - (a.t0_s + a.n / fs)) < 0.1 / fs
            # and arrive at the nominal rate, measured on the host clock
            n = sum(m.n for _, m in msgs[1:])
            rate = n / (msgs[-1][0] - msgs[0][0])
            assert rate == pytest.approx(fs, rel=0.01), (dev, modality, rate)
            assert msgs[0][1].samples.dtype == (np.int16 if modality == "acc" else np.float64)
        status = [m.meta["event"] for _, m in streams[(dev, "status")]]
        assert status[0] == "connected" and status[-1] == "end" and "gap" not in status
        assert "battery" in status
        assert len(streams[(dev, "ibi")]) > 30 and len(streams[(dev, "hr")]) > 5
        hr = np.concatenate([m.samples for _, m in streams[(dev, "hr")]])
        assert np.all((hr > 40) & (hr < 180))


def gap_totals(msgs: list[tuple[float, Message]]) -> dict[str, int]:
    totals: dict[str, int] = defaultdict(int)
    for _, m in msgs:
        if m.meta.get("event") == "gap":
            totals[m.meta["stream"]] += m.meta["missing_samples"]
    return totals


def test_disconnects_and_lost_packets_become_gaps_of_the_right_length(hub, bus_address, recordings) -> None:
    faults = Faults(drop_fraction=0.03, disconnect_every_s=15.0)
    got, links, radio, stats = asyncio.run(
        run_virtual(
            bus_address,
            recordings,
            n=2,
            scale=5.0,
            duration_s=60.0,
            faults=faults,
            config=LinkConfig(backoff_initial_s=0.05),
        )
    )
    assert stats.gaps == 0
    streams = by_stream(got)
    for link in links:
        dev, device = link.band.device, radio.lookup(link.band.address)
        assert device is not None and device.stats.link_drops >= 3
        assert link.stats.connects == device.stats.connections >= 4
        reported = gap_totals(streams[(dev, "status")])
        for modality in codec.PERIODIC_RATES_HZ:
            lost = device.stats.undelivered[modality]
            # each re-anchor rounds to the sample grid; packets lost at the very end have no
            # later packet to reveal them
            tolerance = 2 * link.stats.connects + PACKET[modality]
            assert abs(reported[modality] - lost) <= tolerance, (dev, modality, reported[modality], lost)
        # time is never compressed: after every gap, samples resume exactly where they were missing
        fs = codec.PERIODIC_RATES_HZ["bvp"]
        msgs = [m for _, m in streams[(dev, "bvp")]]
        gaps = [
            (m.meta["start_s"], m.meta["missing_samples"])
            for _, m in streams[(dev, "status")]
            if m.meta.get("event") == "gap" and m.meta["stream"] == "bvp"
        ]
        for a, b in pairwise(msgs):
            end = a.t0_s + a.n / fs
            missing = sum(n for start, n in gaps if abs(start - end) < 0.1 / fs)
            assert abs(b.t0_s - (end + missing / fs)) < 0.1 / fs


def test_corrupt_and_truncated_packets_are_counted_and_reported(hub, bus_address, recordings) -> None:
    faults = Faults(corrupt_fraction=0.04, truncate_fraction=0.04)
    got, links, radio, _ = asyncio.run(
        run_virtual(bus_address, recordings, n=1, scale=10.0, duration_s=30.0, faults=faults)
    )
    (link,) = links
    device = radio.lookup(link.band.address)
    assert device is not None
    bad = link.stats.ingest.bad
    assert sum(v for k, v in bad.items() if k.endswith(":oversized")) == sum(device.stats.corrupted.values()) > 0
    assert sum(v for k, v in bad.items() if k.endswith(":truncated")) == sum(device.stats.truncated.values()) > 0
    events = [m.meta for _, m in got if m.kind == "status" and m.meta["event"] == "bad_packet"]
    assert len(events) == sum(bad.values())
    reported = gap_totals([(0.0, m) for _, m in got if m.kind == "status"])
    for modality in codec.PERIODIC_RATES_HZ:  # a damaged notification is a gap at once, of one packet
        assert reported[modality] == device.stats.undelivered[modality], modality


def test_watchdog_reconnects_a_zombie_link(hub, bus_address, recordings) -> None:
    faults = Faults(zombie_after_s=10.0)
    got, links, radio, _ = asyncio.run(
        run_virtual(
            bus_address,
            recordings,
            n=1,
            scale=10.0,
            duration_s=40.0,
            faults=faults,
            config=LinkConfig(watchdog_s=0.3, backoff_initial_s=0.05, store_address=True),
        )
    )
    (link,) = links
    device = radio.lookup(link.band.address)
    assert device is not None and device.stats.zombies >= 1 and device.stats.link_drops == 0
    assert link.stats.watchdog_trips >= 1 and link.stats.connects >= 2
    events = [m.meta for _, m in got if m.kind == "status"]
    assert {"event": "disconnected", "source": "live", "address": link.band.address, "reason": "watchdog"} in [
        {k: e[k] for k in ("event", "source", "address", "reason") if k in e} for e in events
    ]
    bvp = [m for _, m in got if m.modality == "bvp" and m.kind == "raw"]
    assert bvp[-1].t0_s > bvp[0].t0_s + 20  # data flowed again after the reconnect


def test_a_device_that_never_sends_is_reported_not_fatal(hub, bus_address, recordings) -> None:
    """A wristband that ignores the start command: connected, silent, watchdog, retry."""

    async def main() -> tuple[Link, list[Message]]:
        clock = ScaledClock(10.0)
        radio = make_radio(recordings, clock, 1)
        band = Wristband(address=virtual_address(0), device="mute")
        config = LinkConfig(layout=codec.Layout(start_command="ff"), watchdog_s=0.2, backoff_initial_s=0.01)
        async with Subscriber(bus_address, ["status/mute/"]) as sub, Publisher(bus_address) as pub:
            assert not await pub.wait_for_subscribers(["status/mute/"], 10)
            stop = asyncio.Event()
            link = Link(band, pub, config=config, clock=clock, backend=radio.backend())
            task = asyncio.create_task(link.run())
            events: list[Message] = []
            while sum(1 for e in events if e.meta["event"] == "disconnected") < 2:
                events.append(await sub.recv(10.0))
            stop.set()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return link, events

    link, _events = asyncio.run(main())
    assert link.stats.watchdog_trips >= 2 and link.stats.ingest.packets.total() == 0


def test_unknown_address_is_a_reported_connect_failure(hub, bus_address, recordings) -> None:
    async def main() -> list[Message]:
        radio = VirtualRadio()
        band = Wristband(address="E4:FF:FF:FF:FF:FF", device="ghost")
        config = LinkConfig(scan_timeout_s=0.05, backoff_initial_s=0.01)
        async with Subscriber(bus_address, ["status/ghost/"]) as sub, Publisher(bus_address) as pub:
            assert not await pub.wait_for_subscribers(["status/ghost/"], 10)
            task = asyncio.create_task(Link(band, pub, config=config, backend=radio.backend()).run())
            events = [await sub.recv(10.0) for _ in range(3)]
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return events

    events = asyncio.run(main())
    assert all(e.meta["event"] == "connect_failed" and "not found" in e.meta["error"] for e in events)


def test_a_storm_of_100_disconnects_leaks_no_tasks_sockets_or_memory(hub, bus_address, recordings) -> None:
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def main() -> tuple[int, int, int, int, int, int]:
        clock = ScaledClock(10.0)
        radio = make_radio(recordings, clock, 1, Faults(disconnect_every_s=0.3))
        device = radio.lookup(virtual_address(0))
        assert device is not None
        band = Wristband(address=virtual_address(0), device="storm")
        config = LinkConfig(backoff_initial_s=0.001)
        async with Publisher(bus_address) as pub:
            await pub.flush()  # both of its connections to the hub are up: their fds are in the baseline
            tasks_before = len(asyncio.all_tasks())
            fds_before = open_fds()
            stop = asyncio.Event()
            run = asyncio.create_task(
                stream(pub, [band], config=config, clock=clock, backend=radio.backend(), stop=stop)
            )
            mem_at_10 = 0
            while device.stats.link_drops <= 100:  # the 101st proves the 100th was handled
                await device_event(device)
                if device.stats.link_drops == 10 and not mem_at_10:
                    gc.collect()
                    mem_at_10 = tracemalloc.get_traced_memory()[0]
            stop.set()
            links = await run
            gc.collect()
            mem_at_100 = tracemalloc.get_traced_memory()[0]
            return (
                tasks_before,
                len(asyncio.all_tasks()),
                fds_before,
                open_fds(),
                mem_at_100 - mem_at_10,
                # a drop while the client still sets the link up (subscribing, starting the streams) is a
                # failed connect, not a disconnect: under load more drops land there
                links[0].stats.disconnects + links[0].stats.connect_failures,
            )

    tracemalloc.start()
    try:
        tasks_before, tasks_after, fds_before, fds_after, growth, drops_seen = asyncio.run(main())
    finally:
        tracemalloc.stop()
    assert drops_seen >= 100  # every drop of the storm reached the client as a lost link
    assert tasks_after == tasks_before
    assert fds_after == fds_before
    assert growth < 256 * 1024, f"{growth} bytes more after 90 further reconnects"


async def device_event(device: VirtualE4) -> None:
    """Wait for the virtual device's next injected disconnect (no sleeping on a timer)."""
    device.link_dropped.clear()
    try:
        await asyncio.wait_for(device.link_dropped.wait(), 60)
    except TimeoutError:
        raise AssertionError("the virtual link never dropped") from None


def test_client_backend_is_a_real_bleak_backend(recordings) -> None:
    from bleak import BleakClient

    async def main() -> list[bytes]:
        clock = ScaledClock(10.0)
        radio = make_radio(recordings, clock, 1)
        got: list[bytes] = []
        done = asyncio.Event()
        async with BleakClient(virtual_address(0), backend=VirtualBleakClient, radio=radio) as client:
            assert client.backend_id == "VirtualBleakClient"
            assert {s.uuid for s in client.services} >= {codec.uuid16(0x3EA0), codec.uuid16(0x3E70)}

            def on_eda(_c: Any, data: bytearray) -> None:
                got.append(bytes(data))
                if len(got) == 3:
                    done.set()

            await client.start_notify(codec.CHARACTERISTICS["eda"], on_eda)
            await client.write_gatt_char(
                codec.CHARACTERISTICS["command"], codec.start_command(codec.DEFAULT_LAYOUT, clock.now()), response=True
            )
            await asyncio.wait_for(done.wait(), 10)
        return got

    packets = asyncio.run(main())
    counters: list[int] = []
    for p in packets:
        counter = codec.decode("eda", p).counter
        assert counter is not None, "the default layout counts EDA notifications"
        counters.append(counter)
    assert np.diff(counters).tolist() == [1, 1]


def test_cli_stream_virtual_three_with_tap(bus_address, procs, tmp_path) -> None:
    hub = Proc(["hub", "--bus", bus_address])
    procs.append(hub)
    hub.wait_for_stderr("hub:")
    out = tmp_path / "tap.jsonl"
    with open(out, "w") as fh:
        tap = Proc(
            ["tap", "--bus", bus_address, "--json", "--topic", "raw/", "--topic", "status/", "--idle-exit-s", "5"],
            stdout=fh,
        )
        procs.append(tap)
        tap.wait_for_stderr("tap: subscribed")
        raw_log = tmp_path / "raw.jsonl"
        ble = Proc(
            [
                "ble",
                "stream",
                "--bus",
                bus_address,
                "--virtual",
                "3",
                "--time-scale",
                "20",
                "--duration",
                "40",
                "--minutes",
                "1",
                "--drop",
                "0.02",
                "--disconnect-every",
                "12",
                "--raw-log",
                str(raw_log),
                "--wait",
                "30",
            ]
        )
        procs.append(ble)
        assert ble.popen.wait(timeout=120) == 0, ble.stderr.read()
        tap.popen.wait(timeout=60)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    devices = {r["device"] for r in records if r["kind"] == "raw"}
    assert len(devices) == 3
    for dev in devices:
        status = [r for r in records if r["device"] == dev and r["kind"] == "status"]
        assert status[-1]["event"] == "end"
        assert sum(r["event"] == "connected" for r in status) >= 2  # it reconnected after the link drops
        for modality, fs in codec.PERIODIC_RATES_HZ.items():
            raw = [r for r in records if r["device"] == dev and r["modality"] == modality and r["kind"] == "raw"]
            assert [r["seq"] for r in raw] == list(range(len(raw))) and raw
            assert all(r["fs"] == fs for r in raw)
            # every sample slot of the timeline was either delivered or reported missing
            delivered = sum(r["n"] for r in raw)
            missing = sum(r["missing_samples"] for r in status if r["event"] == "gap" and r["stream"] == modality)
            slots = (raw[-1]["t0"] + raw[-1]["n"] / fs - raw[0]["t0"]) * fs
            assert abs(delivered + missing - slots) <= 0.005 * slots + PACKET[modality], (dev, modality)
            assert any(r["event"] == "gap" and r["stream"] == modality and r["cause"] == "reconnect" for r in status)
    # the raw log replays through the same decoders to the same raw messages
    from ingest.ble import replay_raw_log

    replayed = [(d, e) for d, e in replay_raw_log(raw_log) if e.kind == "raw" and e.modality == "eda"]
    live = [r for r in records if r["kind"] == "raw" and r["modality"] == "eda"]
    assert len(replayed) == len(live)
    assert sorted(e.t0_s for _, e in replayed) == pytest.approx(sorted(r["t0"] for r in live))


def test_off_wrist_over_ble_flags_exactly_the_off_wrist_windows(hub, bus_address, procs) -> None:
    """Virtual wristband -> the `ble stream` code path -> a `preprocess` process. Off the skin the
    BLE EDA reads its floor, 0.0596 µS (not the 0 of exported files), and must still flag the
    windows that overlap the off-wrist stretch, and only those."""
    from preprocess import Window
    from replay import simulate_sessions

    session = simulate_sessions(minutes=10.0, seed=0)[0]  # off the wrist 125.9 s to 177.8 s in
    ((off_a, off_b),) = session.off_wrist_s
    pre = Proc(["preprocess", "--bus", bus_address])
    procs.append(pre)
    clock = ScaledClock(40.0)
    radio = VirtualRadio()
    device = radio.add(VirtualE4(virtual_address(0), session.recording, clock=clock))
    band = Wristband(address=device.address, device=device_id(device.address))

    async def main() -> tuple[list[Window], list[Message]]:
        async with Subscriber(bus_address, ["window/", "raw/eda/"]) as sub, Publisher(bus_address) as pub:
            assert not await pub.wait_for_subscribers([f"window/{band.device}/", f"raw/bvp/{band.device}/"], 30)
            task = asyncio.create_task(
                stream(
                    pub,
                    [band],
                    clock=clock,
                    backend=radio.backend(),
                    duration_s=off_b - session.recording.start_s + 60.0,
                )
            )
            windows, eda = [], []
            while True:
                msg = await sub.recv(timeout_s=60.0)
                if msg.kind == "raw":
                    eda.append(msg)
                elif msg.meta.get("event") == "end":
                    break
                else:
                    windows.append(Window.from_message(msg))
            await task
            return windows, eda

    windows, eda = asyncio.run(main())
    # the stretch on the host clock: the device plays its recording from power-on
    a = device._power_on_s + off_a - session.recording.start_s
    b = device._power_on_s + off_b - session.recording.start_s
    off_values = np.concatenate([m.samples[(m.sample_times() > a + 1) & (m.sample_times() < b - 1)] for m in eda])
    assert off_values.size > 150 and np.median(off_values) == pytest.approx(1e6 / (2**24 - 1))  # the BLE floor
    assert len(windows) > 20
    for w in windows:
        overlap = min(w.t_end_s, b) - max(w.t_start_s, a)
        if overlap >= 1.5:  # EDA falls at once when the band comes off; host stamps are good to ~0.1 s
            assert w.quality.off_wrist, (w.t_start_s - a, w.t_end_s - b)
        elif w.t_end_s < a - 0.5 or w.t_start_s > b + 2.0:  # re-worn EDA passes 0.06 µS within ~1.2 s
            assert not w.quality.off_wrist, (w.t_start_s - a, w.t_end_s - b)
    assert sum(w.quality.off_wrist for w in windows) >= 12
