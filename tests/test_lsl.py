"""`m3sense lsl` as a process, read by an LSL inlet in another process (as LabRecorder would):
a replayed recording arrives sample for sample with its rates, channel names and units,
and the affect stream shows each window's label or why there is none.

Discovery stays on this machine: liblsl reads a loopback-only config from $LSLAPICFG (IPv6
off, machine resolve scope on 127.0.0.1, a private session id and ports), so the test
neither sends multicast to the network nor sees anyone else's streams."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bus import Hub, Publisher, topic_for
from labstream.streams import AFFECT_NUMBERS, AFFECT_STATE, RAW_SPECS
from replay import read_source
from tests.conftest import REPO, Proc, run_cli
from tests.servers import affect_meta, free_port

pytest.importorskip("pylsl")

DEVICE = "e4lsl"


def loopback_lsl_config(folder: Path) -> Path:
    """A liblsl config that keeps discovery and data on 127.0.0.1, in a session of its own."""
    cfg = folder / "lsl_api.cfg"
    cfg.write_text(f"""[ports]
IPv6 = disable
MulticastPort = {free_port()}
BasePort = {free_port()}
PortRange = 16
[multicast]
ResolveScope = machine
ListenAddress = 127.0.0.1
MachineAddresses = {{127.0.0.1}}
[lab]
SessionID = m3sense-test-{os.urandom(6).hex()}
[log]
level = -2
""")
    return cfg


def test_inlet_in_another_process_receives_every_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bus_address: str, hub: Hub
) -> None:
    monkeypatch.setenv("LSLAPICFG", str(loopback_lsl_config(tmp_path)))
    sim = tmp_path / "sim"
    run_cli("simulate", str(sim), "--minutes", "1", "--seed", "3", "--labels", "none", check=True)
    (rec,) = read_source(sim)
    expected_raw = {m: rec.signals[m].n for m in rec.signals} | {"ibi": len(rec.ibi_s), "tag": len(rec.tags_s)}
    assert set(expected_raw) == set(RAW_SPECS) and expected_raw["ibi"] > 0
    t_ends = [rec.start_s + 20.0, rec.start_s + 30.0, rec.start_s + 40.0]
    expected = {RAW_SPECS[m].source_id(DEVICE): n for m, n in expected_raw.items()}
    expected |= {AFFECT_STATE.source_id(DEVICE): len(t_ends), AFFECT_NUMBERS.source_id(DEVICE): len(t_ends)}

    lsl = Proc(["lsl", "--bus", bus_address, "--device", DEVICE])
    inlet = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "lsl_inlet.py"), json.dumps(expected), "120"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert inlet.stdout is not None and inlet.stderr is not None, "started with PIPEs"
    try:
        lsl.wait_for_stderr("lsl: outlets")
        assert inlet.stdout.readline().strip() == "ready", inlet.stderr.read()
        run_cli(
            "replay", str(sim), "--bus", bus_address, "--device", DEVICE, "--speed", "max", "--wait", "60", check=True
        )

        async def publish_affect() -> None:
            async with Publisher(bus_address) as pub:
                assert await pub.wait_for_subscribers([topic_for("affect", DEVICE)], 30) == []
                for k, t in enumerate(t_ends):
                    meta = affect_meta(t, low_quality=k == 1, labels={"stress": "stress"})
                    if k == 2:
                        meta["tasks"]["anxiety"].update(label=None, confidence=None, status="calibrating")
                    await pub.publish("affect", DEVICE, t0_s=t, fs_hz=0, meta=meta)

        asyncio.run(publish_affect())
        out, err = inlet.communicate(timeout=150)
        assert inlet.returncode == 0, err
        got = json.loads(out)
    finally:
        inlet.kill() if inlet.poll() is None else None
        lsl.popen.send_signal(signal.SIGTERM)
        code = lsl.popen.wait(timeout=30)
        tail = lsl.stderr.read().splitlines()
        lsl.stop()
    assert code == 0, tail
    assert tail[-1].endswith("lost on the bus 0, malformed 0"), tail

    for modality, spec in RAW_SPECS.items():
        s = got[spec.source_id(DEVICE)]
        assert s["n"] == expected_raw[modality], (modality, s["n"])  # every sample, none twice
        assert (s["name"], s["type"], s["device"], s["manufacturer"]) == (
            f"m3sense {DEVICE} {spec.stream}",
            spec.lsl_type,
            DEVICE,
            "Empatica",
        )
        assert s["labels"] == list(spec.channels) and s["units"] == list(spec.units)
        assert s["channel_count"] == len(spec.channels) and s["nominal_srate"] == spec.nominal_hz
        if modality in rec.signals:
            sig = rec.signals[modality]
            assert s["nominal_srate"] == sig.fs_hz > 0
            # the recording's own sample times, mapped there and back through the LSL clock
            np.testing.assert_allclose(s["unix_s"], sig.t0_s + np.arange(sig.n) / sig.fs_hz, atol=1e-5, rtol=0)
            np.testing.assert_allclose(
                s["sums"],
                np.asarray(sig.values, dtype=np.float32).reshape(sig.n, -1).astype(np.float64).sum(axis=0),
                rtol=1e-5,
            )
    ibi = got[RAW_SPECS["ibi"].source_id(DEVICE)]
    assert ibi["nominal_srate"] == 0.0  # irregular
    np.testing.assert_allclose(ibi["unix_s"], rec.ibi_t_s, atol=1e-5, rtol=0)
    np.testing.assert_allclose(ibi["sums"], [np.float32(rec.ibi_s).astype(np.float64).sum()], rtol=1e-5)

    states = got[AFFECT_STATE.source_id(DEVICE)]
    assert states["labels"] == ["stress", "anxiety", "emotion"] and states["nominal_srate"] == 0.0
    np.testing.assert_allclose(states["unix_s"], t_ends, atol=1e-5, rtol=0)
    # an off-wrist window is its own state, not the label before it; so is a calibrating answer
    assert states["values"] == [["stress", "high", "low"], ["off_wrist"] * 3, ["stress", "calibrating", "low"]]
    numbers = got[AFFECT_NUMBERS.source_id(DEVICE)]
    assert numbers["labels"] == list(AFFECT_NUMBERS.channels)
    first, off, _ = numbers["numbers"]
    row = dict(zip(numbers["labels"], first))
    assert row["stress_confidence"] == pytest.approx(0.7) and row["stress_p_stress"] == pytest.approx(0.7)
    assert row["stress_p_baseline"] == pytest.approx(0.15) and row["anxiety_p_high"] == pytest.approx(0.7)
    assert dict(zip(numbers["labels"], off))["stress_confidence"] is None  # NaN: no confidence off the wrist
