"""The MQTT sink against a real Mosquitto (password file, ACL): retained states, availability,
Home Assistant discovery, a broker restart mid-stream, a full buffer, a wrong password and a
killed store. Read back with ``mosquitto_sub`` and with a second client (aiomqtt)."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import aiomqtt
import pytest

from common.errors import UserError
from storage.mqtt import MqttSink
from storage.records import AffectRecord, AlertRecord, PhysioRecord, StatusRecord
from storage.target import MqttTarget, parse_sink
from tests.conftest import Proc, run_cli
from tests.servers import MosquittoServer

__all__ = ["mosquitto", "mosquitto_tls"]  # the fixtures, used below
from tests.servers import mosquitto, mosquitto_tls

T0 = 1_700_000_000.0


def affect(t: float, device: str, task: str, label: str | None, p: float = 0.8) -> AffectRecord:
    other = {"stress": "baseline", "anxiety": "low", "emotion": "low"}[task]
    probs = () if label is None else tuple(sorted({label: p, (other if label != other else "high"): 1 - p}.items()))
    return AffectRecord(
        time_s=t,
        t_start_s=t - 60,
        device=device,
        task=task,
        source="replay",
        model="m",
        label=label,
        confidence=p if label else None,
        probs=probs,
        status="ok" if label else "low_quality",
        off_wrist=label is None,
        motion=False,
        missing_fraction=0.0,
    )


def session(device: str, n: int, start: float = T0) -> list:
    out: list = []
    for i in range(n):
        t = start + 10 * i
        out.append(affect(t, device, "stress", "stress" if i % 3 else "baseline", 0.6 + 0.01 * i))
        out.append(affect(t, device, "anxiety", "high" if i % 2 else None))
        out += [
            PhysioRecord(time_s=t, device=device, source="replay", signal=s, value=v + i)
            for s, v in (("eda_us", 1.5), ("temp_c", 32.0), ("hr_bpm", 70.0))
        ]
    return out


#: the keys Home Assistant's MQTT discovery reads for these components (its sensor and binary_sensor
#: platform schemas, the common availability/device/origin ones included), and the device classes used
_COMMON = {
    "name",
    "unique_id",
    "state_topic",
    "value_template",
    "availability",
    "availability_mode",
    "payload_available",
    "payload_not_available",
    "qos",
    "device",
    "origin",
    "icon",
    "json_attributes_topic",
    "entity_category",
    "device_class",
}
HA_KEYS = {"sensor": _COMMON | {"unit_of_measurement", "state_class"}, "binary_sensor": _COMMON}
HA_DEVICE_CLASSES = {"sensor": {None, "battery", "temperature"}, "binary_sensor": {None, "problem"}}


def mqtt_target(sink: str) -> MqttTarget:
    """``parse_sink`` of an ``mqtt(s)://`` SINK."""
    t = parse_sink(sink)
    assert isinstance(t, MqttTarget), sink
    return t


def target(server: MosquittoServer, password: str | None = None) -> MqttTarget:
    return mqtt_target(server.sink()).with_credentials(None, password or server.password)


async def read_retained(server: MosquittoServer, topics: list[str], expect: int, timeout_s: float = 10.0) -> dict:
    """The retained messages as a second client (Home Assistant's user, aiomqtt) receives them."""
    got: dict[str, bytes] = {}
    async with aiomqtt.Client("127.0.0.1", server.port, username="homeassistant", password=server.reader_password) as c:
        for t in topics:
            await c.subscribe(t, qos=1)
        async with asyncio.timeout(timeout_s):
            async for msg in c.messages:
                if msg.retain:
                    got[str(msg.topic)] = msg.payload
                if len(got) >= expect:
                    break
    return got


def last_states(records: list) -> dict[str, AffectRecord]:
    out = {}
    for r in records:
        if isinstance(r, AffectRecord):
            out[f"m3sense/{r.device}/{r.task}/state"] = r
    return out


def test_retained_states_availability_and_home_assistant_discovery(mosquitto: MosquittoServer) -> None:
    asyncio.run(_retained_states_availability_and_home_assistant_discovery(mosquitto))


async def _retained_states_availability_and_home_assistant_discovery(mosquitto: MosquittoServer) -> None:
    records = session("e4-a", 12) + session("e4 b", 5)
    records += [
        StatusRecord(
            time_s=T0 + 200,
            device="e4-a",
            source="live",
            event="battery",
            value=None,
            detail=json.dumps({"battery": 0.62}),
        ),
        AlertRecord(
            time_s=T0 + 210,
            device="e4-a",
            task="stress",
            rule="stress",
            event="raise",
            confidence=0.81,
            text="stress at or above 0.7 for 5.0 min",
        ),
    ]
    async with MqttSink(target(mosquitto)) as sink:
        for i in range(0, len(records), 7):  # as the store writes: a few records at a time
            await sink.write(records[i : i + 7])
        await sink.flush()
        assert sink.counters.written == len(records) and sink.counters.pending == 0
        assert sink.counters.affect_written == sum(isinstance(r, AffectRecord) for r in records)
        seen = mosquitto.retained("m3sense/#", "homeassistant/#")

        # retained state = the last record per device and task
        states = last_states(records)
        for topic, r in states.items():
            payload = json.loads(seen[topic])
            assert payload["t"] == r.time_s and payload["label"] == r.label and payload["status"] == r.status
            assert payload["confidence"] == r.confidence
        assert json.loads(seen["m3sense/e4-a/physio"]) == {
            "eda_us": 1.5 + 11,
            "temp_c": 32.0 + 11,
            "hr_bpm": 70.0 + 11,
            "t": T0 + 110,
        }
        device = json.loads(seen["m3sense/e4-a/device"])
        assert device["battery"] == 0.62 and device["on_wrist"] is True  # the last anxiety window was on the wrist
        assert json.loads(seen["m3sense/e4-a/alert"])["event"] == "raise"
        assert seen["m3sense/status"] == "online" and seen["m3sense/e4-a/availability"] == "online"

        # discovery: one config per entity, unique ids, one device block per wristband, topics that exist
        configs = {t: json.loads(p) for t, p in seen.items() if t.startswith("homeassistant/")}
        assert all(t.endswith("/config") and t.split("/")[1] in ("sensor", "binary_sensor") for t in configs)
        ids = [c["unique_id"] for c in configs.values()]
        assert len(ids) == len(set(ids)) == len(configs)
        for topic, c in configs.items():
            assert set(c) <= HA_KEYS[topic.split("/")[1]], set(c) - HA_KEYS[topic.split("/")[1]]
            assert c.get("device_class") in HA_DEVICE_CLASSES[topic.split("/")[1]]
            assert topic.split("/")[2] == c["unique_id"]
            assert c["device"]["identifiers"] and c["device"]["name"] and c["name"]
            assert c["state_topic"] in seen, c
            assert {a["topic"] for a in c["availability"]} <= set(seen) and c["availability_mode"] == "all"
            assert "{{" in c["value_template"]
        by_device: dict[str, set[str]] = {}
        for c in configs.values():
            ident = c["device"]["identifiers"][0]
            by_device.setdefault(ident, set()).add(c["unique_id"].removeprefix(ident + "_"))
        assert by_device["m3sense_e4-a"] == {
            "stress",
            "stress_confidence",
            "anxiety",
            "anxiety_confidence",
            "eda",
            "skin_temperature",
            "heart_rate",
            "battery",
            "on_wrist",
            "alert",
        }
        assert by_device["m3sense_e4_b"] == {
            "stress",
            "stress_confidence",
            "anxiety",
            "anxiety_confidence",
            "eda",
            "skin_temperature",
            "heart_rate",
            "on_wrist",
        }

        # a second client sees the same retained states
        other = await read_retained(mosquitto, ["m3sense/+/+/state"], expect=len(states))
        assert {t: json.loads(p)["t"] for t, p in other.items()} == {t: r.time_s for t, r in states.items()}
    after = mosquitto.retained("m3sense/#")  # a clean stop: the store and its devices say offline
    assert after["m3sense/status"] == "offline"
    assert after["m3sense/e4-a/availability"] == after["m3sense/e4 b/availability"] == "offline"


def test_broker_restart_mid_stream_loses_nothing(mosquitto: MosquittoServer) -> None:
    asyncio.run(_broker_restart_mid_stream_loses_nothing(mosquitto))


async def _broker_restart_mid_stream_loses_nothing(mosquitto: MosquittoServer) -> None:
    records = session("dev1", 60)
    half = len(records) // 2
    async with MqttSink(target(mosquitto), retry_min_s=0.1, retry_max_s=0.5) as sink:
        c = sink.counters
        await sink.write(records[:half])
        await sink.flush()
        assert c.written == half
        mosquitto.stop()
        await c.wait_for(lambda c: c.failures > 0 or not sink.connected, 30)  # the sink noticed
        for i in range(half, len(records), 5):  # the stream goes on while the broker is away
            await sink.write(records[i : i + 5])
        assert c.pending > 0 and c.dropped == 0
        mosquitto.start()  # no persistence: every retained message is gone
        await c.wait_for(lambda c: c.written == len(records) and c.pending == 0, 60)
        assert sink.connects >= 2
        seen = mosquitto.retained("m3sense/#", "homeassistant/#")
        for topic, r in last_states(records).items():
            assert json.loads(seen[topic])["t"] == r.time_s
        assert any(t.startswith("homeassistant/sensor/") for t in seen)  # discovery restored too
        assert seen["m3sense/status"] == "online"
    assert c.dropped == 0 and c.pending == 0


def test_a_full_buffer_drops_the_oldest_and_counts_them(mosquitto: MosquittoServer) -> None:
    asyncio.run(_a_full_buffer_drops_the_oldest_and_counts_them(mosquitto))


async def _a_full_buffer_drops_the_oldest_and_counts_them(mosquitto: MosquittoServer) -> None:
    mosquitto.stop()
    sink = MqttSink(target(mosquitto), max_pending=4, inflight=2, retry_min_s=0.1, retry_max_s=0.2, close_timeout_s=0.5)
    async with sink:
        assert not sink.connected
        await sink.write([affect(T0 + 10 * i, "dev1", "stress", "stress") for i in range(10)])
        assert sink.counters.dropped == 6 and sink.counters.pending == 4  # the 2 oldest were kept: maybe in flight
    assert sink.counters.dropped == 10 and sink.counters.pending == 0  # still away at exit: the rest is lost
    assert sink.counters.written == 0 and sink.last_error is not None
    assert "buffered when the store stopped" in sink.last_error


def test_wrong_password_is_refused_with_one_line(mosquitto: MosquittoServer, bus_address: str, tmp_path) -> None:
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password\n")
    proc = run_cli(
        "store",
        "--bus",
        bus_address,
        "--sink",
        f"sqlite:{tmp_path / 'a.db'}",
        "--sink",
        mosquitto.sink(),
        "--mqtt-password-file",
        str(wrong),
        "--json",
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    assert len(errors) == 1 and "refused the login of user m3sense" in errors[0], proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["exit_code"] == 2
    # the same with the right password from a file starts and stops cleanly
    pw = tmp_path / "mqtt-password"
    pw.write_text(mosquitto.password + "\n")
    p = Proc(
        [
            "store",
            "--bus",
            bus_address,
            "--sink",
            f"sqlite:{tmp_path / 'b.db'}",
            "--sink",
            mosquitto.sink(),
            "--mqtt-password-file",
            str(pw),
            "--json",
        ]
    )
    try:
        p.wait_for_stderr("store: SqliteSink(")  # printed once every sink is open
        p.popen.send_signal(signal.SIGTERM)
        out, err = p.popen.communicate(timeout=60)
    finally:
        p.stop()
    assert p.popen.returncode == 0, err
    report = json.loads(out.splitlines()[-1])
    assert [s["sink"] for s in report["sinks"]] == [
        f"sqlite:{tmp_path / 'b.db'}",
        mosquitto.sink().split("?")[0] + "?user=m3sense",
    ]


def test_a_killed_store_shows_offline(mosquitto: MosquittoServer, bus_address: str, tmp_path) -> None:
    pw = tmp_path / "mqtt-password"
    pw.write_text(mosquitto.password)
    p = Proc(
        [
            "store",
            "--bus",
            bus_address,
            "--sink",
            f"sqlite:{tmp_path / 'a.db'}",
            "--sink",
            mosquitto.sink(),
            "--mqtt-password-file",
            str(pw),
        ]
    )
    try:
        p.wait_for_stderr("store: SqliteSink(")  # printed once every sink is open
        deadline = time.monotonic() + 20
        while mosquitto.retained("m3sense/status", timeout_s=1).get("m3sense/status") != "online":
            assert time.monotonic() < deadline, "the store never said online"
        p.popen.kill()  # SIGKILL: no clean shutdown, only the broker's Last Will can tell
        p.popen.wait(timeout=10)
        deadline = time.monotonic() + 20
        while mosquitto.retained("m3sense/status", timeout_s=1).get("m3sense/status") != "offline":
            assert time.monotonic() < deadline, "the store's availability never went offline"
    finally:
        p.stop()


def test_the_shipped_acl_lets_home_assistant_read_but_not_write_states(mosquitto: MosquittoServer) -> None:
    async def as_home_assistant() -> None:
        async with aiomqtt.Client(
            "127.0.0.1", mosquitto.port, username="homeassistant", password=mosquitto.reader_password
        ) as c:
            await c.publish("m3sense/fake/stress/state", b'{"label":"stress"}', qos=1, retain=True)
            await c.publish("homeassistant/status", b"online", qos=1, retain=True)

    asyncio.run(as_home_assistant())
    seen = mosquitto.retained("m3sense/#", "homeassistant/#")
    assert seen == {"homeassistant/status": "online"}  # the ACL dropped the state it may not write


def test_mqtt_sink_addresses() -> None:
    t = mqtt_target("mqtts://broker.example:8883?user=ha&ca=/etc/ca.pem&prefix=home/e4")
    assert (t.host, t.port, t.tls, t.username, t.prefix, t.discovery) == (
        "broker.example",
        8883,
        True,
        "ha",
        "home/e4",
        "homeassistant",
    )
    assert t.with_credentials("other", "secret").username == "ha" and "secret" not in repr(
        t.with_credentials(None, "secret")
    )
    assert mqtt_target("mqtt://localhost?discovery=none").discovery == ""
    for bad, why in [
        ("mqtt://broker.example", "in clear"),
        ("mqtt://u:p@localhost", "no credentials"),
        ("mqtt://localhost?qos=2", "unknown parameter"),
        ("mqtt://localhost?prefix=a/%23", "topic levels"),
        ("mqtt://localhost?ca=/x.pem", "mqtts"),
    ]:
        with pytest.raises(UserError, match=why):
            parse_sink(bad)


def test_store_counts_per_sink_what_a_broker_gone_for_good_lost(
    mosquitto: MosquittoServer, bus_address: str, tmp_path
) -> None:
    """SQLite gets everything, the broker goes away mid-stream and never comes back: the store
    says so per sink, in its JSON, its last line and exit code 1."""
    from bus import Hub, Publisher
    from storage.node import device_topics
    from tests.servers import affect_meta

    pw = tmp_path / "mqtt-password"
    pw.write_text(mosquitto.password)
    db = tmp_path / "a.db"
    with Hub(bus_address):
        p = Proc(
            [
                "store",
                "--bus",
                bus_address,
                "--sink",
                f"sqlite:{db}",
                "--sink",
                mosquitto.sink(),
                "--mqtt-password-file",
                str(pw),
                "--json",
            ]
        )
        try:
            p.wait_for_stderr("store: SqliteSink(")

            async def publish(ends: list[float]) -> None:
                async with Publisher(bus_address) as pub:
                    assert await pub.wait_for_subscribers(device_topics("dev1"), 30) == []
                    for t in ends:
                        await pub.publish("affect", "dev1", t0_s=t, fs_hz=0, meta=affect_meta(t))

            asyncio.run(publish([T0 + 10 * i for i in range(5)]))
            deadline = time.monotonic() + 30  # the handshake: the last window before the outage is on the broker
            while (
                json.loads(
                    mosquitto.retained("m3sense/dev1/emotion/state", timeout_s=1).get(
                        "m3sense/dev1/emotion/state", '{"t": 0}'
                    )
                )["t"]
                != T0 + 40
            ):
                assert time.monotonic() < deadline
            mosquitto.stop()
            asyncio.run(publish([T0 + 10 * i for i in range(5, 9)]))
            p.popen.send_signal(signal.SIGTERM)
            out, err = p.popen.communicate(timeout=90)
        finally:
            p.stop()
    assert p.popen.returncode == 1, err
    report = json.loads(out.splitlines()[-1])
    sqlite_report, mqtt_report = report["sinks"]
    assert report["exit_code"] == 1 and report["written"] == sqlite_report["written"] == 27
    assert (sqlite_report["dropped"], mqtt_report["written"], mqtt_report["dropped"]) == (0, 15, 12)
    assert "buffered when the store stopped" in mqtt_report["error"]
    last = err.splitlines()[-1]
    assert "12 lost" in last and "mqtt://127.0.0.1" in last


def test_tls_with_the_brokers_ca_and_refused_without_it(mosquitto_tls: MosquittoServer) -> None:
    server = mosquitto_tls
    good = mqtt_target(f"mqtts://127.0.0.1:{server.tls_port}?user=m3sense&ca={server.ca_file}")
    unknown_ca = mqtt_target(f"mqtts://127.0.0.1:{server.tls_port}?user=m3sense")

    async def main() -> None:
        records = session("dev1", 3)
        async with MqttSink(good.with_credentials(None, server.password)) as sink:
            assert sink.connected
            await sink.write(records)
            await sink.flush()
            assert sink.counters.written == len(records)
        async with MqttSink(unknown_ca.with_credentials(None, server.password), close_timeout_s=0.2) as sink:
            assert not sink.connected and sink.last_error is not None
            assert "certificate verify failed" in sink.last_error.lower()

    asyncio.run(main())
    assert json.loads(server.retained("m3sense/dev1/stress/state")["m3sense/dev1/stress/state"])["t"] == T0 + 20
