"""``m3sense ble scan|stream|decode``: live E4 wristbands over Bluetooth LE."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from pathlib import Path
from typing import Any

from bus.cli import add_bus_option
from common.aio import Stop, run_until_signal
from common.argtypes import (
    deprecated_alias,
    finite_number,
    fraction,
    non_negative_int,
    non_negative_seconds,
    port,
    positive_int,
    positive_minutes,
    positive_number,
    positive_seconds,
)
from common.errors import UserError
from common.summary import add_json_option, print_summary


def _add_layout_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("packet layout (reverse-engineered; see e4-facts.md section 1)")
    g.add_argument(
        "--start-command",
        default="time",
        metavar="HEX|time",
        help="bytes written to 0x3E71 to start streaming: 'time' = 01 + uint32 LE Unix time "
        "(default), or hex such as 02",
    )
    g.add_argument(
        "--temp-offset",
        type=finite_number,
        default=-275.54,
        metavar="C",
        help="°C = raw * 0.02 + OFFSET (default -275.54; a plain thermopile gives -273.15)",
    )
    g.add_argument(
        "--temp-samples",
        type=positive_int,
        default=4,
        metavar="N",
        help="uint16 samples per 0x3EA6 packet (default 4; some notes say 8)",
    )
    g.add_argument(
        "--counter-byteorder",
        choices=("big", "little"),
        default="big",
        help="byte order of the 2-byte EDA/ACC packet counters (default big)",
    )
    g.add_argument(
        "--no-counters", action="store_true", help="ignore packet counters; find lost packets from arrival times only"
    )


def _layout(args: argparse.Namespace) -> Any:
    from ingest.codec import Layout

    counters = not args.no_counters
    try:
        return Layout(
            start_command=args.start_command,
            temp_offset_c=args.temp_offset,
            temp_samples=args.temp_samples,
            counter_byteorder=args.counter_byteorder,
            bvp_counter=counters,
            eda_counter=counters,
            acc_counter=counters,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None


def register(sub: argparse._SubParsersAction) -> None:
    ble = sub.add_parser(
        "ble",
        help="live E4 wristbands over Bluetooth LE (scan, stream, decode)",
        description="Talk to Empatica E4 wristbands directly over BLE (the vendor's server and "
        "SDKs are gone). --virtual runs the same code against virtual wristbands.",
    )
    bsub = ble.add_subparsers(dest="ble_command", metavar="ACTION")
    bsub.required = True

    s = bsub.add_parser("scan", help="list advertising E4s with address and RSSI")
    deprecated_alias(
        s,
        "--timeout",
        s.add_argument(
            "--timeout-s", dest="timeout", type=positive_seconds, default=5.0, metavar="S", help="scan time (default 5)"
        ),
    )
    s.add_argument("--virtual", type=non_negative_int, default=0, metavar="N", help="scan N virtual wristbands instead")
    s.add_argument("--json", action="store_true", help="one JSON object per device")
    s.set_defaults(func=_scan)

    st = bsub.add_parser(
        "stream",
        help="stream wristbands to the bus, reconnecting as needed",
        description="Connect, subscribe, start streaming, and publish raw/<modality>/<device>/ (bvp, eda, temp, acc, "
        "hr and ibi derived from BVP, battery, tag) and status/<device>/ (connected, disconnected, "
        "battery, on_wrist, tag, gap, bad_packet). Timestamps are host time anchored at the first packet "
        "and advanced at the nominal rate. Ctrl-C stops cleanly. At exit one JSON line per wristband on "
        "stderr: its link statistics.",
    )
    add_bus_option(st)
    add_json_option(
        st,
        "devices (per wristband, as on stderr: device, connects, connect_failures, disconnects, watchdog_trips, "
        "packets, samples (published, per stream), bad, missing_samples, beats, messages (raw messages "
        "published, per stream: fewer than packets with --packet-s))",
    )
    st.add_argument(
        "--device",
        action="append",
        default=[],
        metavar="ADDRESS[=ID]",
        help="wristband address, optionally with the bus device id to use (repeatable; "
        "with --virtual, default all virtual ones)",
    )
    st.add_argument("--virtual", type=non_negative_int, default=0, metavar="N", help="stream N virtual wristbands")
    deprecated_alias(
        st,
        "--duration",
        st.add_argument(
            "--duration-s",
            dest="duration",
            type=positive_seconds,
            metavar="S",
            help="stop after S seconds (host-clock seconds)",
        ),
    )
    st.add_argument(
        "--raw-log",
        type=Path,
        metavar="FILE",
        help="append every notification with its arrival time (JSON lines; `ble decode --raw-log` replays it)",
    )
    deprecated_alias(
        st,
        "--watchdog",
        st.add_argument(
            "--watchdog-s",
            dest="watchdog",
            type=positive_seconds,
            default=5.0,
            metavar="S",
            help="reconnect when a connected wristband sends no BVP/ACC for S seconds (default 5)",
        ),
    )
    st.add_argument("--no-heart", action="store_true", help="do not derive hr/ibi from BVP")
    st.add_argument(
        "--packet-s",
        type=_live_packet_seconds,
        default=None,
        metavar="S",
        help="publish about S seconds of each signal (bvp, eda, temp, acc) per message instead of each "
        "BLE packet (BVP 11 samples, ACC 6, EDA 6, TEMP 4): fewer, larger messages for a gateway with many "
        "wristbands, the same samples and times. Each sample waits up to S (rounded up to whole packets) "
        "longer, and preprocess drops a sample more than 4 s late, so 0 < S <= 2 (default: per packet)",
    )
    _add_privacy_options(st)
    deprecated_alias(
        st,
        "--wait",
        st.add_argument(
            "--wait-s",
            dest="wait",
            type=non_negative_seconds,
            default=0.0,
            metavar="S",
            help="first wait up to S seconds for a subscriber to each wristband's BVP (default 0: don't)",
        ),
    )
    v = st.add_argument_group("virtual wristbands (--virtual)")
    v.add_argument(
        "--time-scale",
        type=positive_number,
        default=1.0,
        metavar="K",
        help="run the virtual wristbands and the host clock K times faster than real time",
    )
    v.add_argument("--seed", type=non_negative_int, default=0, help="seed of the virtual signals and faults")
    v.add_argument(
        "--minutes",
        type=positive_minutes,
        default=10.0,
        metavar="M",
        help="length of the synthetic session each virtual wristband loops (default 10)",
    )
    v.add_argument("--drop", type=fraction, default=0.0, metavar="F", help="fraction of notifications lost")
    v.add_argument("--corrupt", type=fraction, default=0.0, metavar="F", help="fraction sent oversized")
    v.add_argument("--truncate", type=fraction, default=0.0, metavar="F", help="fraction sent truncated")
    deprecated_alias(
        v,
        "--disconnect-every",
        v.add_argument(
            "--disconnect-every-s",
            dest="disconnect_every",
            type=positive_seconds,
            metavar="S",
            help="drop the link every S seconds",
        ),
    )
    deprecated_alias(
        v,
        "--zombie-after",
        v.add_argument(
            "--zombie-after-s",
            dest="zombie_after",
            type=positive_seconds,
            metavar="S",
            help="go silent (still 'connected') S seconds into each connection",
        ),
    )
    _add_layout_options(st)
    st.set_defaults(func=_stream)

    ps = bsub.add_parser(
        "pseudonym",
        help="print the bus device id of wristband addresses (map ids back)",
        description="The device id `ble stream` gives each ADDRESS under this installation's key: "
        "how a study maps its stored ids back to its wristbands.",
    )
    ps.add_argument("address", nargs="+", help="wristband address or serial")
    ps.add_argument("--device-key", type=Path, metavar="FILE", help=_KEY_HELP)
    ps.set_defaults(func=_pseudonym)

    d = bsub.add_parser(
        "decode",
        help="decode one notification (hex), or replay a raw log, as JSON",
        description="`ble decode --char eda HEX` prints the samples of one packet; "
        "`ble decode --raw-log FILE` runs a raw log through the live decoders and "
        "prints one JSON object per message they make.",
    )
    d.add_argument(
        "--char", choices=("bvp", "eda", "temp", "acc", "battery", "button"), help="characteristic the packet came from"
    )
    d.add_argument("hex", nargs="?", help="the packet, hex (spaces and colons allowed)")
    d.add_argument("--raw-log", type=Path, metavar="FILE", help="replay a raw log instead")
    _add_layout_options(d)
    d.set_defaults(func=_decode)

    e = sub.add_parser(
        "e4-server",
        help="serve the bus's live streams in the E4 streaming-server protocol",
        description="Speak the line protocol of Empatica's (discontinued, Windows-only) E4 streaming server on TCP, "
        "fed from the bus (ble stream, replay, virtual wristbands), so clients written for it work "
        "again. Wristbands appear in device_list once they publish on the bus. It listens on loopback; "
        "a wider --host needs --allow or --token-file (or --insecure, which admits anyone).",
    )
    add_bus_option(e)
    e.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    e.add_argument("--port", type=port, default=28000, help="TCP port (default 28000, the vendor's; 0 = any free)")
    e.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="ADDR[/BITS]",
        help="admit clients from this address or network (repeatable); with --allow or --token-file "
        "the rules hold for this host's clients too (--allow 127.0.0.1 lets them in)",
    )
    e.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="admit other clients whose first command is 'server_auth TOKEN', TOKEN being this file's "
        "first line (at least 16 characters; a file keeps it out of ps)",
    )
    add_json_option(e, "clients, lines (data lines sent), dropped_clients, refused_clients")
    e.set_defaults(func=_e4_server)

    c = sub.add_parser(
        "e4-client",
        help="read a wristband from an E4 streaming server onto the bus",
        description="Connect to a server speaking the E4 streaming-server protocol (the vendor's, or "
        "`m3sense e4-server`), subscribe to every stream of one wristband and publish it as "
        "raw/<modality>/<device>/.",
    )
    add_bus_option(c)
    c.add_argument("--server", default="127.0.0.1:28000", metavar="HOST:PORT", help="default 127.0.0.1:28000")
    c.add_argument("--device", metavar="ID", help="wristband id on the server (default: the first listed)")
    c.add_argument("--as", dest="bus_device", metavar="NAME", help="device id on the bus (default: the server's id)")
    deprecated_alias(
        c,
        "--duration",
        c.add_argument(
            "--duration-s", dest="duration", type=positive_seconds, metavar="S", help="stop after S seconds"
        ),
    )
    c.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="send 'server_auth TOKEN' first, TOKEN being this file's first line (an m3sense e4-server "
        "with --token-file)",
    )
    c.add_argument(
        "--packet-s",
        type=_live_packet_seconds,
        default=None,
        metavar="S",
        help="publish about S seconds of each signal per message instead of the wristband's packet sizes "
        "(as `ble stream --packet-s`; 0 < S <= 2, default: per packet)",
    )
    add_json_option(c, "samples (published), device")
    c.set_defaults(func=_e4_client)


_KEY_HELP = "key of the pseudonymous device ids (default $XDG_STATE_HOME/m3sense/device-key, made 0600 on first use)"


def _add_privacy_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device-key", type=Path, metavar="FILE", help=_KEY_HELP)
    p.add_argument(
        "--store-address",
        action="store_true",
        help="put each wristband's address and name in its status events (default: only its pseudonym)",
    )


def _live_packet_seconds(text: str) -> float:
    from ingest.coalesce import MAX_LIVE_PACKET_S

    value = positive_seconds(text)
    if value > MAX_LIVE_PACKET_S:  # EDA packets span 1.5 s: S=2 already holds an EDA sample 3 s
        raise argparse.ArgumentTypeError(
            f"expected at most {MAX_LIVE_PACKET_S:g} seconds per message, got {text!r}: a live sample held "
            "longer risks reaching preprocess after its window was cut (late_s 4 s)"
        )
    return value


def _pseudonym(args: argparse.Namespace) -> int:
    from ingest.pseudonym import load_or_create_key, pseudonym

    key = load_or_create_key(args.device_key)
    for address in args.address:
        print(f"{address}\t{pseudonym(key, address)}")
    return 0


def _scan(args: argparse.Namespace) -> int:
    from ingest.ble import PLATFORM, scan

    backend, keep = PLATFORM, None
    if args.virtual:
        from ingest.virtual import VirtualE4, VirtualRadio, virtual_address, virtual_recordings

        keep = VirtualRadio()
        for i, rec in enumerate(virtual_recordings(args.virtual, minutes=0.5)):
            keep.add(VirtualE4(virtual_address(i), rec, rssi=-50 - 3 * i))
        backend = keep.backend()
    from bleak.exc import BleakError

    try:
        found = asyncio.run(scan(args.timeout, backend))
    except (BleakError, OSError) as exc:  # no adapter, no BlueZ: the user's to fix
        raise UserError(f"cannot scan: {exc} (is there a Bluetooth adapter, and BlueZ with D-Bus on Linux?)") from None
    for address, name, rssi in found:
        print(
            json.dumps({"address": address, "name": name, "rssi": rssi})
            if args.json
            else f"{address}  {rssi:4d} dBm  {name}"
        )
    return 0


def _bands(args: argparse.Namespace, virtual: list[str]) -> list[Any]:
    from ingest.ble import Wristband
    from ingest.pseudonym import load_or_create_key, pseudonym

    specs = args.device or virtual
    if not specs:
        raise UserError("name at least one --device ADDRESS (or use --virtual N)")
    key = None if all("=" in spec for spec in specs) else load_or_create_key(args.device_key)
    bands = []
    for spec in specs:
        address, _, name = spec.partition("=")
        if not name:
            assert key is not None  # loaded above unless every spec names its device
            name = pseudonym(key, address)
        bands.append(Wristband(address=address, device=name))
    from bus import valid_name

    bad = [b.device for b in bands if not valid_name(b.device)]
    if bad:
        raise UserError(f"device id {bad[0]!r} is not a valid bus name (letters, digits, _ . : -)")
    return bands


def _stream(args: argparse.Namespace) -> int:
    from bus import Publisher
    from ingest.ble import PLATFORM, LinkConfig, RawLog, stream
    from ingest.clocks import ScaledClock, SystemClock

    layout = _layout(args)
    clock = ScaledClock(args.time_scale) if args.time_scale != 1.0 else SystemClock()
    backend, virtual = PLATFORM, []
    if args.virtual:
        from ingest.virtual import Faults, VirtualE4, VirtualRadio, virtual_address, virtual_recordings

        faults = dict(
            drop_fraction=args.drop,
            corrupt_fraction=args.corrupt,
            truncate_fraction=args.truncate,
            disconnect_every_s=args.disconnect_every,
            zombie_after_s=args.zombie_after,
        )
        radio = VirtualRadio()
        recordings = virtual_recordings(args.virtual, minutes=args.minutes, seed=args.seed)
        for i, rec in enumerate(recordings):
            radio.add(
                VirtualE4(
                    virtual_address(i), rec, clock=clock, layout=layout, faults=Faults(seed=args.seed + i, **faults)
                )
            )
        backend, virtual = radio.backend(), list(radio.devices)
    elif args.time_scale != 1.0:
        raise UserError("--time-scale needs --virtual: a real wristband streams in real time")
    bands = _bands(args, virtual)
    config = LinkConfig(
        layout=layout,
        watchdog_s=args.watchdog,
        derive_heart=not args.no_heart,
        store_address=args.store_address,
        packet_s=args.packet_s,
    )
    raw_log = RawLog(args.raw_log) if args.raw_log else None
    reports: list[dict[str, Any]] = []  # each wristband's statistics, once streaming has ended

    async def run(stop: Stop) -> int:
        # A signal ends the run like --duration does: disconnect, report "end", flush the bus.
        async with Publisher(args.bus) as pub:
            if args.wait:
                topics = [f"raw/bvp/{b.device}/" for b in bands]
                if await pub.wait_for_subscribers(topics, args.wait):
                    print(f"ble: no subscriber after {args.wait:g} s; streaming anyway", file=sys.stderr)
            print(f"ble: streaming {len(bands)} wristband(s) to {args.bus}", file=sys.stderr, flush=True)
            links = await stream(
                pub,
                bands,
                config=config,
                clock=clock,
                backend=backend,
                raw_log=raw_log,
                duration_s=args.duration,
                stop=stop,
            )
        for link in links:
            address = {"address": link.band.address} if args.store_address else {}
            reports.append({"device": link.band.device, **address, **link.stats.as_dict()})
            print(json.dumps(reports[-1]), file=sys.stderr)
        return 0

    try:
        code = run_until_signal(run)
    finally:
        if raw_log is not None:
            raw_log.close()
    if args.json:  # null devices: stopped before the links had ended
        print_summary("ble stream", code, {"devices": reports or None})
    return code


def _jsonable(x: Any) -> Any:
    import numpy as np

    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, list):
        return [_jsonable(v) for v in x]
    return x


def _decode(args: argparse.Namespace) -> int:
    from ingest import codec

    layout = _layout(args)
    if args.raw_log is not None:
        if args.hex or args.char:
            raise UserError("give either --raw-log FILE or --char NAME HEX, not both")
        if not args.raw_log.is_file():
            raise UserError(f"{args.raw_log}: no such file")
        from ingest.ble import replay_raw_log

        for device, emit in replay_raw_log(args.raw_log, layout):
            print(
                json.dumps(
                    {
                        "device": device,
                        "kind": emit.kind,
                        "modality": emit.modality,
                        "t0_s": emit.t0_s,
                        "fs_hz": emit.fs_hz,
                        "samples": _jsonable(emit.samples),
                        "meta": emit.meta,
                    }
                )
            )
        return 0
    if not args.char or args.hex is None:
        raise UserError("give --char NAME and the packet as HEX (or --raw-log FILE)")
    text = args.hex.replace(" ", "").replace(":", "")
    try:
        data = bytes.fromhex(text)
    except ValueError:
        raise UserError(f"{args.hex!r} is not a hex string") from None
    try:
        pkt = codec.decode(args.char, data, layout)
    except codec.DecodeError as exc:
        raise UserError(f"cannot decode: {exc}") from None
    out: dict[str, Any] = {
        "char": args.char,
        "uuid": codec.CHARACTERISTICS[args.char],
        "bytes": len(data),
        "counter": pkt.counter,
    }
    if args.char == "bvp":
        out["green_deltas"] = pkt.values[:, 0].tolist()
        out["red_deltas"] = pkt.values[:, 1].tolist()
        out["samples"] = codec.BvpIntegrator().push(pkt).tolist()
    else:
        out["samples"] = _jsonable(pkt.values)
    out["unit"] = {
        "bvp": "counts (integrated green, from 0)",
        "eda": "µS",
        "temp": "°C",
        "acc": "1/64 g",
        "battery": "fraction",
        "button": "pressed",
    }[args.char]
    print(json.dumps(out))
    return 0


def _read_token(path: Path | None) -> str | None:
    """The token in a file's first line; one-line errors for a missing, empty or short one."""
    from ingest.e4server import MIN_TOKEN_CHARS

    if path is None:
        return None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--token-file {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    token = lines[0].strip() if lines else ""
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise UserError(
            f"--token-file {path}: the first line must be a token of at least {MIN_TOKEN_CHARS} "
            "characters without spaces (e.g. from: python -c 'import secrets; "
            "print(secrets.token_urlsafe())')"
        )
    return token


def _e4_access(args: argparse.Namespace) -> Any:
    """Who may use the e4-server; refuses a listener beyond loopback that nothing guards."""
    from bus.security import is_loopback_host
    from ingest.e4server import Access, parse_allow

    try:
        allow = tuple(parse_allow(a) for a in args.allow)
    except ValueError as exc:
        raise UserError(f"--allow: {exc}") from None
    access = Access(allow=allow, token=_read_token(args.token_file))
    if not is_loopback_host(args.host) and not access.guarded:
        if not args.insecure:
            raise UserError(
                f"--host {args.host} is not loopback: give --allow ADDR[/BITS] or --token-file FILE "
                f"(or --insecure to admit anyone who can reach it)"
            )
        print(
            f"e4-server: warning: listening on {args.host} with no allow-list or token: anyone who reaches it "
            f"can read the wristbands' data",
            file=sys.stderr,
        )
    return access


def _e4_server(args: argparse.Namespace) -> int:
    from ingest.e4server import serve

    access = _e4_access(args)
    ended: list[Any] = []  # the server's figures, once it has stopped

    async def run(stop: Stop) -> int:
        stats = await serve(
            args.bus,
            args.host,
            args.port,
            stop=stop,
            access=access,
            on_ready=lambda where: print(f"e4-server: listening on {where}", file=sys.stderr, flush=True),
            on_device=lambda d: print(f"e4-server: device {d} on the bus", file=sys.stderr, flush=True),
        )
        ended.append(stats)
        print(
            f"e4-server: {stats.clients} client(s), {stats.lines} data lines, {stats.dropped_clients} dropped, "
            f"{stats.refused_clients} refused",
            file=sys.stderr,
        )
        return 0

    try:
        code = run_until_signal(run)
    except OSError as exc:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {exc}") from None
    if args.json:
        fields = ("clients", "lines", "dropped_clients", "refused_clients")
        print_summary("e4-server", code, {k: getattr(ended[0] if ended else None, k, None) for k in fields})
    return code


def _e4_client(args: argparse.Namespace) -> int:
    from bus import Publisher
    from ingest.e4server import E4ServerSource

    host, _, port = args.server.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise UserError(f"--server {args.server!r} must be HOST:PORT, PORT from 1 to 65535")
    token = _read_token(args.token_file)
    ended: list[Any] = []  # the source, once it has stopped

    async def run(stop: Stop) -> int:
        async with Publisher(args.bus) as pub:
            source = E4ServerSource(
                host,
                int(port),
                pub,
                device=args.device,
                bus_device=args.bus_device,
                token=token,
                packet_s=args.packet_s,
            )
            task = asyncio.create_task(
                source.run(
                    on_ready=lambda where: print(
                        f"e4-client: streaming {source.device} from {where}", file=sys.stderr, flush=True
                    )
                )
            )
            enders: list[asyncio.Task[Any]] = [asyncio.create_task(stop.wait())]
            if args.duration is not None:
                enders.append(asyncio.create_task(asyncio.sleep(args.duration)))
            await asyncio.wait([task, *enders], return_when=asyncio.FIRST_COMPLETED)
            for t in (task, *enders):
                t.cancel()
            results = await asyncio.gather(task, *enders, return_exceptions=True)
            if isinstance(results[0], Exception):
                raise results[0]
        ended.append(source)
        print(f"e4-client: {source.samples} samples from {source.device}", file=sys.stderr)
        return 0

    try:
        code = run_until_signal(run)
    except (OSError, TimeoutError) as exc:
        raise UserError(f"e4 server {args.server}: {exc or type(exc).__name__}") from None
    if args.json:
        print_summary(
            "e4-client", code, {k: getattr(ended[0] if ended else None, k, None) for k in ("samples", "device")}
        )
    return code
