"""The ``--sink`` address and the InfluxDB token.

SINK is one of:

- ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` (SQLAlchemy's
  convention: what follows ``sqlite:///`` is the path), or a bare path ending in ``.db``,
  ``.sqlite`` or ``.sqlite3``;
- ``influx://HOST:PORT[/PREFIX]?bucket=BUCKET[&org=ORG]`` (HTTP) or ``influxs://...``
  (HTTPS); ``http://`` and ``https://`` URLs with the same query are accepted too. On
  InfluxDB 1.8 the bucket is ``database/retention-policy`` (or just ``database``) and org
  is ignored; on 3.x the bucket is the database.

Plain HTTP to anything but a loopback address is refused unless the URL says
``insecure=1``: physiology is health data and a token must not cross a network in clear.
The token never appears in SINK, argv or a log line: it comes from the environment
(``INFLUX_TOKEN``) or from ``--token-file``; 1.x credentials are given as ``user:password``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from m3sense.errors import UserError

TOKEN_ENV = "INFLUX_TOKEN"
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_INFLUX_SCHEMES = {"influx": "http", "influxs": "https", "http": "http", "https": "https"}
_INFLUX_PARAMS = {"bucket", "org", "insecure"}


@dataclass(frozen=True, slots=True, kw_only=True)
class SqliteTarget:
    path: Path


@dataclass(frozen=True, slots=True, kw_only=True)
class InfluxTarget:
    """Where InfluxDB listens; ``token`` is kept out of ``repr`` (and so out of logs)."""

    url: str                      # http(s)://host:port[/prefix], what the client talks to
    bucket: str
    org: str = "-"
    token: str | None = field(default=None, repr=False)

    @property
    def database(self) -> str:
        """The InfluxQL database of the bucket (its ``db`` part on 1.x)."""
        return self.bucket.split("/", 1)[0]

    @property
    def retention_policy(self) -> str | None:
        return self.bucket.split("/", 1)[1] if "/" in self.bucket else None

    def with_token(self, token: str | None) -> "InfluxTarget":
        return InfluxTarget(url=self.url, bucket=self.bucket, org=self.org, token=token)


Target = SqliteTarget | InfluxTarget


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
        if not sink.startswith("sqlite:///") or len(sink) == len("sqlite:///"):
            raise UserError(f"sink {sink!r}: write sqlite:///relative.db or sqlite:////absolute.db")
        return SqliteTarget(path=Path(sink[len("sqlite:///"):]))
    parts = urlsplit(sink)
    scheme = _INFLUX_SCHEMES.get(parts.scheme)
    if scheme is None:
        if "://" not in sink and sink.endswith(_SQLITE_SUFFIXES):
            return SqliteTarget(path=Path(sink))
        raise UserError(
            f"sink {sink!r}: expected sqlite:///PATH, PATH.db, or influx://HOST:PORT?bucket=B[&org=O]"
        )
    try:
        port = parts.port
    except ValueError:
        raise UserError(f"sink {sink!r}: bad port") from None
    if not parts.hostname:
        raise UserError(f"sink {sink!r}: no host")
    if parts.username or parts.password:
        raise UserError(f"sink {sink!r}: no credentials in the URL; use ${TOKEN_ENV} or --token-file")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = set(query) - _INFLUX_PARAMS
    if unknown:
        raise UserError(f"sink {sink!r}: unknown parameter(s) {', '.join(sorted(unknown))}")
    if any(len(v) > 1 for v in query.values()):
        raise UserError(f"sink {sink!r}: a parameter is given twice")
    params = {k: v[0] for k, v in query.items()}
    bucket = params.get("bucket", "")
    if not bucket:
        raise UserError(f"sink {sink!r}: bucket=... is required")
    if scheme == "http" and not _loopback(parts.hostname) and params.get("insecure") not in ("1", "true"):
        raise UserError(
            f"sink {sink!r}: plain HTTP to a remote host sends health data and the token in clear; "
            "use influxs:// (HTTPS) or add insecure=1"
        )
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = f"{host}:{port}" if port else host
    return InfluxTarget(url=f"{scheme}://{netloc}{parts.path.rstrip('/')}", bucket=bucket,
                        org=params.get("org") or "-")


def read_token(token_file: Path | None, environ: Mapping[str, str]) -> str | None:
    """The token from ``--token-file`` if given, else from ``$INFLUX_TOKEN``, else None."""
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise UserError(f"--token-file {token_file}: {exc.strerror}") from None
        if not token:
            raise UserError(f"--token-file {token_file}: file is empty")
        return token
    return environ.get(TOKEN_ENV) or None
