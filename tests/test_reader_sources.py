"""`m3sense replay`, `train`, `evaluate` and `run` take the data sets' original layouts as sources,
the same way they take E4 Connect exports (everything goes through ``replay.e4csv.read_source``)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from common.errors import UserError
from inference.sources import parse_source, source_windows
from replay.chunks import recording_messages
from replay.e4csv import read_source, write_e4_export
from replay.simulate import simulate_recordings
from tests.conftest import Proc, run_cli
from tests.dataset_fixtures import write_kemocon, write_verbio, write_wesad_subject


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("layouts")
    write_wesad_subject(root / "WESAD", "S5", seed=5)
    write_wesad_subject(root / "WESAD", "S6", seed=6)
    write_kemocon(root / "KEmoCon")
    write_verbio(root / "VerBIO", {"PRE": {"P001": 30, "P002": 50}}, seconds=60, seed=3)
    for rec in simulate_recordings(minutes=2, seed=8, subjects=2):
        write_e4_export(rec, root / "MAYA" / "people" / rec.device)
    return {
        "wesad": f"wesad:{root / 'WESAD'}",
        "kemocon": f"kemocon:{root / 'KEmoCon'}",
        "verbio": f"verbio:{root / 'VerBIO'}",
        "unlabelled": f"unlabelled:{root / 'MAYA'}",
    }


@pytest.mark.parametrize("layout", ["wesad", "kemocon", "verbio", "unlabelled"])
def test_replay_publishes_what_the_reader_read(
    layouts: dict[str, str], layout: str, bus_address: str, procs: list[Proc], tmp_path: Path
) -> None:
    source = layouts[layout]
    recordings = read_source(source)
    expected = Counter(m.topic for rec in recordings for _, m in recording_messages(rec))
    hub = Proc(["hub", "--bus", bus_address])
    procs.append(hub)
    hub.wait_for_stderr("subscribers")
    tap_out = (tmp_path / "tap.jsonl").open("w")
    tap = Proc(
        ["tap", "--bus", bus_address, "--json", "--count", str(sum(expected.values())), "--idle-exit-s", "60"],
        stdout=tap_out,
    )
    procs.append(tap)
    replay = run_cli("replay", source, "--bus", bus_address, "--speed", "max", "--wait", "60", check=True)
    assert f"{len(recordings)} device(s)" in replay.stderr
    assert tap.popen.wait(timeout=60) == 0
    tap_out.close()
    got = [json.loads(line) for line in (tmp_path / "tap.jsonl").read_text().splitlines()]
    assert Counter(m["topic"] for m in got) == expected
    labels = sorted((m["topic"], m["task"], m["label"], m["start_s"]) for m in got if m["topic"].startswith("label/"))
    assert labels == sorted(
        (f"label/{rec.device}/", iv.task, iv.label, iv.start_s) for rec in recordings for iv in rec.labels
    )
    assert bool(labels) == (layout != "unlabelled")


@pytest.mark.slow
def test_train_and_evaluate_take_every_layout(layouts: dict[str, str], tmp_path: Path) -> None:
    model = tmp_path / "m.safetensors"
    data = [arg for name in ("wesad", "kemocon", "verbio") for arg in ("--data", layouts[name])]
    trained = json.loads(
        run_cli(
            "train",
            *data,
            "--unlabeled",
            layouts["unlabelled"],
            "--epochs",
            "1",
            "--threads",
            "1",
            "--no-cache",
            "--out",
            str(model),
            "--json",
            timeout=600,
            check=True,
        ).stdout
    )
    meta = json.loads(model.with_suffix(".json").read_text())["provenance"]
    assert meta["tasks_learned_from"] == {
        "stress": [layouts["wesad"]],
        "anxiety": [layouts["verbio"]],
        "emotion": [layouts["kemocon"]],
    }
    assert meta["split_windows"]["unlabeled"] > 0 and set(trained) == {"stress", "anxiety", "emotion"}
    scores = json.loads(
        run_cli("evaluate", "--model", str(model), *data, "--json", "--no-cache", timeout=600, check=True).stdout
    )
    for task, name in (("stress", "wesad"), ("anxiety", "verbio"), ("emotion", "kemocon")):
        ws = source_windows(
            parse_source(layouts[name]),
            modalities=("bvp", "eda", "temp"),
            tasks=(task,),
            classes={task: scores[task]["classes"]},
            hop_s=10.0,
            cache_dir=None,
        )
        assert (
            scores[task]["n_windows"]
            + scores[task]["coverage"]["calibrating"]
            + scores[task]["coverage"]["low_quality"]
            == int((ws.labels >= 0).sum())
            > 0
        )


@pytest.mark.slow
def test_run_stores_a_kemocon_source(layouts: dict[str, str], tmp_path: Path) -> None:
    proc = run_cli("run", layouts["kemocon"], "--sink", f"sqlite:///{tmp_path / 'a.db'}", timeout=300, check=True)
    assert "end of device kemocon-p01" in proc.stderr and "end of device kemocon-p31" in proc.stderr
    assert "none lost" in proc.stderr


def test_a_prefix_on_a_missing_path_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file or folder"):
        parse_source(f"kemocon:{tmp_path / 'nothing'}")
    proc = run_cli("replay", f"verbio:{tmp_path / 'nothing'}", "--wait-s", "0")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


def test_a_malformed_file_stops_train_and_evaluate_in_one_line(tmp_path: Path) -> None:
    write_kemocon(tmp_path / "KE", pids=(4,))
    notes = tmp_path / "KE" / "raw" / "emotion_annotations" / "self_annotations" / "P4.self.csv"
    notes.write_text(notes.read_text().replace("\n10,", "\n11,", 1))
    for args in (
        [
            "train",
            "--data",
            f"kemocon:{tmp_path / 'KE'}",
            "--epochs",
            "1",
            "--no-cache",
            "--out",
            str(tmp_path / "m.safetensors"),
        ],
        ["evaluate", "--data", f"kemocon:{tmp_path / 'KE'}", "--no-cache"],
    ):
        proc = run_cli(*args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "P4.self.csv:3: seconds must be a positive multiple of 5" in lines[0]
    assert not (tmp_path / "m.safetensors").exists()
