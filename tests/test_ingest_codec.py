"""E4 BLE packet codec: hand-written vectors from the public notes, round trips, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ingest import codec
from ingest.codec import DecodeError, Layout
from tests.conftest import run_cli

# -- hand-written packets and what e4-facts.md section 1 says they mean ------------------


def test_gatt_uuids_are_the_reverse_engineered_ones() -> None:
    assert codec.CHARACTERISTICS["bvp"] == "00003ea1-0000-1000-8000-00805f9b34fb"
    assert codec.CHARACTERISTICS["acc"] == "00003ea3-0000-1000-8000-00805f9b34fb"
    assert codec.CHARACTERISTICS["temp"] == "00003ea6-0000-1000-8000-00805f9b34fb"
    assert codec.CHARACTERISTICS["eda"] == "00003ea8-0000-1000-8000-00805f9b34fb"
    assert codec.CHARACTERISTICS["command"] == "00003e71-0000-1000-8000-00805f9b34fb"


def test_start_command_is_01_then_unix_seconds_little_endian() -> None:
    # 1_700_000_000 = 0x6553F100
    assert codec.start_command(Layout(), 1_700_000_000.7) == bytes.fromhex("0100f15365")
    assert codec.start_command(Layout(start_command="02"), 0) == b"\x02"


def test_eda_vector_one_megaohm_is_one_microsiemens() -> None:
    # 6 x uint24 BE resistance: 1 MOhm, 500 kOhm, 2 MOhm, 0 (open: 0 µS), 10 kOhm, 250 kOhm; counter 0x0102
    pkt = codec.decode("eda", bytes.fromhex("0f424007a1201e848000000000271003d0900102"))
    assert pkt.values.tolist() == pytest.approx([1.0, 2.0, 0.5, 0.0, 100.0, 4.0])
    assert pkt.counter == 0x0102
    little = Layout(counter_byteorder="little")
    assert codec.decode("eda", bytes.fromhex("0f4240" * 6 + "0201"), little).counter == 0x0102


def test_temp_vector_uses_the_rtools_offset_and_can_take_the_thermopile_one() -> None:
    # uint16 LE 0x3C43 = 15427 -> 15427 * 0.02 - 275.54 = 33.0 °C; 4 trailing metadata bytes
    data = bytes.fromhex("433c433c443c423cdeadbeef")
    assert codec.decode("temp", data).values.tolist() == pytest.approx([33.0, 33.0, 33.02, 32.98])
    thermopile = codec.decode("temp", data, Layout(temp_offset_c=-273.15)).values
    assert thermopile[0] == pytest.approx(35.39)


def test_acc_vector_matches_the_streaming_server_example() -> None:
    # the streaming-server docs show "E4_Acc ... 51 -2 -10": int8 0x33 0xFE 0xF6
    pkt = codec.decode("acc", bytes.fromhex("33fef6" * 6 + "0005"))
    assert pkt.values.tolist() == [[51, -2, -10]] * 6
    assert pkt.values.dtype == np.int16 and pkt.counter == 5


def test_bvp_vectors_are_seven_bit_twos_complement_fields_msb_first() -> None:
    ones = codec.decode("bvp", b"\xff" * 20)
    assert (ones.values == -1).all() and ones.counter == 63
    first = codec.decode("bvp", b"\x02" + bytes(18) + b"\x05")  # 0000001|0 ... : field 0 is +1
    assert first.values[0].tolist() == [1, 0] and (first.values[1:] == 0).all() and first.counter == 5
    lows = codec.decode("bvp", b"\x81" + bytes(19))  # 1000000|1 000000.. : -64, then -64
    assert lows.values[0].tolist() == [-64, -64] and (lows.values[1:] == 0).all()
    assert codec.decode("bvp", bytes(20), Layout(bvp_counter=False)).counter is None


def test_battery_and_button() -> None:
    assert codec.decode("battery", b"\x50").values.tolist() == [0.8]
    assert codec.decode("button", b"\x01" + bytes(19)).values.tolist() == [True]
    assert codec.decode("button", bytes(20)).values.tolist() == [False]


# -- encoder -> decoder, every characteristic ---------------------------------------------

int7 = st.integers(-64, 63)


@given(st.lists(int7, min_size=22, max_size=22), st.integers(0, 63))
def test_bvp_round_trip(fields: list[int], counter: int) -> None:
    pairs = np.array(fields).reshape(11, 2)
    pkt = codec.decode("bvp", codec.encode_bvp(pairs, counter))
    assert pkt.values.tolist() == pairs.tolist() and pkt.counter == counter


@given(
    st.lists(st.floats(0.06, 100.0), min_size=6, max_size=6), st.integers(0, 65535), st.sampled_from(["big", "little"])
)
def test_eda_round_trip(us: list[float], counter: int, order: str) -> None:
    layout = Layout(counter_byteorder=order)  # type: ignore[arg-type]
    pkt = codec.decode("eda", codec.encode_eda(us, counter, layout), layout)
    raw = codec.eda_to_raw(np.array(us))
    # 1e6 / raw is exact; the only error is rounding the resistance to whole ohms (uint24 stops
    # at 16.8 MOhm, 0.0596 µS)
    assert pkt.values == pytest.approx(us, rel=0.6 / raw.min())
    assert pkt.counter == counter


@given(st.lists(st.floats(20.0, 45.0), min_size=4, max_size=4), st.sampled_from([-275.54, -273.15]))
def test_temp_round_trip(celsius: list[float], offset: float) -> None:
    layout = Layout(temp_offset_c=offset)
    pkt = codec.decode("temp", codec.encode_temp(celsius, layout), layout)
    assert np.abs(pkt.values - celsius).max() <= 0.01 + 1e-9


@given(
    st.lists(st.tuples(st.integers(-128, 127), st.integers(-128, 127), st.integers(-128, 127)), min_size=6, max_size=6),
    st.integers(0, 65535),
)
def test_acc_round_trip(xyz: list[tuple[int, int, int]], counter: int) -> None:
    pkt = codec.decode("acc", codec.encode_acc(np.array(xyz), counter))
    assert pkt.values.tolist() == [list(v) for v in xyz] and pkt.counter == counter


@given(st.integers(0, 100), st.booleans())
def test_battery_and_button_round_trip(percent: int, pressed: bool) -> None:
    assert codec.decode("battery", codec.encode_battery(percent / 100)).values[0] == percent / 100
    assert bool(codec.decode("button", codec.encode_button(pressed)).values[0]) is pressed


@given(st.lists(st.floats(-500, 500), min_size=11, max_size=200))
def test_bvp_levels_survive_encoding_up_to_the_delta_limit(levels: list[float]) -> None:
    """Whatever the device samples, integrating the decoded deltas reproduces the encoder's
    own reconstruction exactly, across packet boundaries."""
    x = np.array(levels)
    deltas, final = codec.bvp_to_deltas(x)
    n = len(deltas) // 11 * 11
    integrator = codec.BvpIntegrator()
    got = [
        integrator.push(codec.decode("bvp", codec.encode_bvp(np.stack([d, d], axis=1))))
        for d in deltas[:n].reshape(-1, 11)
    ]
    if n:
        assert np.concatenate(got).tolist() == np.cumsum(deltas[:n]).tolist()
    # where the signal moves by at most 63 counts a sample, nothing is lost to clamping
    if np.all(np.abs(np.diff(np.rint(np.concatenate([[0], x])))) <= 63):
        assert np.cumsum(deltas).tolist() == np.rint(x).tolist()
        assert final == int(np.rint(x[-1]))


# -- bad input: a DecodeError with a reason, nothing else ---------------------------------


@pytest.mark.parametrize(
    "char,good", [("bvp", 20), ("eda", 20), ("temp", 12), ("acc", 20), ("battery", 1), ("button", 20)]
)
def test_wrong_lengths_are_named(char: str, good: int) -> None:
    with pytest.raises(DecodeError) as short:
        codec.decode(char, bytes(good - 1))
    assert short.value.reason == "truncated"
    with pytest.raises(DecodeError) as long:
        codec.decode(char, bytes(good + 3))
    assert long.value.reason == "oversized"


def test_unknown_characteristic_and_impossible_battery() -> None:
    with pytest.raises(DecodeError) as unknown:
        codec.decode("ibi", bytes(20))
    assert unknown.value.reason == "unknown"
    with pytest.raises(DecodeError) as battery:
        codec.decode("battery", b"\xc8")
    assert battery.value.reason == "range"


@settings(max_examples=300)
@given(st.sampled_from(codec.STREAMS), st.binary(max_size=64))
def test_fuzzed_packets_decode_or_raise_decode_error(char: str, data: bytes) -> None:
    try:
        pkt = codec.decode(char, data)
    except DecodeError as exc:
        assert exc.reason in {"truncated", "oversized", "range"}
    else:
        assert pkt.char == char and pkt.values.size > 0


def test_layout_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Layout(start_command="zz")
    with pytest.raises(ValueError):
        Layout(temp_samples=0)


# -- the command ----------------------------------------------------------------------------


def test_ble_decode_prints_json() -> None:
    proc = run_cli("ble", "decode", "--char", "acc", "33 fe f6 " * 6 + "00 05", check=True)
    out = json.loads(proc.stdout)
    assert out["samples"] == [[51, -2, -10]] * 6 and out["counter"] == 5 and out["unit"] == "1/64 g"
    bvp = json.loads(run_cli("ble", "decode", "--char", "bvp", "02" + "00" * 18 + "05", check=True).stdout)
    assert bvp["green_deltas"][0] == 1 and bvp["samples"] == [1.0] * 11 and bvp["counter"] == 5


@pytest.mark.parametrize(
    "args,message",
    [
        (("--char", "eda", "0f42"), "truncated"),
        (("--char", "eda", "xyz"), "not a hex string"),
        (("--char", "eda"), "give --char NAME and the packet"),
    ],
)
def test_ble_decode_bad_input_is_one_line_exit_2(args: tuple[str, ...], message: str) -> None:
    proc = run_cli("ble", "decode", *args)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_ble_decode_replays_a_raw_log(tmp_path) -> None:
    eda = [codec.encode_eda([1.0, 2.0, 0.5, 4.0, 5.0, 10.0], counter=k).hex() for k in range(3)]
    log = tmp_path / "raw.jsonl"
    log.write_text(
        "\n".join(
            [
                json.dumps({"t": 100.0, "device": "d1", "char": "link", "data": ""}),
                json.dumps({"t": 101.5, "device": "d1", "char": "eda", "data": eda[0]}),
                "{not json",
                json.dumps({"t": 104.5, "device": "d1", "char": "eda", "data": eda[2]}),  # packet 1 lost
                json.dumps({"t": 105.0, "device": "d1", "char": "battery", "data": "4b"}),
            ]
        )
        + "\n"
    )
    proc = run_cli("ble", "decode", "--raw-log", str(log), check=True)
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    raw = [o for o in out if o["kind"] == "raw"]
    assert [(o["modality"], o["t0_s"]) for o in raw] == [("eda", 100.0), ("eda", 103.0), ("battery", 105.0)]
    assert raw[0]["samples"] == pytest.approx([1.0, 2.0, 0.5, 4.0, 5.0, 10.0])
    gaps = [o["meta"] for o in out if o["meta"].get("event") == "gap"]
    assert gaps == [
        {
            "event": "gap",
            "source": "live",
            "stream": "eda",
            "missing_samples": 6,
            "start_s": 101.5,
            "duration_s": 1.5,
            "cause": "counter",
        }
    ]
    assert "raw.jsonl:3: not a raw-log record" in proc.stderr
