"""The E4 streaming-server line protocol (e4-facts.md section 2): a server and a client source.

Empatica's Windows "EmpaticaBLEServer" spoke a plain-TCP line protocol that many lab tools
were built on; it died with the E4's software. ``m3sense e4-server`` speaks it again from
the bus (so those tools work on Linux and macOS with live BLE, replay or virtual data), and
:class:`E4ServerSource` reads from any such server onto the bus.

Pure parts: :class:`E4ServerSession` (one client connection's state machine: bytes in,
reply lines out), :func:`data_lines` (a bus message as data lines), :class:`LineParser`
(server output to replies and samples: buffered, ``\\r`` stripped, decimal commas and both
``E4_Temp``/``E4_Temperature`` accepted) and :class:`SampleBatcher`. The asyncio edges are
:func:`serve` and :class:`E4ServerSource`.

Access (:class:`Access`). The vendor's protocol has no authentication, so the server listens on
loopback by default. Anything wider needs an allow-list of client addresses (what an unchanged
client can live with) or a token: a first command line ``server_auth TOKEN`` answered
``R server_auth OK``. It is shaped like every other command and reply, so a client that lets
its user add a command line (or a wrapper that writes one) works without changing its parser.
Other clients get one clear ``ERR`` reply and are disconnected.

Streams: ``E4_Hr`` goes out with each ``E4_Ibi`` (as 60/IBI, as the vendor sent HR with each
beat); m3sense's own 1 Hz ``hr`` is not repeated. Unsolicited ``R connection lost to device``
and ``R connection re-established to device`` lines follow the wristband's link status.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from bus import Message, Publisher, Subscriber
from common.aio import OnReady
from e4 import RATES_HZ as E4_RATES_HZ

log = logging.getLogger(__name__)

DEFAULT_PORT = 28000
DEVICE_NAME = "Empatica_E4"

#: bus modality -> (subscription token, line prefix)
STREAM_OF = {
    "acc": ("acc", "E4_Acc"),
    "bvp": ("bvp", "E4_Bvp"),
    "eda": ("gsr", "E4_Gsr"),
    "temp": ("tmp", "E4_Temperature"),
    "ibi": ("ibi", "E4_Ibi"),
    "battery": ("bat", "E4_Battery"),
    "tag": ("tag", "E4_Tag"),
}
TOKENS = ("acc", "bvp", "gsr", "tmp", "ibi", "bat", "tag")
#: line prefix -> bus modality (the client side; E4_Temp is what one doc page says)
MODALITY_OF = {prefix: m for m, (_, prefix) in STREAM_OF.items()} | {"E4_Temp": "temp", "E4_Hr": "hr"}
RATES_HZ = {m: E4_RATES_HZ[m] for m in ("acc", "bvp", "eda", "temp")}
#: Empatica's server sent BVP at the E4's PPG scale, 0.9 nW per count (e4-facts.md section 0);
#: BVP that is still in device counts (BLE, ``meta["unit"] == "counts"``) is converted to it,
#: BVP from exports and other servers already is in it.
BVP_NW_PER_COUNT = 0.9
MAX_LINE = 4096
AUTH_COMMAND = "server_auth"
MIN_TOKEN_CHARS = 16


@dataclass(frozen=True, slots=True)
class Access:
    """Who may use the server. No rule: anyone who can connect (a loopback listener's default).
    With rules, they hold for every client, this host's too: clients from the ``allow``
    networks as they are, others with ``token`` when there is one, nobody else."""

    allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    token: str | None = None

    @property
    def guarded(self) -> bool:
        return bool(self.allow) or self.token is not None

    def admits(self, peer: str | None) -> bool:
        """Whether a client from ``peer`` needs no token."""
        if not self.guarded:
            return True
        try:
            ip = ipaddress.ip_address((peer or "").split("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.allow)

    def token_ok(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())


def parse_allow(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An address or network (``10.0.0.7``, ``192.168.1.0/24``); ValueError otherwise."""
    return ipaddress.ip_network(text, strict=False)


def _num(x: float) -> str:
    return format(float(x), ".6g")


def data_lines(msg: Message) -> list[tuple[str, str]]:
    """(subscription token, line) for each sample of a raw bus message; others give none."""
    spec = STREAM_OF.get(msg.modality) if msg.kind == "raw" else None
    if spec is None:
        return []
    token, prefix = spec
    if msg.modality == "tag":
        return [(token, f"{prefix} {msg.t0_s:.6f}")]
    times = msg.sample_times() if msg.fs_hz > 0 else np.full(msg.n, msg.t0_s)
    samples = msg.samples
    if msg.modality == "bvp" and msg.meta.get("unit") == "counts":
        samples = samples * BVP_NW_PER_COUNT
    out = []
    for t, v in zip(times.tolist(), samples.tolist()):
        if msg.modality == "acc":
            out.append((token, f"{prefix} {t:.6f} {int(v[0])} {int(v[1])} {int(v[2])}"))
            continue
        if not math.isfinite(v):
            continue
        out.append((token, f"{prefix} {t:.6f} {_num(v)}"))
        if msg.modality == "ibi" and v > 0:
            out.append((token, f"E4_Hr {t:.6f} {_num(60.0 / v)}"))
    return out


class E4ServerSession:
    """One TCP client of the server. ``devices()`` names the wristbands available now."""

    def __init__(
        self, devices: Callable[[], Sequence[str]], *, peer: str | None = None, access: Access | None = None
    ) -> None:
        self._devices = devices
        self.peer = peer
        self._access = access or Access()
        self.authorized = self._access.admits(peer)
        self._buffer = b""
        self.bound: str | None = None
        self.subscriptions: set[str] = set()
        self.paused = False
        self.closing = False

    def wants(self, device: str, token: str) -> bool:
        return self.bound == device and not self.paused and token in self.subscriptions

    def receive_data(self, data: bytes) -> list[str]:
        """Reply lines (without line ends) for the complete commands in ``data``."""
        self._buffer += data
        replies: list[str] = []
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            text = line.decode("utf-8", "replace").strip()
            if text:
                replies.append(self._command(text.split()))
        if len(self._buffer) > MAX_LINE:
            self._buffer = b""
            replies.append("R error ERR line too long")
        return replies

    def _device_list(self, extra: str = "") -> str:
        devices = list(self._devices())
        return " | ".join([str(len(devices)), *(f"{d} {DEVICE_NAME}{extra}" for d in devices)])

    def _command(self, words: list[str]) -> str:
        cmd, args = words[0], words[1:]
        if cmd == AUTH_COMMAND:
            return self._auth(args)
        if not self.authorized:
            if self._access.token is None:
                self.closing = True
                return f"R {cmd} ERR access denied: client address {self.peer} is not allowed"
            return f"R {cmd} ERR authentication required: send {AUTH_COMMAND} TOKEN first"
        known = set(self._devices())
        if cmd == "server_status":
            return "R server_status OK"
        if cmd == "device_list":
            return f"R device_list {self._device_list()}"
        if cmd == "device_discover_list":
            return f"R device_discover_list {self._device_list(' allowed')}"
        if cmd in ("device_connect_btle", "device_disconnect_btle"):
            # m3sense's BLE links are managed by `ble stream`; these only confirm the wristband
            ok = bool(args) and args[0] in known
            return f"R {cmd} OK" if ok else f"R {cmd} ERR device {args[0] if args else '?'} is not available"
        if cmd == "device_connect":
            if not args or args[0] not in known:
                return "R device_connect ERR The device requested for connection is not available."
            self.bound = args[0]
            return "R device_connect OK"
        if cmd == "device_disconnect":
            if self.bound is None:
                return "R device_disconnect ERR No connected device."
            self.bound, self.closing = None, True
            return "R device_disconnect OK"
        if cmd == "device_subscribe":
            if len(args) != 2 or args[0] not in TOKENS or args[1].upper() not in ("ON", "OFF"):
                return f"R device_subscribe {args[0] if args else '?'} ERR usage: device_subscribe STREAM ON|OFF"
            if self.bound is None:
                return f"R device_subscribe {args[0]} ERR You are not connected to any device"
            if args[1].upper() == "ON":
                self.subscriptions.add(args[0])
            else:
                self.subscriptions.discard(args[0])
            return f"R device_subscribe {args[0]} OK"
        if cmd == "pause":
            if len(args) != 1 or args[0].upper() not in ("ON", "OFF"):
                return "R pause ERR usage: pause ON|OFF"
            self.paused = args[0].upper() == "ON"
            return f"R pause {args[0].upper()}"
        return f"R {cmd} ERR unknown command"

    def _auth(self, args: list[str]) -> str:
        if self.authorized:
            return f"R {AUTH_COMMAND} OK"
        if len(args) == 1 and self._access.token_ok(args[0]):
            self.authorized = True
            return f"R {AUTH_COMMAND} OK"
        self.closing = True  # one guess per connection
        if self._access.token is None:
            return f"R {AUTH_COMMAND} ERR access denied: client address {self.peer} is not allowed"
        return f"R {AUTH_COMMAND} ERR wrong token"


@dataclass(slots=True)
class ServerStats:
    clients: int = 0
    lines: int = 0
    dropped_clients: int = 0
    refused_clients: int = 0  # left or were sent away without being admitted (address, token)


async def serve(
    bus: str,
    host: str,
    port: int,
    *,
    on_ready: OnReady | None = None,
    on_device: Callable[[str], None] | None = None,
    max_buffer_bytes: int = 4 << 20,
    stop: asyncio.Event | None = None,
    access: Access | None = None,
) -> ServerStats:
    """Serve the bus's live streams in the E4 line protocol until ``stop`` is set.

    ``access`` says who may (default: anyone who can connect; the CLI listens on loopback
    unless given an allow-list, a token or ``--insecure``).

    ``on_ready("host:port")`` runs once listening (port 0 picks a free port); ``on_device(id)`` when a
    wristband first appears on the bus. A client that does not keep up (more than
    ``max_buffer_bytes`` unsent) is disconnected rather than allowed to grow memory.
    """
    stats = ServerStats()
    devices: dict[str, bool] = {}  # id -> link up
    sessions: dict[E4ServerSession, asyncio.StreamWriter] = {}

    def send(session: E4ServerSession, lines: Iterable[str]) -> None:
        writer = sessions[session]
        if writer.is_closing():
            return
        writer.write("".join(line + "\n" for line in lines).encode())
        if writer.transport.get_write_buffer_size() > max_buffer_bytes:
            log.warning("e4-server: dropping a client that does not keep up")
            stats.dropped_clients += 1
            writer.close()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        session = E4ServerSession(
            lambda: [d for d, up in devices.items() if up], peer=peer[0] if peer else None, access=access
        )
        sessions[session] = writer
        stats.clients += 1
        try:
            while not session.closing:
                data = await reader.read(4096)
                if not data:
                    break
                send(session, session.receive_data(data))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            if not session.authorized:
                stats.refused_clients += 1
                log.warning("e4-server: refused a client from %s", session.peer)
            del sessions[session]
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass

    def on_message(msg: Message) -> None:
        if msg.device not in devices:
            devices[msg.device] = True
            if on_device is not None:
                on_device(msg.device)
        if msg.kind == "status":
            event = msg.meta.get("event")
            notice = None
            if event in ("disconnected", "end") and devices[msg.device]:
                devices[msg.device] = False
                notice = f"R connection lost to device {msg.device}"
            elif event == "connected" and not devices[msg.device]:
                devices[msg.device] = True
                notice = f"R connection re-established to device {msg.device}"
            if notice:
                for s in [s for s in sessions if s.bound == msg.device]:
                    send(s, [notice])
            return
        lines = data_lines(msg)
        if not lines:
            return
        for s in [s for s in sessions if s.bound == msg.device and not s.paused and s.authorized]:
            mine = [line for token, line in lines if token in s.subscriptions]
            if mine:
                stats.lines += len(mine)
                send(s, mine)

    server = await asyncio.start_server(client, host, port)
    stop = stop or asyncio.Event()
    try:
        async with Subscriber(bus, ["raw/", "status/"]) as sub:
            if on_ready is not None:
                on_ready(f"{host}:{server.sockets[0].getsockname()[1]}")
            async for msg in sub.until(stop):
                on_message(msg)
    finally:
        server.close()
        for writer in list(sessions.values()):
            writer.close()
        await server.wait_closed()
    return stats


# -- the client side -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """A line starting with ``R``: a command reply or an unsolicited notice."""

    words: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Sample:
    modality: str
    t_s: float
    values: tuple[float, ...]


class LineParser:
    """Server output -> replies and samples; unparseable lines are counted, not raised."""

    def __init__(self) -> None:
        self._buffer = b""
        self.bad_lines = 0

    def feed(self, data: bytes) -> list[Reply | Sample]:
        self._buffer += data
        out: list[Reply | Sample] = []
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > MAX_LINE:
            self._buffer = b""
            self.bad_lines += 1
        for raw in lines:
            text = raw.decode("utf-8", "replace").strip("\r ")
            if not text:
                continue
            words = text.split(" ")
            if words[0] == "R":
                out.append(Reply(words=tuple(words[1:])))
                continue
            modality = MODALITY_OF.get(words[0])
            try:
                if modality is None or len(words) < 2:
                    raise ValueError(words[0])
                nums = [float(w.replace(",", ".")) for w in words[1:]]
            except ValueError:
                self.bad_lines += 1
                continue
            out.append(Sample(modality=modality, t_s=nums[0], values=tuple(nums[1:])))
        return out


@dataclass(slots=True)
class _Run:
    t0_s: float
    values: list = field(default_factory=list)


class SampleBatcher:
    """Periodic samples -> bus-sized chunks; a timestamp off the grid starts a new chunk.

    The server stamps samples at the nominal rate from its first packet, so within a run
    sample k sits at t0 + k/fs; anything else (a gap, a reconnect) ends the chunk.
    """

    def __init__(self, modality: str, *, chunk: int) -> None:
        self.modality = modality
        self.fs_hz = RATES_HZ[modality]
        self._chunk = chunk
        self._run: _Run | None = None

    def push(self, t_s: float, values: tuple[float, ...]) -> list[tuple[float, list]]:
        out = []
        run = self._run
        if run is not None and abs(t_s - (run.t0_s + len(run.values) / self.fs_hz)) > 0.5 / self.fs_hz:
            out.append((run.t0_s, run.values))
            run = None
        if run is None:
            run = self._run = _Run(t0_s=t_s)
        run.values.append(values if self.modality == "acc" else values[0])
        if len(run.values) >= self._chunk:
            out.append((run.t0_s, run.values))
            self._run = None
        return out

    def flush(self) -> list[tuple[float, list]]:
        run, self._run = self._run, None
        return [(run.t0_s, run.values)] if run is not None and run.values else []


CHUNKS = {"bvp": 11, "acc": 6, "eda": 6, "temp": 4}


def chunk_samples(modality: str, packet_s: float | None = None) -> int:
    """Samples per bus message from the client: the wristband's packet, or about ``packet_s``
    seconds when that is more (the rule of ``replay --packet-s`` and ``ble stream --packet-s``)."""
    size = CHUNKS[modality]
    return size if packet_s is None else max(size, round(packet_s * RATES_HZ[modality]))


class E4ServerSource:
    """Reads one wristband from an E4 streaming server and publishes it on the bus; ``packet_s``
    gathers about that many seconds of each signal per message (see :func:`chunk_samples`), and
    then a link status from the server first publishes what the batchers hold."""

    def __init__(
        self,
        host: str,
        port: int,
        pub: Publisher,
        *,
        device: str | None = None,
        bus_device: str | None = None,
        timeout_s: float = 10.0,
        token: str | None = None,
        packet_s: float | None = None,
    ) -> None:
        self.host, self.port = host, port
        self._packet_s = packet_s
        self._token = token
        self.device = device
        self.bus_device = bus_device
        self._pub = pub
        self._timeout_s = timeout_s
        self._parser = LineParser()
        self._pending: list[Reply | Sample] = []
        self.samples = 0
        self.notices: list[str] = []

    async def _reply(self, reader: asyncio.StreamReader, cmd: str) -> tuple[str, ...]:
        async def next_reply() -> tuple[str, ...]:
            while True:
                while self._pending:
                    item = self._pending.pop(0)
                    if isinstance(item, Reply) and item.words and item.words[0] == cmd:
                        return item.words[1:]
                data = await reader.read(4096)
                if not data:
                    raise ConnectionError(f"server closed the connection waiting for {cmd}")
                self._pending.extend(self._parser.feed(data))

        return await asyncio.wait_for(next_reply(), self._timeout_s)

    async def _command(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: str) -> tuple[str, ...]:
        writer.write((line + "\r\n").encode())
        await writer.drain()
        words = await self._reply(reader, line.split()[0])
        if "ERR" in words:
            said = f"{AUTH_COMMAND} ..." if line.startswith(AUTH_COMMAND) else line  # never echo the token
            raise ConnectionError(f"server refused {said!r}: {' '.join(words)}")
        return words

    async def run(self, on_ready: OnReady | None = None) -> None:
        """Connect, pick the wristband, subscribe to everything and publish until cancelled
        or the server closes; ``on_ready("host:port")`` once streaming. Raises ConnectionError
        when the server says no."""
        reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self._timeout_s)
        try:
            if self._token is not None:
                await self._command(reader, writer, f"{AUTH_COMMAND} {self._token}")
            listing = " ".join(await self._command(reader, writer, "device_list"))
            ids = [part.split()[0] for part in listing.split("|")[1:] if part.strip()]
            device = self.device or (ids[0] if ids else None)
            if device is None or device not in ids:
                raise ConnectionError(f"no wristband {self.device or ''} on the server (it lists {ids})")
            self.device = device
            name = self.bus_device or device
            await self._command(reader, writer, f"device_connect {device}")
            await self._command(reader, writer, "pause ON")
            for token in TOKENS:
                await self._command(reader, writer, f"device_subscribe {token} ON")
            await self._command(reader, writer, "pause OFF")
            await self._pub.publish(
                "status",
                name,
                t0_s=time.time(),
                fs_hz=0.0,
                meta={"event": "connected", "source": "e4-server", "server": f"{self.host}:{self.port}"},
            )
            if on_ready is not None:
                on_ready(f"{self.host}:{self.port}")
            batchers = {m: SampleBatcher(m, chunk=chunk_samples(m, self._packet_s)) for m in CHUNKS}
            try:
                while True:
                    items, self._pending = self._pending, []
                    for item in items:
                        await self._handle(name, item, batchers)
                    data = await reader.read(65536)
                    if not data:
                        break
                    self._pending = list(self._parser.feed(data))
            finally:
                for b in batchers.values():
                    for t0, values in b.flush():
                        await self._publish_chunk(name, b, t0, values)
        finally:
            writer.close()

    async def _publish_chunk(self, name: str, batcher: SampleBatcher, t0: float, values: list) -> None:
        dtype = np.int16 if batcher.modality == "acc" else np.float64
        await self._pub.publish(
            "raw", name, batcher.modality, t0_s=t0, fs_hz=batcher.fs_hz, samples=np.asarray(values, dtype=dtype)
        )
        self.samples += len(values)

    async def _handle(self, name: str, item: Reply | Sample, batchers: dict[str, SampleBatcher]) -> None:
        if isinstance(item, Reply):
            self.notices.append(" ".join(item.words))
            event = (
                "disconnected"
                if item.words[:2] == ("connection", "lost")
                else "connected"
                if item.words[:2] == ("connection", "re-established")
                else None
            )
            if event:
                if self._packet_s is not None:  # a status follows the samples before it, held ones too
                    for b in batchers.values():
                        for t0, values in b.flush():
                            await self._publish_chunk(name, b, t0, values)
                await self._pub.publish(
                    "status", name, t0_s=time.time(), fs_hz=0.0, meta={"event": event, "source": "e4-server"}
                )
            return
        batcher = batchers.get(item.modality)
        if batcher is not None:
            for t0, values in batcher.push(item.t_s, item.values):
                await self._publish_chunk(name, batcher, t0, values)
        elif item.modality == "ibi" and item.values:
            await self._pub.publish("raw", name, "ibi", t0_s=item.t_s, fs_hz=0.0, samples=np.array(item.values[:1]))
        elif item.modality == "battery" and item.values:
            await self._pub.publish("raw", name, "battery", t0_s=item.t_s, fs_hz=0.0, samples=np.array(item.values[:1]))
        elif item.modality == "tag":
            await self._pub.publish("raw", name, "tag", t0_s=item.t_s, fs_hz=0.0)
        # E4_Hr (per beat) is 60/IBI; the bus's hr is a 1 Hz stream, so it is not republished
