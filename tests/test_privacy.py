"""Privacy by default (issue 12, item 4): outside ingest a wristband is a keyed pseudonym,
its BLE address is never stored unless asked for, and the key that links the two is local."""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from bus import Hub, valid_name
from common.errors import UserError
from ingest.pseudonym import load_or_create_key, pseudonym
from ingest.virtual import virtual_address
from tests.conftest import Proc, run_cli

ADDRESS = virtual_address(0)  # E4:00:00:00:00:01, the one virtual wristband of `ble stream --virtual 1`


def address_forms(address: str) -> list[bytes]:
    """Every spelling of an address a store could hold: as given, without separators, either case."""
    bare = address.replace(":", "")
    return [form.encode() for a in (address, bare) for form in (a.upper(), a.lower())]


def test_pseudonym_is_keyed_stable_and_a_bus_name() -> None:
    key, other = b"k" * 32, b"o" * 32
    dev = pseudonym(key, ADDRESS)
    assert valid_name(dev) and dev.startswith("e4-") and len(dev) == 3 + 16
    assert pseudonym(key, ADDRESS.lower().replace(":", "-")) == dev  # one wristband, however written
    assert pseudonym(other, ADDRESS) != dev
    assert pseudonym(key, virtual_address(1)) != dev
    assert not any(form.decode().lower() in dev for form in address_forms(ADDRESS))
    with pytest.raises(ValueError):
        pseudonym(b"short", ADDRESS)


def test_key_is_made_private_on_first_use_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "state" / "m3sense" / "device-key"
    key = load_or_create_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_or_create_key(path) == key
    assert [p.name for p in path.parent.iterdir()] == ["device-key"]  # no temporary file left behind
    assert load_or_create_key(tmp_path / "another") != key


def test_default_key_lives_under_xdg_state_home(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    key = load_or_create_key()
    assert (tmp_path / "m3sense" / "device-key").read_text().strip() == key.hex()


def test_a_readable_or_damaged_key_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "device-key"
    load_or_create_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(UserError, match="readable by others"):
        load_or_create_key(path)
    os.chmod(path, 0o600)
    path.write_text("not hex\n")
    with pytest.raises(UserError, match="not a device key"):
        load_or_create_key(path)
    path.write_text("abcd\n")
    with pytest.raises(UserError, match="at least 32 hex digits"):
        load_or_create_key(path)


def test_ble_pseudonym_command_maps_addresses_to_the_stored_ids(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    out = run_cli("ble", "pseudonym", "--device-key", str(key_file), ADDRESS, virtual_address(1), check=True)
    key = load_or_create_key(key_file)
    assert out.stdout.splitlines() == [f"{a}\t{pseudonym(key, a)}" for a in (ADDRESS, virtual_address(1))]


def _database_bytes(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))


def _wait_for_ends(db: Path, n: int, timeout_s: float = 60) -> set[str]:
    """The devices in the store once it holds ``n`` end events (the store flushes every 0.1 s)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if db.exists():
            with sqlite3.connect(db) as conn:
                ends = conn.execute("SELECT count(*) FROM device_status WHERE event = 'end'").fetchone()[0]
                if ends >= n:
                    return {
                        d
                        for (d,) in conn.execute(
                            "SELECT DISTINCT device FROM physio UNION SELECT DISTINCT device FROM device_status"
                        )
                    }
        time.sleep(0.1)
    raise AssertionError(f"the store did not get {n} end events in {timeout_s} s")


def test_ble_session_stored_to_sqlite_holds_no_address(hub: Hub, procs: list[Proc], tmp_path: Path) -> None:
    db = tmp_path / "m3.db"
    store = Proc(["store", "--bus", hub.address, "--sink", f"sqlite:{db}", "--flush-interval", "0.1"])
    procs.append(store)
    store.wait_for_stderr("<-")
    key_a, key_b = tmp_path / "a" / "device-key", tmp_path / "b" / "device-key"

    def session(key: Path, *extra: str) -> None:
        run_cli(
            "ble",
            "stream",
            "--bus",
            hub.address,
            "--virtual",
            "1",
            "--time-scale",
            "20",
            "--duration",
            "8",
            "--minutes",
            "1",
            "--wait",
            "30",
            "--device-key",
            str(key),
            *extra,
            check=True,
        )

    session(key_a)
    first = _wait_for_ends(db, 1)
    session(key_a)
    assert _wait_for_ends(db, 2) == first  # the same wristband, the same key: the same id
    (dev_a,) = first
    assert dev_a == pseudonym(load_or_create_key(key_a), ADDRESS)
    session(key_b)
    ids = _wait_for_ends(db, 3)
    assert len(ids) == 2 and dev_a in ids  # another installation's key: an id that cannot be joined
    store.stop()
    stored = _database_bytes(db)
    assert dev_a.encode() in stored
    assert not [form for form in address_forms(ADDRESS) if form in stored]
    with sqlite3.connect(db) as conn:  # the sessions were stored, physiology and events alike
        assert conn.execute("SELECT count(*) FROM physio WHERE device = ?", (dev_a,)).fetchone()[0] > 0
        assert (
            conn.execute(
                "SELECT count(*) FROM device_status WHERE device = ? AND event = 'connected'", (dev_a,)
            ).fetchone()[0]
            == 2
        )


def test_store_address_puts_it_in_the_status_events_only_when_asked(
    hub: Hub, procs: list[Proc], tmp_path: Path
) -> None:
    db = tmp_path / "m3.db"
    store = Proc(["store", "--bus", hub.address, "--sink", f"sqlite:{db}", "--flush-interval", "0.1"])
    procs.append(store)
    store.wait_for_stderr("<-")
    run_cli(
        "ble",
        "stream",
        "--bus",
        hub.address,
        "--virtual",
        "1",
        "--time-scale",
        "20",
        "--duration",
        "4",
        "--minutes",
        "1",
        "--wait",
        "30",
        "--device-key",
        str(tmp_path / "key"),
        "--store-address",
        check=True,
    )
    _wait_for_ends(db, 1)
    store.stop()
    with sqlite3.connect(db) as conn:
        details = [d for (d,) in conn.execute("SELECT detail FROM device_status WHERE event = 'connected'")]
    assert details and all(f'"address":"{ADDRESS}"' in d for d in details)
    assert ADDRESS.encode() in _database_bytes(db)  # the byte search above would have found it


def test_raw_log_is_created_owner_only(tmp_path: Path) -> None:
    from ingest.ble import RawLog

    log = RawLog(tmp_path / "raw.jsonl")
    log.write("e4-0123456789abcdef", "eda", b"\x00" * 20, 1_600_000_000.0)
    log.close()
    assert stat.S_IMODE((tmp_path / "raw.jsonl").stat().st_mode) == 0o600
