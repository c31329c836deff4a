"""The pure core of storage: messages → records, 1 Hz physiology, SINK parsing, --since."""

from __future__ import annotations

import json
import math
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from bus import Message
from common.errors import UserError
from storage import (
    BeatRate,
    InfluxTarget,
    MeanBinner,
    PhysioRecord,
    RecordBuilder,
    SqliteTarget,
    StatusRecord,
    parse_since,
    parse_sink,
    read_token,
)
from storage.records import AffectRecord, affect_records  # typed here (the package's names load lazily)
from tests.conftest import WESAD, needs
from tests.servers import affect_meta, influx_target

T0 = 1_700_000_000.0


def affect_msg(device: str = "dev1", t_end: float = T0 + 20, **kw) -> Message:
    return Message(
        kind="affect", device=device, modality="affect", seq=0, t0_s=t_end, fs_hz=0, meta=affect_meta(t_end, **kw)
    )


def raw_msg(modality: str, t0: float, samples: np.ndarray, fs: float, device: str = "dev1") -> Message:
    return Message(
        kind="raw",
        device=device,
        modality=modality,
        seq=0,
        t0_s=t0,
        fs_hz=fs,
        samples=np.asarray(samples, dtype=np.float64),
    )


def status_msg(t: float, **meta) -> Message:
    return Message(kind="status", device="dev1", modality="status", seq=0, t0_s=t, fs_hz=0, meta=meta)


# --- affect -------------------------------------------------------------------------------


def test_one_record_per_task_stamped_with_the_window_end() -> None:
    recs = affect_records(affect_msg(t_end=T0 + 20.015625, truth={"stress": "stress", "emotion": None}))
    assert [r.task for r in recs] == ["stress", "anxiety", "emotion"]
    assert all(r.time_s == T0 + 20.015625 and r.t_start_s == T0 + 0.015625 for r in recs)
    stress = recs[0]
    assert stress.label == "stress" and stress.true_label == "stress" and stress.source == "replay"
    assert dict(stress.probs) == pytest.approx({"baseline": 0.15, "stress": 0.7, "amusement": 0.15})
    assert stress.confidence == pytest.approx(0.7)
    assert recs[2].true_label is None and recs[1].true_label is None
    assert stress.off_wrist is False and stress.missing_fraction == 0.0


def test_low_quality_window_keeps_its_null_label() -> None:
    (rec,) = affect_records(affect_msg(tasks=("stress",), low_quality=True))
    assert rec.label is None and rec.confidence is None and rec.status == "low_quality" and rec.off_wrist is True


@pytest.mark.parametrize(
    "spoil, reason",
    [
        (lambda m: m.pop("tasks"), "affect"),
        (lambda m: m.update(model=""), "affect"),
        (lambda m: m["tasks"].update(valence={"label": "x"}), "affect"),
        (lambda m: m["tasks"]["stress"]["probs"].update({"bad name": 0.1}), "affect"),
        (lambda m: m["tasks"]["stress"].update(confidence=float("nan")), "value"),
        (lambda m: m["tasks"]["stress"].update(label="x y"), "affect"),
    ],
)
def test_a_bad_affect_message_is_counted_and_dropped(spoil, reason) -> None:
    meta = affect_meta(T0 + 20)
    spoil(meta)
    msg = Message(kind="affect", device="dev1", modality="affect", seq=0, t0_s=T0 + 20, fs_hz=0, meta=meta)
    b = RecordBuilder()
    assert b.push(msg) == [] and b.rejected == {reason: 1}


def test_unknown_source_is_not_trusted_as_a_tag_value() -> None:
    (rec,) = affect_records(affect_msg(tasks=("stress",), source="x" * 40))
    assert rec.source == "unknown"


# --- status and the source of raw streams ---------------------------------------------------


def test_status_events_and_source_of_physiology() -> None:
    b = RecordBuilder()
    # before any status the device's source is unknown
    first = b.push(raw_msg("eda", T0, np.ones(8), 4.0))
    physio = [r for r in first if isinstance(r, PhysioRecord)]
    assert physio == first and {r.source for r in physio} == {"unknown"}
    (start,) = b.push(status_msg(T0 + 2, event="start", source="replay", recording="S2"))
    assert start == StatusRecord(
        time_s=T0 + 2, device="dev1", source="replay", event="start", value=None, detail='{"recording":"S2"}'
    )
    recs = b.push(raw_msg("eda", T0 + 2, np.full(8, 3.0), 4.0))
    assert recs == [  # the bin still open when the source became known is stamped with it
        PhysioRecord(time_s=T0 + 2, device="dev1", source="replay", signal="eda_us", value=1.0),
        PhysioRecord(time_s=T0 + 3, device="dev1", source="replay", signal="eda_us", value=3.0),
    ]
    # the end of a stream closes its open bins before the end event
    end = b.push(status_msg(T0 + 4, event="end"))
    assert [type(r).__name__ for r in end] == ["PhysioRecord", "StatusRecord"]
    closed, ended = end
    assert isinstance(ended, StatusRecord)
    assert closed.time_s == T0 + 4 and ended.event == "end" and ended.source == "replay"
    assert b.flush() == []
    (batt,) = RecordBuilder().push(
        Message(
            kind="status",
            device="d",
            modality="status",
            seq=0,
            t0_s=T0,
            fs_hz=0,
            samples=np.array([0.8]),
            meta={"event": "battery"},
        )
    )
    assert isinstance(batt, StatusRecord) and batt.value == pytest.approx(0.8)
    (gap,) = RecordBuilder().push(status_msg(T0, event="gap", gap_s=2.5, source="live"))
    assert isinstance(gap, StatusRecord) and gap.detail is not None
    assert gap.value == 2.5 and json.loads(gap.detail) == {"gap_s": 2.5}


# --- 1 Hz physiology -------------------------------------------------------------------------


def test_mean_binner_stamps_bin_ends_and_skips_nan() -> None:
    b = MeanBinner(1.0)
    t = T0 + np.arange(10) / 4.0  # 2.5 s at 4 Hz
    v = np.arange(10, dtype=float)
    v[1] = np.nan
    assert b.push(t, v) == [(T0 + 1, (0 + 2 + 3) / 3), (T0 + 2, (4 + 5 + 6 + 7) / 4)]
    assert b.flush() == [(T0 + 3, 8.5)]
    assert b.flush() == []


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(1, 199), max_size=30), seed=st.integers(0, 2**16))
def test_mean_binner_output_does_not_depend_on_chunking(cuts, seed) -> None:
    rng = np.random.default_rng(seed)
    t = T0 + 0.3 + np.arange(200) / 4.0
    v = rng.normal(size=200)
    whole = MeanBinner(1.0)
    expected = whole.push(t, v) + whole.flush()
    parts = MeanBinner(1.0)
    got = []
    for a, b in zip([0, *sorted(set(cuts))], [*sorted(set(cuts)), 200]):
        got += parts.push(t[a:b], v[a:b])
    got += parts.flush()
    assert [g[0] for g in got] == [e[0] for e in expected]
    np.testing.assert_allclose([g[1] for g in got], [e[1] for e in expected], rtol=1e-12)


def pulse_wave(bpm: float, seconds: float, fs: float = 64.0, seed: int = 0) -> np.ndarray:
    """A PPG-like wave: systolic peak plus a smaller dicrotic wave, baseline drift and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * fs)) / fs
    phase = (t * bpm / 60.0) % 1.0
    wave = np.exp(-(((phase - 0.15) / 0.07) ** 2)) + 0.35 * np.exp(-(((phase - 0.5) / 0.08) ** 2))
    return 80 * wave + 20 * np.sin(2 * np.pi * 0.1 * t) + rng.normal(0, 3, t.size)


@pytest.mark.parametrize("bpm", [48.0, 72.0, 110.0, 150.0])
def test_beat_rate_recovers_a_known_heart_rate(bpm) -> None:
    br = BeatRate(64.0)
    x = pulse_wave(bpm, 60)
    out = []
    for i in range(0, x.size, 11):  # E4 BLE packets carry 11 BVP samples
        out += br.push(T0 + i / 64.0, x[i : i + 11])
    times = np.array([t for t, _ in out])
    rates = np.array([r for _, r in out])
    assert np.all(np.diff(times) == 1.0) and times[0] <= T0 + 6  # a value every second after start-up
    assert np.all(np.abs(rates[times > T0 + 12] - bpm) < 0.05 * bpm)


def test_beat_rate_gives_nothing_for_flat_or_noise_only_signal() -> None:
    br = BeatRate(64.0)
    out = br.push(T0, np.zeros(64 * 30)) + br.flush()
    assert out == []


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(1, 64 * 40 - 1), max_size=40))
def test_beat_rate_does_not_depend_on_chunking(cuts) -> None:
    x = pulse_wave(80, 40, seed=3)
    whole = BeatRate(64.0)
    expected = whole.push(T0, x) + whole.flush()
    parts = BeatRate(64.0)
    got = []
    bounds = [0, *sorted(set(cuts)), x.size]
    for a, b in pairwise(bounds):
        got += parts.push(T0 + a / 64.0, x[a:b])
    got += parts.flush()
    assert [g[0] for g in got] == [e[0] for e in expected]
    np.testing.assert_allclose([g[1] for g in got], [e[1] for e in expected], rtol=1e-9)


def _e4_csv(path: Path) -> tuple[float, float, np.ndarray]:
    a = np.loadtxt(path, delimiter=",", ndmin=2)
    return float(a[0, 0]), float(a[1, 0]), a[2:, 0]


@needs(WESAD.is_dir(), reason="real WESAD E4 data not present at ../shared/data/wesad-e4")
def test_beat_rate_agrees_with_the_e4s_own_heart_rate_on_real_data() -> None:
    """Oracle: the HR.csv the E4 computed on-device, for 20 minutes of subject S2."""
    t0, fs, bvp = _e4_csv(WESAD / "S2" / "BVP.csv")
    h0, hfs, hr = _e4_csv(WESAD / "S2" / "HR.csv")
    bvp = bvp[: int(20 * 60 * fs)]
    br = BeatRate(fs)
    out = []
    for i in range(0, bvp.size, 11):
        out += br.push(t0 + i / fs, bvp[i : i + 11])
    times, rates = np.array(out).T
    ref = np.interp(times, h0 + np.arange(hr.size) / hfs, hr)
    err = np.abs(rates - ref)
    assert len(out) > 0.9 * 20 * 60
    assert np.median(err) < 8.0 and np.mean(err < 15) > 0.7  # a simple detector vs the E4's own


# --- SINK, token, --since ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "sink, expected",
    [
        ("sqlite:///data/affect.db", SqliteTarget(path=Path("data/affect.db"))),
        ("sqlite:////tmp/affect.db", SqliteTarget(path=Path("/tmp/affect.db"))),
        ("sqlite:affect.db", SqliteTarget(path=Path("affect.db"))),
        ("sqlite:data/affect.db", SqliteTarget(path=Path("data/affect.db"))),
        ("sqlite:/tmp/affect.db", SqliteTarget(path=Path("/tmp/affect.db"))),
        ("out/affect.sqlite", SqliteTarget(path=Path("out/affect.sqlite"))),
        ("/tmp/affect.db", SqliteTarget(path=Path("/tmp/affect.db"))),
        (
            "influx://127.0.0.1:8086?bucket=affect&org=lab",
            InfluxTarget(url="http://127.0.0.1:8086", bucket="affect", org="lab"),
        ),
        ("influx://127.0.0.1:8086?db=affect", InfluxTarget(url="http://127.0.0.1:8086", bucket="affect", api="v1")),
        (
            "influx://127.0.0.1:8086?db=affect&rp=week",
            InfluxTarget(url="http://127.0.0.1:8086", bucket="affect/week", api="v1"),
        ),
        (
            "influx://127.0.0.1:8086?bucket=affect/week&api=v1",
            InfluxTarget(url="http://127.0.0.1:8086", bucket="affect/week", api="v1"),
        ),
        (
            "influx://127.0.0.1:8086?bucket=affect&org=lab&api=v2",
            InfluxTarget(url="http://127.0.0.1:8086", bucket="affect", org="lab", api="v2"),
        ),
        (
            "influxs://db.example.org:8086/influx/?bucket=affect/autogen",
            InfluxTarget(url="https://db.example.org:8086/influx", bucket="affect/autogen", org="-"),
        ),
        ("http://localhost:8181?bucket=affect", InfluxTarget(url="http://localhost:8181", bucket="affect")),
        ("http://db.lan:8086?bucket=a&insecure=1", InfluxTarget(url="http://db.lan:8086", bucket="a")),
    ],
)
def test_sink_addresses(sink, expected) -> None:
    assert parse_sink(sink) == expected
    assert parse_sink(expected.address) == expected  # the address a summary prints is the same sink


def test_sqlite_sink_forms_reach_the_file_they_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """sqlite:PATH (relative and absolute), SQLAlchemy's sqlite:/// and sqlite://// and a bare
    PATH.db each store into, and read from, the file they name."""
    import asyncio

    from m3sense.cli import main
    from storage import SqliteSink

    monkeypatch.chdir(tmp_path)
    forms = {
        "sqlite:rel1.db": tmp_path / "rel1.db",
        f"sqlite:{tmp_path}/abs/a2.db": tmp_path / "abs/a2.db",
        "sqlite:///rel3.db": tmp_path / "rel3.db",
        f"sqlite:///{tmp_path}/abs/a4.db": tmp_path / "abs/a4.db",
        "rel5.db": tmp_path / "rel5.db",
    }

    async def store(db_path: Path, device: str) -> None:
        async with SqliteSink(db_path) as db:
            await db.write(affect_records(affect_msg(device=device, tasks=("stress",))))

    for k, (sink, path) in enumerate(forms.items()):
        target = parse_sink(sink)
        assert isinstance(target, SqliteTarget), sink
        asyncio.run(store(target.path, f"dev{k}"))
        assert path.exists(), sink
        capsys.readouterr()
        assert main(["timeline", "--sink", sink, "--json"]) == 0
        assert [json.loads(x)["device"] for x in capsys.readouterr().out.splitlines()] == [f"dev{k}"], sink


@pytest.mark.parametrize(
    "sink, complaint",
    [
        ("sqlite://rel.db", "sqlite:///"),
        ("sqlite:", "sqlite:PATH"),
        ("sqlite:///", "sqlite:PATH"),
        ("influx://127.0.0.1:8086?db=a&bucket=a", "do not go together"),
        ("influx://127.0.0.1:8086?db=a&api=v2", "api=v2"),
        ("influx://127.0.0.1:8086?bucket=a&rp=w", "rp= goes with db="),
        ("influx://127.0.0.1:8086?db=a/w", "rp="),
        ("influx://127.0.0.1:8086?bucket=a&api=v3", "api="),
        ("affect.csv", "expected"),
        ("influx://127.0.0.1:8086", "bucket"),
        ("influx://127.0.0.1:8086?bucket=a&token=x", "unknown parameter"),
        ("influx://user:pw@127.0.0.1:8086?bucket=a", "no credentials"),
        ("http://db.example.org:8086?bucket=a", "in clear"),
        ("influx://127.0.0.1:99999?bucket=a", "port"),
    ],
)
def test_bad_sink_addresses_say_what_is_wrong(sink, complaint) -> None:
    with pytest.raises(UserError, match=complaint):
        parse_sink(sink)


def test_token_comes_from_file_or_environment_and_stays_out_of_repr(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text("s3cret-token\n")
    assert read_token(f, {"INFLUX_TOKEN": "env"}) == "s3cret-token"
    assert read_token(None, {"INFLUX_TOKEN": "env"}) == "env"
    assert read_token(None, {}) is None
    target = influx_target("influx://127.0.0.1:8086?bucket=a").with_token("s3cret-token")
    assert target.token == "s3cret-token" and "s3cret" not in repr(target)
    with pytest.raises(UserError, match="empty"):
        (tmp_path / "empty").write_text("\n")
        read_token(tmp_path / "empty", {})


def test_since() -> None:
    now = 1_800_000_000.0
    assert parse_since("2h", now) == now - 7200
    assert parse_since("90s", now) == now - 90
    assert parse_since("1495437325.5", now) == 1495437325.5
    assert parse_since("2017-05-22T07:15:25", now) == 1495437325.0
    assert parse_since("2017-05-22T09:15:25+02:00", now) == 1495437325.0
    with pytest.raises(UserError):
        parse_since("yesterday", now)


def test_records_are_frozen_and_slotted() -> None:
    (rec,) = affect_records(affect_msg(tasks=("stress",)))
    assert isinstance(rec, AffectRecord) and not hasattr(rec, "__dict__")
    with pytest.raises(AttributeError):
        rec.label = "x"  # type: ignore[misc]  # deliberately: a frozen record refuses the write
    assert math.isfinite(rec.time_s)


def test_the_public_surface_resolves_lazily() -> None:
    import subprocess
    import sys

    import storage

    assert all(getattr(storage, name) is not None for name in storage.__all__)
    # importing the CLI module (what `m3sense --help` does) loads neither influxdb-client nor scipy
    code = "import sys, storage.cli; print(any(m.split('.')[0] in ('influxdb_client', 'scipy') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


# --- what `m3sense store` says at the end -------------------------------------------------------


def test_store_exit_codes_and_last_line() -> None:
    from storage.report import StoreOutcome

    ok = StoreOutcome(sink="sqlite:a.db", messages=5, received=12, written=12, affect_records=12)
    assert ok.exit_code == 0 and ok.summary().endswith("written to sqlite:a.db; none lost")
    spool = Path("/var/spool/x")
    waits = StoreOutcome(
        sink="influx://h:1?db=d",
        influx=True,
        received=12,
        spooled=12,
        spool_dir=spool,
        error="no answer (Connection refused)",
    )
    assert waits.exit_code == 1
    assert "nothing reached InfluxDB" in waits.summary() and f"12 points wait in spool {spool}" in waits.summary()
    assert waits.summary().endswith("last error: no answer (Connection refused)")
    lost = StoreOutcome(sink="influx://h:1?db=d", influx=True, received=12, written=5, refused=4, dropped=3)
    assert lost.exit_code == 1 and "7 lost (4 refused by the server, 3 dropped: spool full)" in lost.summary()
    assert StoreOutcome(sink="sqlite:a.db", written=3, failure="OSError: disk full").exit_code == 1
    assert StoreOutcome(sink="sqlite:a.db", written=3, interrupted=True).exit_code == 130
    assert StoreOutcome(bad_input="sink 'x': expected ...").exit_code == 2
    # what `m3sense run` reads: these keys, whatever else is added
    assert {
        "sink",
        "written",
        "spooled",
        "spool_dir",
        "dropped",
        "refused",
        "affect_records",
        "exit_code",
    } <= waits.as_json().keys() and waits.as_json()["spool_dir"] == str(spool)
