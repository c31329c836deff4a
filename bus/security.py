"""Who may use the bus: CURVE encryption and a key allow-list (ZAP) for the hub.

Why. Without it anyone who reaches the hub's ports can publish (forged ``affect/`` rows end
up in the store as live data) and read everyone's physiology. ZeroMQ's CURVE encrypts each
connection and names the client by its public key; the hub's ZAP handler admits only the keys
found in an allow-list folder. A client without keys (plain ZeroMQ) fails the handshake, a
client with an unknown key is refused by ZAP: neither gets a single message through.

One folder (``--bus-keys DIR``) holds everything a host needs, in the ZeroMQ certificate
format (``zmq.auth``; secret files 0600):

- ``hub.key`` / ``hub.key_secret``: the hub's pair (the secret only on the hub's host);
  every client needs ``hub.key`` to know it talks to the real hub;
- ``client.key`` / ``client.key_secret``: this host's client pair, used by every stage;
- ``allowed/*.key``: the public keys the hub admits (read again when an unknown key knocks,
  so ``m3sense keys allow`` takes effect without restarting the hub).

Policy (:func:`check_address`): a ``tcp://`` address that is not loopback needs keys, or an
explicit ``insecure`` (plain text, anyone on the network may read and write). Keys may be
used on loopback and ``ipc://`` too. The process-wide setting (:func:`configure`) is what the
CLI's ``--bus-keys``/``--insecure`` set once; hubs and sockets take it unless given their own.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

log = logging.getLogger(__name__)

HUB = "hub"
CLIENT = "client"
ALLOWED = "allowed"
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"


class BusSecurityError(ValueError):
    """A missing or bad key file, or an address that needs keys: the user's to fix (one line)."""


def is_loopback(address: str) -> bool:
    """True for ``ipc://`` (this host's file system) and ``tcp://`` on 127.0.0.0/8, ::1 or
    ``localhost``. Any other host (``*``, 0.0.0.0, a name, a LAN address) is reachable from
    elsewhere; names are not resolved, so a name is never taken for loopback."""
    if address.startswith(("ipc://", "inproc://")):
        return True
    return is_loopback_host(urlsplit(address).hostname or "")


def is_loopback_host(host: str) -> bool:
    """A host name or address (of a bind or a connect) that only this host can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _z85_key(value: bytes | None, path: Path, what: str) -> bytes:
    if value is None or len(value) != 40:
        raise BusSecurityError(f"{path}: no {what} key in it (a ZeroMQ certificate holds a 40-character Z85 key)")
    try:
        z85.decode(value)
    except (ValueError, KeyError, IndexError):
        raise BusSecurityError(f"{path}: its {what} key is not Z85 text") from None
    return value


def read_key_file(path: Path, *, secret: bool) -> tuple[bytes, bytes | None]:
    """(public, secret) from a certificate; one-line errors for a missing or bad file."""
    hint = f" (make it with: m3sense keys new {path.name.split('.')[0]} --dir {path.parent})"
    if not path.is_file():
        raise BusSecurityError(f"{path}: no such key file{hint}")
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise BusSecurityError(f"{path}: not a ZeroMQ key file ({exc})") from None
    public = _z85_key(public, path, "public")
    if secret:
        secret_key = _z85_key(secret_key, path, "secret")
        if path.stat().st_mode & 0o077:
            log.warning("%s: other users may read this secret key (chmod 600 it)", path)
    return public, secret_key


def read_allowed(folder: Path) -> set[bytes]:
    """The public keys in an allow-list folder (``*.key``); bad files are errors, not skipped."""
    if not folder.is_dir():
        raise BusSecurityError(
            f"{folder}: no allow-list folder (add a client: m3sense keys allow FILE --dir {folder.parent})"
        )
    return {read_key_file(p, secret=False)[0] for p in sorted(folder.glob("*" + PUBLIC_SUFFIX))}


@dataclass(frozen=True, slots=True)
class ClientKeys:
    public: bytes
    secret: bytes
    server: bytes  # the hub's public key


@dataclass(frozen=True, slots=True)
class ServerKeys:
    public: bytes
    secret: bytes
    allowed: Path


@dataclass(frozen=True)
class BusSecurity:
    """Keys folder (None: plain ZeroMQ) and whether a plain non-loopback address is accepted."""

    keys: Path | None = None
    insecure: bool = False
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def curve(self) -> bool:
        return self.keys is not None

    def client_keys(self) -> ClientKeys:
        if "client" not in self._cache:
            assert self.keys is not None
            public, secret = read_key_file(self.keys / (CLIENT + SECRET_SUFFIX), secret=True)
            server, _ = read_key_file(self.keys / (HUB + PUBLIC_SUFFIX), secret=False)
            self._cache["client"] = ClientKeys(public, secret, server)  # type: ignore[arg-type]
        return self._cache["client"]

    def server_keys(self) -> ServerKeys:
        if "server" not in self._cache:
            assert self.keys is not None
            public, secret = read_key_file(self.keys / (HUB + SECRET_SUFFIX), secret=True)
            allowed = self.keys / ALLOWED
            if not read_allowed(allowed):
                raise BusSecurityError(
                    f"{allowed}: no allowed client keys (add one: m3sense keys allow FILE --dir {self.keys})"
                )
            self._cache["server"] = ServerKeys(public, secret, allowed)  # type: ignore[arg-type]
        return self._cache["server"]

    def as_args(self) -> list[str]:
        """The same setting as command-line options, for the stages ``run`` starts."""
        return (["--bus-keys", str(self.keys)] if self.keys is not None else []) + (
            ["--insecure"] if self.insecure else []
        )


_current = BusSecurity()


def configure(security: BusSecurity) -> None:
    """Set the process-wide setting (the CLI does, once, from ``--bus-keys``/``--insecure``)."""
    global _current
    _current = security


def current() -> BusSecurity:
    return _current


def check_address(address: str, security: BusSecurity) -> None:
    """Refuse a plain non-loopback address unless insecure was asked for (then warn)."""
    if security.curve or is_loopback(address):
        return
    if not security.insecure:
        raise BusSecurityError(
            f"bus {address} is not loopback: give --bus-keys DIR (make them with: m3sense keys init --dir DIR), "
            f"or --insecure for plain text anyone on the network can read and write"
        )
    if address not in _warned:
        _warned.add(address)
        log.warning("bus %s is not loopback and has no keys: anyone who reaches it can read and publish", address)


_warned: set[str] = set()


def secure_client(sock: zmq.Socket, security: BusSecurity) -> None:
    """CURVE client options on a socket before it connects (no-op without keys).

    A refused handshake is said once, as an error: ZeroMQ does not retry a connection that
    authentication refused, so without it the command would wait in silence."""
    if not security.curve:
        return
    keys = security.client_keys()
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_serverkey = keys.server
    folder = security.keys
    assert folder is not None  # curve: there are keys

    def say(event: int, endpoint: str) -> None:
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            log.error(
                "bus: the hub at %s refused this host's key %s: allow it on the hub's host "
                "(m3sense keys allow client.key --dir DIR) and start this command again",
                endpoint,
                folder / (CLIENT + PUBLIC_SUFFIX),
            )
        else:
            log.error(
                "bus: no CURVE handshake with the hub at %s: does it run with --bus-keys, and is %s its public key?",
                endpoint,
                folder / (HUB + PUBLIC_SUFFIX),
            )

    watch_handshakes(sock, say)


_FAILED = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL


def watch_handshakes(sock: zmq.Socket, say: Callable[[int, str], None], *, once: bool = True) -> None:
    """``say(event, endpoint)`` for each failed handshake of ``sock`` (with ``once``, each kind of
    failure once per endpoint), from a thread that reads the socket's monitor until it closes."""
    address = f"inproc://m3sense-handshakes-{uuid.uuid4().hex}"
    sock.monitor(address, _FAILED | zmq.EVENT_MONITOR_STOPPED)
    mon: zmq.Socket = zmq.Context.shadow(sock.context.underlying).socket(zmq.PAIR)
    mon.connect(address)

    def read() -> None:
        told: set[tuple[int, str]] = set()
        try:
            while True:
                msg = recv_monitor_message(mon)
                event, endpoint = msg["event"], msg["endpoint"].decode(errors="replace")
                if event == zmq.EVENT_MONITOR_STOPPED:
                    return
                if not once or (event, endpoint) not in told:
                    told.add((event, endpoint))
                    say(event, endpoint)
        except zmq.ZMQError:
            return
        finally:
            mon.close(linger=0)

    threading.Thread(target=read, name="m3sense-bus-handshakes", daemon=True).start()


def secure_server(sock: zmq.Socket, security: BusSecurity) -> None:
    """CURVE server options on a socket before it binds (no-op without keys)."""
    if not security.curve:
        return
    keys = security.server_keys()
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_server = True


class AllowList:
    """ZAP credentials provider: admits the keys in the allow-list folder and counts refusals.

    An unknown key makes it read the folder again, so a key added with ``m3sense keys allow``
    is admitted by a running hub; a removed key stays admitted until the hub restarts."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.keys = read_allowed(folder)
        self.refused = 0
        self._lock = threading.Lock()

    def callback(self, domain: str, key: bytes) -> bool:
        try:
            return self._admits(key)
        except Exception:  # an exception here would end the ZAP thread, and every handshake would hang
            log.exception("bus allow-list: refusing a client after an error")
            return False

    def _admits(self, key: bytes) -> bool:
        with self._lock:
            if key not in self.keys:
                try:
                    self.keys = read_allowed(self.folder)
                except BusSecurityError as exc:
                    log.warning("bus allow-list: %s", exc)
            if key in self.keys:
                return True
            self.refused += 1
            if self.refused == 1 or self.refused % 100 == 0:
                log.warning("bus: refused a client with an unknown key (%d so far)", self.refused)
            return False


def start_authenticator(ctx: zmq.Context, security: BusSecurity) -> tuple[ThreadAuthenticator, AllowList]:
    """A ZAP handler on ``ctx`` that admits the allow-listed keys; start it before binding."""
    allow = AllowList(security.server_keys().allowed)
    auth = ThreadAuthenticator(ctx, log=logging.getLogger("bus.zap"))
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=allow)
    return auth, allow


# -- key files (``m3sense keys``) ---------------------------------------------------------------------


def new_keypair(folder: Path, name: str) -> tuple[Path, Path]:
    """Write NAME.key and NAME.key_secret (0600) into ``folder``; never overwrites a key."""
    if not name or "/" in name or name.startswith("."):
        raise BusSecurityError(f"key name {name!r} must be a plain file name")
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    public, secret = folder / (name + PUBLIC_SUFFIX), folder / (name + SECRET_SUFFIX)
    for p in (public, secret):
        if p.exists():
            raise BusSecurityError(f"{p}: already exists (a key is never overwritten; remove it first)")
    with tempfile.TemporaryDirectory(dir=folder) as tmp:  # 0700: the secret is never readable by others
        made_public, made_secret = zmq.auth.create_certificates(tmp, name)
        os.chmod(made_secret, 0o600)
        os.chmod(made_public, 0o644)
        os.link(made_secret, secret)  # link: fails rather than replace a file that appeared meanwhile
        os.link(made_public, public)
    return public, secret


def allow_key(folder: Path, public_file: Path, name: str | None = None) -> Path:
    """Copy a client's public key into ``folder/allowed/``; returns where it went."""
    public, secret = read_key_file(public_file, secret=False)
    if secret is not None:
        raise BusSecurityError(f"{public_file}: holds a secret key; allow the public file (NAME.key) instead")
    allowed = folder / ALLOWED
    allowed.mkdir(parents=True, exist_ok=True)
    stem = name or public_file.name.removesuffix(PUBLIC_SUFFIX)
    target = allowed / (stem + PUBLIC_SUFFIX)
    if target.exists():
        if read_key_file(target, secret=False)[0] == public:
            return target
        raise BusSecurityError(f"{target}: another key is allowed under this name (give --name)")
    shutil.copyfile(public_file, target)
    return target


def init_folder(folder: Path) -> list[Path]:
    """A one-host setup: the hub's pair, a client pair, and that client allowed."""
    made = [*new_keypair(folder, HUB), *new_keypair(folder, CLIENT)]
    made.append(allow_key(folder, folder / (CLIENT + PUBLIC_SUFFIX)))
    return made
