"""Pseudonymous device ids: what leaves ingest names a wristband without its BLE address.

A wristband's address (or serial) is a stable identifier that links a person's data across
studies and installations. Outside ingest a wristband is known only by
``e4-`` + the first 16 hex digits of HMAC-SHA256(key, normalised address): the same wristband
keeps the same id on one installation (the key is local), but nobody without the key can
compute it from an address, and another installation's ids cannot be joined with these.

The key is 32 random bytes, hex, in a file only its owner can read (0600, its folder 0700),
created on first use: ``$XDG_STATE_HOME/m3sense/device-key`` unless ``--device-key FILE``.
Mapping back is by the forward direction: whoever holds the key and the study's list of
addresses computes each one's id (``m3sense ble pseudonym ADDRESS...``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from common.errors import UserError

KEY_BYTES = 32
MIN_KEY_BYTES = 16
ID_PREFIX = "e4-"
ID_HEX_DIGITS = 16  # 64 bits: no collision among any plausible number of wristbands


def normalise_address(address: str) -> str:
    """The address's letters and digits, lower case: ``E4:00:…`` and ``e4-00-…`` are one wristband."""
    return "".join(ch for ch in address.lower() if ch.isalnum())


def pseudonym(key: bytes, address: str) -> str:
    """The bus device id of the wristband at ``address`` under ``key`` (a valid topic segment)."""
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"a device key needs at least {MIN_KEY_BYTES} bytes")
    digest = hmac.new(key, normalise_address(address).encode(), hashlib.sha256).hexdigest()
    return ID_PREFIX + digest[:ID_HEX_DIGITS]


def default_key_path() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "m3sense" / "device-key"


def _read_key(path: Path) -> bytes:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UserError(
            f"{path}: the device key is readable by others (mode {stat.S_IMODE(mode):04o}); "
            f"chmod 600 it, since anyone with it can link ids to addresses"
        )
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise UserError(f"{path}: not a device key (expected {2 * KEY_BYTES} hex digits)") from None
    if len(key) < MIN_KEY_BYTES:
        raise UserError(f"{path}: a device key needs at least {2 * MIN_KEY_BYTES} hex digits, it has {len(text)}")
    return key


def load_or_create_key(path: Path | None = None) -> bytes:
    """The installation's device key, made (0600) on first use. Two processes starting at once
    agree on one key: the new key is written to a private temporary file and linked into place,
    which fails for the second, who then reads the first's."""
    path = Path(path) if path is not None else default_key_path()
    try:
        try:
            return _read_key(path)
        except FileNotFoundError:
            return _create_key(path)
    except OSError as exc:
        raise UserError(f"{path}: cannot read or create the device key ({exc.strerror or exc})") from None


def _create_key(path: Path) -> bytes:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(secrets.token_hex(KEY_BYTES) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # someone else made it first: theirs is the installation's key
    finally:
        tmp.unlink(missing_ok=True)
    return _read_key(path)


__all__ = ["default_key_path", "load_or_create_key", "normalise_address", "pseudonym"]
