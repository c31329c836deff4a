"""The ``--sink`` address and the InfluxDB token.

SINK is one of:

- ``sqlite:PATH`` (``sqlite:affect.db``, ``sqlite:/abs/affect.db``), SQLAlchemy's
  ``sqlite:///relative/path.db`` and ``sqlite:////absolute/path.db`` (what follows
  ``sqlite:///`` is the path), or a bare path ending in ``.db``, ``.sqlite`` or ``.sqlite3``;
- ``influx://HOST:PORT[/PREFIX]?db=DB[&rp=RP]``: InfluxDB 1.x, written with its own
  ``/write`` API (the only one before 1.8);
- ``influx://HOST:PORT[/PREFIX]?bucket=BUCKET[&org=ORG]``: the v2 write API (2.x, 3.x,
  1.8+; on 1.8 the bucket is ``database/retention-policy`` or ``database``, on 3.x the
  database). A server that has no v2 API (a 404, and ``/ping`` says 1.x) is then written
  with ``/write``; ``api=v1`` or ``api=v2`` says which API instead of finding out.
  ``influxs://`` is HTTPS; ``http://`` and ``https://`` URLs are accepted too.

- ``mqtt://HOST:PORT[?user=U&prefix=m3sense&discovery=homeassistant&client_id=ID]``: an
  MQTT broker (states, availability, Home Assistant discovery, alerts: :mod:`storage.mqtt`);
  ``mqtts://`` is TLS (``ca=PATH`` for a private CA). The user name comes from ``user=`` or
  ``$MQTT_USERNAME``, the password from ``$MQTT_PASSWORD`` or ``--mqtt-password-file``.

Plain HTTP to anything but a loopback address is refused unless the URL says
``insecure=1``: physiology is health data and a token must not cross a network in clear.
The token never appears in SINK, argv or a log line: it comes from the environment
(``INFLUX_TOKEN``) or from ``--token-file``; 1.x credentials are given as ``user:password``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import SplitResult, parse_qs, urlsplit

from common.errors import UserError

TOKEN_ENV = "INFLUX_TOKEN"
MQTT_USER_ENV = "MQTT_USERNAME"
MQTT_PASSWORD_ENV = "MQTT_PASSWORD"
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_INFLUX_SCHEMES = {"influx": "http", "influxs": "https", "http": "http", "https": "https"}
_INFLUX_PARAMS = {"bucket", "org", "db", "rp", "api", "insecure"}
_APIS = ("v1", "v2")
_MQTT_SCHEMES = {"mqtt": False, "mqtts": True}
_MQTT_PARAMS = {"user", "prefix", "discovery", "client_id", "ca", "insecure"}
_TOPIC_ROOT = re.compile(r"^[A-Za-z0-9_-]{1,64}(/[A-Za-z0-9_-]{1,64}){0,3}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class SqliteTarget:
    path: Path

    @property
    def address(self) -> str:
        return f"sqlite:{self.path}"


@dataclass(frozen=True, slots=True, kw_only=True)
class InfluxTarget:
    """Where InfluxDB listens; ``token`` is kept out of ``repr`` (and so out of logs).
    ``api`` is the write API the address asked for, None to find out from the server."""

    url: str  # http(s)://host:port[/prefix], what the client talks to
    bucket: str  # db[/rp] on 1.x
    org: str = "-"
    api: str | None = None
    token: str | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        """The SINK address back, in its canonical form (there is never a secret in it)."""
        scheme, rest = self.url.split("://", 1)
        scheme = "influx" if scheme == "http" else "influxs"
        if self.api == "v1":
            query = f"db={self.database}" + (f"&rp={self.retention_policy}" if self.retention_policy else "")
        else:
            query = f"bucket={self.bucket}" + (f"&org={self.org}" if self.org != "-" else "")
            query += "&api=v2" if self.api == "v2" else ""
        if scheme == "influx" and not _loopback(urlsplit(self.url).hostname or ""):
            query += "&insecure=1"
        return f"{scheme}://{rest}?{query}"

    @property
    def database(self) -> str:
        """The InfluxQL database of the bucket (its ``db`` part on 1.x)."""
        return self.bucket.split("/", 1)[0]

    @property
    def retention_policy(self) -> str | None:
        return self.bucket.split("/", 1)[1] if "/" in self.bucket else None

    def with_token(self, token: str | None) -> InfluxTarget:
        return replace(self, token=token)


@dataclass(frozen=True, slots=True, kw_only=True)
class MqttTarget:
    """An MQTT broker; ``password`` is kept out of ``repr``. ``discovery`` is the Home
    Assistant discovery prefix ("" for none)."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    prefix: str = "m3sense"
    discovery: str = "homeassistant"
    client_id: str | None = None
    ca_file: Path | None = None
    insecure: bool = False
    password: str | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        query = [f"user={self.username}"] if self.username else []
        query += [f"prefix={self.prefix}"] if self.prefix != "m3sense" else []
        query += [f"discovery={self.discovery or 'none'}"] if self.discovery != "homeassistant" else []
        query += ["insecure=1"] if self.insecure else []
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}" + ("?" + "&".join(query) if query else "")

    def with_credentials(self, username: str | None, password: str | None) -> MqttTarget:
        return replace(self, username=self.username or username, password=password)


Target = SqliteTarget | InfluxTarget | MqttTarget


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_sink(sink: str) -> Target:
    """Parse a SINK address; raises :class:`UserError` naming what is wrong."""
    if sink.startswith("sqlite:"):
        path = sink.removeprefix("sqlite:///") if sink.startswith("sqlite:///") else sink.removeprefix("sqlite:")
        if not path or path.startswith("//"):  # sqlite://HOST/... names a host, which SQLite has not
            raise UserError(f"sink {sink!r}: write sqlite:PATH, sqlite:///relative.db or sqlite:////absolute.db")
        return SqliteTarget(path=Path(path))
    parts = urlsplit(sink)
    if parts.scheme in _MQTT_SCHEMES:
        return _parse_mqtt(sink)
    scheme = _INFLUX_SCHEMES.get(parts.scheme)
    if scheme is None:
        if "://" not in sink and sink.endswith(_SQLITE_SUFFIXES):
            return SqliteTarget(path=Path(sink))
        raise UserError(
            f"sink {sink!r}: expected sqlite:PATH, PATH.db, influx://HOST:PORT?db=DB (1.x), "
            "influx://HOST:PORT?bucket=B[&org=O] or mqtt://HOST:PORT"
        )
    port = _port(sink, parts)
    if not parts.hostname:
        raise UserError(f"sink {sink!r}: no host")
    if parts.username or parts.password:
        raise UserError(f"sink {sink!r}: no credentials in the URL; use ${TOKEN_ENV} or --token-file")
    params = _params(sink, parts.query, _INFLUX_PARAMS)
    bucket, api = _bucket_and_api(sink, params)
    if scheme == "http" and not _loopback(parts.hostname) and params.get("insecure") not in ("1", "true"):
        raise UserError(
            f"sink {sink!r}: plain HTTP to a remote host sends health data and the token in clear; "
            "use influxs:// (HTTPS) or add insecure=1"
        )
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = f"{host}:{port}" if port else host
    return InfluxTarget(
        url=f"{scheme}://{netloc}{parts.path.rstrip('/')}", bucket=bucket, org=params.get("org") or "-", api=api
    )


def _port(sink: str, parts: SplitResult) -> int | None:
    """The URL's port, None when it names none."""
    try:
        return parts.port
    except ValueError:
        raise UserError(f"sink {sink!r}: bad port") from None


def _params(sink: str, query: str, allowed: set[str]) -> dict[str, str]:
    """The query's parameters, each of them known and given once."""
    values = parse_qs(query, keep_blank_values=True)
    unknown = set(values) - allowed
    if unknown:
        raise UserError(f"sink {sink!r}: unknown parameter(s) {', '.join(sorted(unknown))}")
    if any(len(v) > 1 for v in values.values()):
        raise UserError(f"sink {sink!r}: a parameter is given twice")
    return {k: v[0] for k, v in values.items()}


def _parse_mqtt(sink: str) -> MqttTarget:
    parts = urlsplit(sink)
    tls = _MQTT_SCHEMES[parts.scheme]
    port = _port(sink, parts) or (8883 if tls else 1883)
    if not parts.hostname:
        raise UserError(f"sink {sink!r}: no host")
    if parts.username or parts.password:
        raise UserError(
            f"sink {sink!r}: no credentials in the URL; user= names the user, "
            f"${MQTT_PASSWORD_ENV} or --mqtt-password-file gives the password"
        )
    if parts.path not in ("", "/"):
        raise UserError(f"sink {sink!r}: the topic root goes in prefix=, not in a path")
    params = _params(sink, parts.query, _MQTT_PARAMS)
    prefix = params.get("prefix", "m3sense")
    discovery = params.get("discovery", "homeassistant")
    discovery = "" if discovery in ("none", "0", "off") else discovery
    for name, value in (("prefix", prefix), ("discovery", discovery)):
        if value and not _TOPIC_ROOT.match(value):
            raise UserError(f"sink {sink!r}: {name}= must be topic levels of letters, digits, _ or -")
    insecure = params.get("insecure") in ("1", "true")
    if not tls and not _loopback(parts.hostname) and not insecure:
        raise UserError(
            f"sink {sink!r}: plain MQTT to a remote host sends health data and the password in "
            "clear; use mqtts:// (TLS) or add insecure=1"
        )
    if "ca" in params and not tls:
        raise UserError(f"sink {sink!r}: ca= is for mqtts://")
    return MqttTarget(
        host=parts.hostname,
        port=port,
        tls=tls,
        username=params.get("user") or None,
        prefix=prefix,
        discovery=discovery,
        client_id=params.get("client_id") or None,
        ca_file=Path(params["ca"]) if params.get("ca") else None,
        insecure=insecure,
    )


def read_mqtt_password(password_file: Path | None, environ: Mapping[str, str]) -> str | None:
    """The MQTT password from ``--mqtt-password-file`` if given, else ``$MQTT_PASSWORD``, else None.
    Only line ends are stripped from the file: a password may begin or end with a space."""
    return _read_secret("--mqtt-password-file", password_file, environ, MQTT_PASSWORD_ENV, strip="\r\n")


def _bucket_and_api(sink: str, params: Mapping[str, str]) -> tuple[str, str | None]:
    """``db=DB&rp=RP`` is 1.x, ``bucket=`` the v2 API (or 1.x if the server turns out to be)."""
    api = params.get("api") or None
    if api not in (None, *_APIS):
        raise UserError(f"sink {sink!r}: api= is v1 (InfluxDB 1.x /write) or v2 (/api/v2/write)")
    if "db" in params:
        if "bucket" in params or "org" in params:
            raise UserError(f"sink {sink!r}: db= (1.x) and bucket=/org= (v2) do not go together")
        if api == "v2":
            raise UserError(f"sink {sink!r}: db= is for the 1.x API; with api=v2 write bucket=DB/RP")
        if not params["db"] or "/" in params["db"]:
            raise UserError(f"sink {sink!r}: db= needs a database name (the retention policy goes in rp=)")
        return params["db"] + (f"/{params['rp']}" if params.get("rp") else ""), "v1"
    if "rp" in params:
        raise UserError(f"sink {sink!r}: rp= goes with db=; with bucket= write bucket=DB/RP")
    if not params.get("bucket"):
        raise UserError(f"sink {sink!r}: db=DB (InfluxDB 1.x) or bucket=B (v2) is required")
    return params["bucket"], api


def read_token(token_file: Path | None, environ: Mapping[str, str]) -> str | None:
    """The token from ``--token-file`` if given, else from ``$INFLUX_TOKEN``, else None."""
    return _read_secret("--token-file", token_file, environ, TOKEN_ENV, strip=None)


def _read_secret(
    option: str, path: Path | None, environ: Mapping[str, str], env: str, *, strip: str | None
) -> str | None:
    """The secret in the file ``option`` named (``strip`` taken off its ends, None: whitespace),
    else ``$env``, else None; an unreadable or empty file is a user error."""
    if path is not None:
        try:
            secret = path.read_text().strip(strip)
        except OSError as exc:
            raise UserError(f"{option} {path}: {exc.strerror}") from None
        if not secret:
            raise UserError(f"{option} {path}: file is empty")
        return secret
    return environ.get(env) or None
