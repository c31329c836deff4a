"""``ble stream --packet-s S``: the coalescer (ingest.coalesce) and the live path through it.

The coalescer's promises are checked on arbitrary sequences (hypothesis): the same samples in the
same grid slots, messages of at least S unless a break cut them, no status ahead of a sample pushed
before it. End to end, one virtual session streams through ``ble stream --packet-s 1`` (a process,
with link drops and lost packets) while its raw log records every notification: replaying the log
through the same decoders gives exactly what ``ble stream`` without the flag publishes, one message
per packet; both must give preprocess the same windows, the coalesced one in far fewer messages.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter, defaultdict
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from bus import Message, Subscriber
from ingest import codec
from ingest.ble import replay_raw_log
from ingest.coalesce import MISTIMED_SLOTS, PERIODIC, Coalescer, is_periodic
from ingest.device import Emit, status
from preprocess import Preprocessor, Window
from tests.conftest import Proc, run_cli

RATES = codec.PERIODIC_RATES_HZ
PACKET = {"bvp": 11, "acc": 6, "eda": 6, "temp": 4}
T0 = 1_700_000_000.0


def chunk(modality: str, t0_s: float, n: int, meta: dict | None = None, fill: float = 0.0) -> Emit:
    shape = (n, 3) if modality == "acc" else (n,)
    dtype = np.int16 if modality == "acc" else np.float64
    samples = (np.arange(np.prod(shape)).reshape(shape) + fill).astype(dtype)
    return Emit(kind="raw", modality=modality, t0_s=t0_s, fs_hz=RATES[modality], samples=samples, meta=meta or {})


def slots(e: Emit) -> np.ndarray:
    """Where preprocess puts each sample: its grid slot."""
    return round(e.t0_s * e.fs_hz) + np.arange(e.samples.shape[0])


FLUSH = "flush"


@st.composite
def sessions(draw: st.DrawFn) -> list[Emit | str]:
    """One device's message sequence: packets that mostly follow on (with the drift slews of the
    live stamps), sometimes after a gap, a jump back, a meta change or an odd size; hr, ibi, tag
    and status events in between; flushes."""
    ends = {m: T0 + draw(st.floats(0, 1)) for m in PERIODIC}
    out: list[Emit | str] = []
    for _ in range(draw(st.integers(1, 120))):
        what = draw(st.sampled_from(["chunk"] * 8 + ["status", "hr", "ibi", "tag", FLUSH]))
        if what == "chunk":
            m = draw(st.sampled_from(sorted(PERIODIC)))
            fs = RATES[m]
            shift = draw(
                st.sampled_from(
                    [0.0] * 6
                    + [
                        draw(st.floats(-0.45, 0.45)) / fs,  # drift: within half a sample
                        draw(st.sampled_from([-2, -1, 1, 2])) / fs,  # a slew across a slot boundary
                        draw(st.floats(0.55, 40)) / fs,  # lost packets
                        -draw(st.floats(0.55, 40)) / fs,  # a clock stepped back
                    ]
                )
            )
            n = draw(st.sampled_from([PACKET[m]] * 4 + [1, 2 * PACKET[m]]))
            meta = {"unit": "counts"} if m == "bvp" and draw(st.integers(0, 9)) else {}
            t0 = ends[m] + shift
            out.append(chunk(m, t0, n, meta, fill=200 * len(out)))  # values unique per packet
            ends[m] = t0 + n / fs
        elif what == "status":
            out.append(status(T0, draw(st.sampled_from(["gap", "on_wrist", "battery", "disconnected", "end"]))))
        elif what == "hr":
            out.append(Emit(kind="raw", modality="hr", t0_s=T0, fs_hz=1.0, samples=np.array([70.0, 71.0])))
        elif what in ("ibi", "tag"):
            out.append(Emit(kind="raw", modality=what, t0_s=T0, fs_hz=0.0, samples=np.array([0.8])))
        else:
            out.append(FLUSH)
    return out


def continues(prev: Emit, nxt: Emit) -> bool:
    """The test's own reading of "carries on" after the held message ``prev``: same rate, meta, shape;
    its next grid slot, within half a sample of where it ends."""
    fs = prev.fs_hz
    end = prev.t0_s + prev.samples.shape[0] / fs
    return (
        nxt.fs_hz == fs
        and nxt.meta == prev.meta
        and nxt.samples.shape[1:] == prev.samples.shape[1:]
        and abs(nxt.t0_s - end) <= 0.5 / fs
        and round(nxt.t0_s * fs) == round(prev.t0_s * fs) + prev.samples.shape[0]
    )


@settings(max_examples=300, deadline=None)
@given(session=sessions(), packet_s=st.sampled_from([0.05, 0.5, 1.0, 2.0]))
def test_coalescer_keeps_samples_slots_and_order(session: list[Emit | str], packet_s: float) -> None:
    co = Coalescer(packet_s)
    # each output with the index of the input that made it hand it out
    outs: list[tuple[int, Emit]] = []
    pushed: Counter[str] = Counter()  # periodic samples pushed so far, per stream
    sent: Counter[str] = Counter()  # ... and handed out so far
    for i, item in enumerate(session):
        got = co.flush() if item == FLUSH else co.push(item)  # type: ignore[arg-type]
        if isinstance(item, Emit) and is_periodic(item):
            pushed[item.modality] += item.samples.shape[0]
        for e in got:
            if is_periodic(e):
                sent[e.modality] += e.samples.shape[0]
            elif e.kind == "status":  # nothing pushed before a status is still held
                assert sent == pushed and co.held() == 0
            outs.append((i, e))
        if isinstance(item, Emit) and not is_periodic(item):  # passes through at once, in order
            assert got[-1] is item
    outs += [(len(session), e) for e in co.flush()]
    assert co.held() == 0

    inputs = [e for e in session if isinstance(e, Emit)]
    for m in PERIODIC:
        ins = [e for e in inputs if e.kind == "raw" and e.modality == m]
        got_m = [e for _, e in outs if e.kind == "raw" and e.modality == m]
        if not ins:
            assert not got_m
            continue
        # the same samples, in the same grid slots, as the packets one by one
        assert np.array_equal(np.concatenate([e.samples for e in got_m]), np.concatenate([e.samples for e in ins]))
        assert np.array_equal(np.concatenate([slots(e) for e in got_m]), np.concatenate([slots(e) for e in ins]))
        for e in got_m:
            assert e.fs_hz == RATES[m] and e.samples.dtype == ins[0].samples.dtype
            # a message is made of input packets: it starts where one of them started, with its meta
            assert any(e.t0_s == i.t0_s and e.meta == i.meta for i in ins)
    # a packet 1 or 2 slots off its stream's end goes out alone (preprocess marks a whole message)
    for m in PERIODIC:
        ins = [e for e in inputs if e.kind == "raw" and e.modality == m]
        for prev, e in pairwise(ins):
            if 0 < abs(slots(e)[0] - slots(prev)[-1] - 1) <= MISTIMED_SLOTS:
                assert any(o is e for _, o in outs)
    # nothing but the periodic streams is held or changed: the rest comes out in input order
    others_in = [e for e in inputs if not is_periodic(e)]
    assert [e for _, e in outs if not is_periodic(e)] == others_in

    # sizes: a message is handed out as soon as it holds S seconds, and with less only at a break
    target = {m: co.target(RATES[m]) for m in PERIODIC}
    last_in: dict[str, Emit] = {}
    for i, item in enumerate(session):
        made = [e for j, e in outs if j == i and is_periodic(e)]
        for e in made:
            n = e.samples.shape[0]
            if e is item:  # alone: it starts 1 or 2 slots off its stream's end (checked above)
                assert e.modality in last_in and 0 < abs(slots(e)[0] - slots(last_in[e.modality])[-1] - 1) <= 2
                continue
            # the push that completed it (its last packet is this one), or one that broke it
            if (
                isinstance(item, Emit)
                and is_periodic(item)
                and item.modality == e.modality
                and e is made[-1]
                and np.array_equal(e.samples[-item.samples.shape[0] :], item.samples)  # unique values per packet
            ):
                assert n >= target[e.modality] and n - item.samples.shape[0] < target[e.modality]
                continue
            # handed out by a break: a status, a flush, the end, or a packet that does not carry on
            breaker = session[i] if i < len(session) else FLUSH
            assert (
                breaker == FLUSH
                or (isinstance(breaker, Emit) and breaker.kind == "status")
                or (
                    isinstance(breaker, Emit)
                    and breaker.modality == e.modality
                    and not continues(e, breaker)  # e: what was held
                )
            ), (e, breaker)
        if isinstance(item, Emit) and is_periodic(item):
            last_in[item.modality] = item


def test_a_bvp_second_is_six_packets_and_eda_stays_per_packet_at_one_second() -> None:
    """The sizes at S = 1: 6 BVP packets (66 samples), 6 ACC packets (36), EDA (6 > 4) and TEMP (4) as sent."""
    co = Coalescer(1.0)
    got: list[Emit] = []
    t = {m: T0 for m in PERIODIC}
    for _ in range(12):
        for m in PERIODIC:
            got += co.push(chunk(m, t[m], PACKET[m]))
            t[m] += PACKET[m] / RATES[m]
    sizes = defaultdict(list)
    for e in got:
        sizes[e.modality].append(e.samples.shape[0])
    assert sizes == {"bvp": [66, 66], "acc": [36, 36], "eda": [6] * 12, "temp": [4] * 12}
    assert co.packets == 48 and co.messages == 28 and co.held() == 0


def test_breaks_hand_out_what_is_held_first() -> None:
    co = Coalescer(1.0)
    a = chunk("bvp", T0, 11)
    assert co.push(a) == []
    # a packet lost in the air: the next starts 11 samples later; the held one goes out first, alone
    b = chunk("bvp", T0 + 22 / 64, 11)
    (out,) = co.push(b)
    assert out.t0_s == a.t0_s and np.array_equal(out.samples, a.samples)
    # a slew within half a sample but onto the next grid slot would move samples: a break too
    t_end = b.t0_s + 11 / 64
    c = chunk("bvp", t_end + 0.4 / 64, 11)
    if round(c.t0_s * 64) != round(b.t0_s * 64) + 11:
        assert [e.t0_s for e in co.push(c)] == [b.t0_s]
    else:
        assert co.push(c) == []
    # a status goes out after everything held, hr/ibi pass through without flushing
    hr = Emit(kind="raw", modality="hr", t0_s=T0, fs_hz=1.0, samples=np.array([60.0]))
    assert co.push(hr) == [hr] and co.held() > 0
    end = status(T0, "end")
    out2 = co.push(end)
    assert out2[-1] is end and co.held() == 0 and all(e.kind == "raw" for e in out2[:-1])
    with pytest.raises(ValueError):
        Coalescer(0.0)


def test_packet_s_is_refused_past_two_seconds_with_the_reason() -> None:
    proc = run_cli("ble", "stream", "--virtual", "1", "--packet-s", "2.5")
    assert proc.returncode == 2
    assert "at most 2 seconds" in proc.stderr and "late" in proc.stderr
    assert "Traceback" not in proc.stderr


# ---- end to end: ble stream --packet-s 1 against virtual wristbands -------------------------------


def _message(device: str, e: Emit) -> Message:
    return Message(
        kind=e.kind,
        device=device,
        modality=e.modality,
        seq=0,
        t0_s=e.t0_s,
        fs_hz=e.fs_hz,
        samples=e.samples,
        meta=e.meta,
    )


def _windows(messages: list[Message]) -> list[Window]:
    pre = Preprocessor()
    out: list[Window] = []
    for msg in messages:
        out += pre.push(msg, now_s=msg.t0_s)
    return out + pre.flush()


def _window_difference(a: Window, b: Window) -> str:
    """What differs between two windows ("" when nothing does)."""
    if (a.device, a.t_start_s, a.t_end_s, a.tags_s) != (b.device, b.t_start_s, b.t_end_s, b.tags_s):
        return f"span {a.t_start_s}..{a.t_end_s} vs {b.t_start_s}..{b.t_end_s}"
    qa, qb = a.quality.to_dict(), b.quality.to_dict()
    if qa != qb:
        return f"{a.t_start_s}: quality {[(k, qa[k], qb.get(k)) for k in qa if qa[k] != qb.get(k)]}"
    for m in a.signals:
        if not np.array_equal(a.signals[m], b.signals[m], equal_nan=True) or not np.array_equal(a.masks[m], b.masks[m]):
            return f"{a.t_start_s}: {m} differs"
    return "" if dict(a.present) == dict(b.present) else f"{a.t_start_s}: present"


def test_ble_stream_packet_s_gives_the_same_windows_in_fewer_messages(hub, procs, tmp_path) -> None:
    raw_log = tmp_path / "raw.jsonl"
    devices = 2
    args = [
        *("ble", "stream", "--bus", hub.address, "--virtual", str(devices), "--minutes", "2"),
        *("--time-scale", "20", "--duration-s", "150", "--drop", "0.01", "--disconnect-every-s", "50"),
        *("--packet-s", "1", "--raw-log", str(raw_log), "--wait-s", "30", "--json"),
    ]

    async def tap() -> tuple[list[Message], Proc]:
        async with Subscriber(hub.address, ["raw/", "status/"]) as sub:
            ble = Proc(args)
            procs.append(ble)
            got: list[Message] = []
            ended = 0
            while ended < devices:
                msg = await sub.recv(timeout_s=60.0)
                got.append(msg)
                ended += msg.kind == "status" and msg.meta.get("event") == "end"
            return got, ble

    got, ble = asyncio.run(tap())
    out, err = ble.popen.communicate(timeout=60)
    assert ble.popen.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])

    live: dict[str, list[Message]] = defaultdict(list)
    for m in got:
        live[m.device].append(m)
    per_packet: dict[str, list[Message]] = defaultdict(list)  # what `ble stream` without the flag publishes
    for device, e in replay_raw_log(raw_log):
        per_packet[device].append(_message(device, e))
    assert sorted(live) == sorted(per_packet) and len(live) == devices

    for dev_report in report["devices"]:
        device = dev_report["device"]
        msgs, packets = live[device], per_packet[device]
        assert msgs[-1].meta["event"] == "end"  # after every sample of the device
        events = [m.meta["event"] for m in msgs if m.kind == "status"]
        assert events.count("connected") >= 3 and "gap" in events  # it reconnected and lost packets

        # the same samples at the same times, stream by stream, in far fewer messages
        for mod in sorted(PERIODIC):
            co = [x for x in msgs if x.kind == "raw" and x.modality == mod]
            pk = [x for x in packets if x.kind == "raw" and x.modality == mod]
            assert [x.seq for x in co] == list(range(len(co)))
            assert np.array_equal(np.concatenate([x.samples for x in co]), np.concatenate([x.samples for x in pk]))
            fs = RATES[mod]
            co_slots = np.concatenate([round(x.t0_s * fs) + np.arange(x.n) for x in co])
            pk_slots = np.concatenate([round(x.t0_s * fs) + np.arange(x.n) for x in pk])
            assert np.array_equal(co_slots, pk_slots), mod
            assert dev_report["messages"][mod] == len(co) and dev_report["samples"][mod] == sum(x.n for x in co)
            if mod in ("bvp", "acc"):  # gathered into about a second: 6 packets, bar the breaks
                assert np.median([x.n for x in co]) == 6 * PACKET[mod]
                assert len(co) < len(pk) / 4, (mod, len(co), len(pk))
            else:  # one EDA packet (1.5 s) or TEMP packet (1 s) already holds a second
                assert len(co) == len(pk)
        # everything else is published as it came
        for mod in ("hr", "ibi", "battery", "tag"):
            assert [x.t0_s for x in msgs if x.kind == "raw" and x.modality == mod] == [
                x.t0_s for x in packets if x.kind == "raw" and x.modality == mod
            ]

        # and preprocess cuts the same windows from both
        co_windows = _windows(msgs)
        pk_windows = _windows(packets)
        assert len(co_windows) >= 20
        assert len(co_windows) == len(pk_windows)
        assert [d for a, b in zip(co_windows, pk_windows, strict=True) if (d := _window_difference(a, b))] == []
        periodic = sum(dev_report["messages"][m] for m in PERIODIC)
        assert periodic < 0.4 * sum(dev_report["packets"][m] for m in PERIODIC)


def test_no_sample_is_held_past_a_status_or_across_a_reconnect(hub) -> None:
    """In-process, on the Link itself: every status event finds nothing held, and a sample never
    waits longer than its message's span plus the packet it came in (no data-time stalls)."""
    from ingest.ble import LinkConfig, Wristband, device_id, stream
    from ingest.clocks import ScaledClock
    from ingest.virtual import Faults, VirtualE4, VirtualRadio, virtual_address, virtual_recordings

    async def main() -> tuple[list[tuple[float, Message]], list]:
        clock = ScaledClock(20.0)
        radio = VirtualRadio()
        (rec,) = virtual_recordings(1, minutes=1.0, seed=3)
        radio.add(VirtualE4(virtual_address(0), rec, clock=clock, faults=Faults(disconnect_every_s=12.0, seed=1)))
        bands = [Wristband(address=a, device=device_id(a)) for a in radio.devices]
        config = LinkConfig(packet_s=2.0, backoff_initial_s=0.05)
        async with Subscriber(hub.address, ["raw/", "status/"]) as sub:
            from bus import Publisher

            async with Publisher(hub.address) as pub:
                assert not await pub.wait_for_subscribers([f"raw/bvp/{bands[0].device}/"], 10)
                task = asyncio.create_task(
                    stream(pub, bands, config=config, clock=clock, backend=radio.backend(), duration_s=45.0)
                )
                got: list[tuple[float, Message]] = []
                while not (got and got[-1][1].meta.get("event") == "end"):
                    msg = await sub.recv(timeout_s=30.0)
                    got.append((clock.now(), msg))
                links = await task
        return got, links

    got, links = asyncio.run(main())
    (link,) = links
    assert link._coalescer is not None and link._coalescer.held() == 0
    st_ = link.stats
    assert sum(st_.messages[m] for m in PERIODIC) < sum(st_.ingest.packets[m] for m in PERIODIC) / 3
    published = Counter[str]()
    for _, m in got:
        if m.kind == "raw" and m.modality in PERIODIC:
            published[m.modality] += m.n
    assert published == st_.ingest.samples  # nothing held back or lost at the drops and the stop
    # a disconnected status follows every packet of its link: what comes after it is the next
    # link's, whose samples are stamped on arrival, after the report (snapped to the old grid:
    # within half a sample)
    dropped_at: float | None = None
    for _, m in got:
        if m.kind == "status" and m.meta["event"] == "disconnected":
            dropped_at = m.t0_s
        elif m.kind == "raw" and m.modality in PERIODIC and dropped_at is not None:
            assert m.t0_s + (m.n - 0.5) / m.fs_hz > dropped_at, (m.modality, m.t0_s, dropped_at)
    assert st_.disconnects >= 2
    # S = 2 keeps each message within S rounded up to whole packets: EDA 3 s, the others about 2 s
    for _, m in got:
        if m.kind == "raw" and m.modality in PERIODIC:
            assert m.n <= max(PACKET[m.modality] * math.ceil(2.0 * RATES[m.modality] / PACKET[m.modality]), 1)
    for a, b in pairwise([m for _, m in got if m.kind == "raw" and m.modality == "bvp"]):
        # per stream, in time order (the live stamps themselves overlap a packet by a sample or two now and then)
        assert b.t0_s >= a.t0_s + (a.n - 2.5) / 64


def test_e4_client_packet_s_relays_the_same_samples_in_larger_messages(hub) -> None:
    """``e4-client --packet-s``: the E4 streaming-server path gathers samples the same way."""
    from ingest.e4server import chunk_samples
    from tests.test_e4server import relay_eda

    assert chunk_samples("eda", 2.0) == 8 and chunk_samples("eda", 1.0) == chunk_samples("eda") == 6
    assert chunk_samples("bvp", 1.0) == 64 and chunk_samples("bvp") == 11

    direct, relayed = relay_eda(hub.address, packet_s=2.0)
    assert [m.n for m in relayed] == [8] * len(relayed)  # 2 s of EDA where a packet holds 1.5 s
    value_at = {round(float(t), 3): v for m in direct for t, v in zip(m.sample_times(), m.samples, strict=True)}
    for a, b in pairwise(relayed):
        assert b.t0_s == pytest.approx(a.t0_s + a.n / 4.0, abs=1e-3)  # one after the other
    matched = 0
    for m in relayed:
        assert m.fs_hz == 4.0
        for t, v in zip(m.sample_times(), m.samples, strict=True):
            if (w := value_at.get(round(float(t), 3))) is not None:
                assert v == pytest.approx(w, rel=1e-5)
                matched += 1
    assert matched >= 24
