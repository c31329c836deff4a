"""``m3sense hub``, ``m3sense tap`` and ``m3sense keys``, and the ``--bus`` options every command shares."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from bus.endpoints import (
    DEFAULT_BUS,
    BadBusAddress,
    check_bus_address,
    is_nats,
    nats_servers,
)
from common.argtypes import deprecated_alias, positive_int, positive_seconds
from common.summary import add_json_option, print_summary

#: commands whose subscribers only watch: on NATS they take no durable consumer unless --consumer names one
_WATCHERS = ("tap", "run")


def _bus_address(text: str) -> str:
    try:
        check_bus_address(text)
    except BadBusAddress as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_bus_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bus",
        type=_bus_address,
        default=DEFAULT_BUS,
        help=f"hub address, tcp://HOST:PORT (publishers use PORT, subscribers PORT+1) or ipc://PATH "
        f"(default {DEFAULT_BUS}); or nats://HOST:4222 (comma-separated for a cluster) for NATS JetStream",
    )
    parser.add_argument(
        "--consumer",
        metavar="NAME",
        help="on a nats:// bus, the durable consumer this stage resumes from after a restart (default: the "
        "command's name; tap and run's own watcher take none and see only what flows from now on)",
    )
    parser.add_argument(
        "--bus-keys",
        type=Path,
        metavar="DIR",
        help="encrypt and authenticate the bus with CURVE keys from DIR (hub.key, client.key_secret; the hub "
        "also hub.key_secret and allowed/): needed for a tcp:// address that is not loopback, "
        "accepted on any (see `m3sense keys`)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="accept a non-loopback address without keys: plain text that anyone on the network can read "
        "and write (a warning is printed)",
    )


def apply_bus_security(args: argparse.Namespace) -> None:
    """Set the process's bus security from ``--bus-keys``/``--insecure`` before the command runs, and
    refuse early, in one line, what would fail later: a plain non-loopback address, a missing key file.

    ``m3sense main`` calls it for every command that has the options. The keys a command needs
    follow from what it is: ``hub`` serves, ``run`` serves and connects, the others connect."""
    from bus.security import BusSecurity, BusSecurityError, check_address, configure
    from common.errors import UserError

    keys = args.bus_keys
    if keys is not None and not keys.is_dir():
        raise UserError(f"--bus-keys {keys}: no such folder (make one: m3sense keys init --dir {keys})")
    security = BusSecurity(keys=keys, insecure=args.insecure)
    try:
        if args.bus is not None:  # run without --bus: its own hub on a free loopback port
            for address in nats_servers(args.bus) if is_nats(args.bus) else [args.bus]:
                check_address(address, security)
        if security.curve:
            if args.command in ("hub", "run"):
                security.server_keys()
            if args.command != "hub":
                security.client_keys()
    except BusSecurityError as exc:
        raise UserError(str(exc)) from None
    configure(security)
    if args.bus is not None and is_nats(args.bus):
        from bus.nats_backend import configure_consumer

        configure_consumer(args.consumer or (None if args.command in _WATCHERS else args.command))


def register(sub: argparse._SubParsersAction) -> None:
    h = sub.add_parser(
        "hub",
        help="run the bus hub (XSUB/XPUB forwarder) in the foreground",
        description="Every stage connects to the hub. For --bus tcp://HOST:PORT it binds PORT for publishers "
        "and PORT+1 for subscribers; for ipc://PATH it binds PATH.in and PATH.out. Ctrl-C stops it; its "
        "last line says what it forwarded (ZeroMQ counts frames: a bus message is several).",
    )
    add_bus_option(h)
    add_json_option(
        h,
        "frames and bytes (publishers sent through it; null if the proxy did not say), uptime_s, "
        "refused_unknown_keys and refused_without_curve (with --bus-keys; else null)",
    )
    h.set_defaults(func=_hub)

    t = sub.add_parser(
        "tap",
        help="print bus messages as they flow, one line each",
        description="Subscribe and print each message: topic, sequence number, first-sample time, rate and sample "
        "count (with --json one JSON object per line, with the message's metadata fields). On exit it "
        "prints the counts of received, missing (sequence gaps), late and malformed messages to stderr "
        "(with --summary-json also as one last JSON line on stdout).",
    )
    add_bus_option(t)
    t.add_argument(
        "--topic",
        action="append",
        metavar="PREFIX",
        help="topic prefix to subscribe to, e.g. raw/bvp/ or window/S2/ (repeatable; default all)",
    )
    t.add_argument("--json", action="store_true", help="one JSON object per line")
    t.add_argument(
        "--summary-json",
        action="store_true",
        help='at exit one more line on stdout, after the messages: one JSON object, command ("tap"), exit_code, '
        "reason, received, missing, late, malformed (a message line never has a command field; --json alone "
        "keeps stdout to message lines, as scripts reading them expect)",
    )
    t.add_argument("--values", action="store_true", help="include the samples (and named arrays)")
    t.add_argument("--count", type=positive_int, metavar="N", help="exit after N messages")
    deprecated_alias(
        t,
        "--idle-exit",
        t.add_argument(
            "--idle-exit-s",
            dest="idle_exit",
            type=positive_seconds,
            metavar="S",
            help="exit after S seconds without a message",
        ),
    )
    t.set_defaults(func=_tap)

    k = sub.add_parser(
        "keys",
        help="make and allow the CURVE keys of an authenticated bus",
        description="Keys live in one folder per host, given to every command as --bus-keys DIR: hub.key (the hub's "
        "public key, on every host), hub.key_secret (only on the hub's host), client.key and "
        "client.key_secret (this host's stages), allowed/*.key (the clients the hub admits). "
        "Secret files are made 0600 and never overwritten.",
    )
    ksub = k.add_subparsers(dest="keys_command", metavar="ACTION")
    ksub.required = True
    ki = ksub.add_parser("init", help="one host: a hub pair, a client pair, and that client allowed")
    ki.add_argument("--dir", type=Path, required=True, help="the keys folder (made if missing)")
    ki.set_defaults(func=_keys_init)
    kn = ksub.add_parser("new", help="make a key pair NAME.key and NAME.key_secret (hub, client, or any name)")
    kn.add_argument("name", help="hub for the hub's pair, client for a host's stages")
    kn.add_argument("--dir", type=Path, required=True, help="the keys folder (made if missing)")
    kn.set_defaults(func=_keys_new)
    ka = ksub.add_parser("allow", help="admit a client: copy its public key (NAME.key) into DIR/allowed/")
    ka.add_argument("public_key", type=Path, help="the client's public key file, e.g. its client.key")
    ka.add_argument("--dir", type=Path, required=True, help="the hub's keys folder")
    ka.add_argument("--name", help="the name to allow it under (default: the file's name), e.g. the host's")
    ka.set_defaults(func=_keys_allow)
    kl = ksub.add_parser("list", help="print the hub's, this host's and the allowed public keys")
    kl.add_argument("--dir", type=Path, required=True, help="the keys folder")
    kl.set_defaults(func=_keys_list)


def _keys_call(fn: Any, *fn_args: Any) -> Any:
    from bus.security import BusSecurityError
    from common.errors import UserError

    try:
        return fn(*fn_args)
    except BusSecurityError as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"{exc.filename or ''}: {exc.strerror or exc}") from None


def _keys_init(args: argparse.Namespace) -> int:
    from bus.security import init_folder

    for path in _keys_call(init_folder, args.dir):
        print(path)
    print(
        f"keys: run the hub and every stage with --bus-keys {args.dir}; on another host, copy hub.key there, "
        f"make its client pair (m3sense keys new client --dir DIR) and allow its client.key here",
        file=sys.stderr,
    )
    return 0


def _keys_new(args: argparse.Namespace) -> int:
    from bus.security import new_keypair

    for path in _keys_call(new_keypair, args.dir, args.name):
        print(path)
    return 0


def _keys_allow(args: argparse.Namespace) -> int:
    from bus.security import allow_key

    print(_keys_call(allow_key, args.dir, args.public_key, args.name))
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    from bus.security import ALLOWED, CLIENT, HUB, PUBLIC_SUFFIX, read_key_file

    def show(path: Path) -> None:
        public, _ = _keys_call(lambda: read_key_file(path, secret=False))
        print(f"{path}\t{public.decode()}")

    if not args.dir.is_dir():
        from common.errors import UserError

        raise UserError(f"{args.dir}: no such folder")
    for name in (HUB, CLIENT):
        if (args.dir / (name + PUBLIC_SUFFIX)).is_file():
            show(args.dir / (name + PUBLIC_SUFFIX))
    for path in sorted((args.dir / ALLOWED).glob("*" + PUBLIC_SUFFIX)):
        show(path)
    return 0


def _hub(args: argparse.Namespace) -> int:
    from bus.hub import Hub
    from common.aio import Stop, run_until_signal

    if is_nats(args.bus):
        from common.errors import UserError

        raise UserError(
            f"{args.bus} is a NATS bus: it has no hub, its servers carry it (nats-server -js -p PORT -sd DIR)"
        )
    from bus.security import BusSecurityError

    try:
        hub = Hub(args.bus).start()
    except (OSError, BusSecurityError) as exc:
        print(f"m3sense hub: error: {exc}", file=sys.stderr)
        return 2
    ep = hub.endpoints
    guard = (
        f"CURVE, clients allowed from {hub.security.keys}/allowed" if hub.security.curve else "plain, no authentication"
    )

    async def serve(stop: Stop) -> int:
        print(  # the readiness line, said once a signal can stop the hub cleanly
            f"hub: publishers connect to {ep.publishers}, subscribers to {ep.subscribers} ({guard})",
            file=sys.stderr,
            flush=True,
        )
        await stop.wait()  # the hub forwards on its own threads
        return 0

    try:
        code = run_until_signal(serve)
    finally:
        hub.stop()
    fw = hub.forwarded
    if fw is not None:
        print(f"hub: forwarded {fw.frames} frames, {fw.bytes} bytes in {fw.uptime_s:.0f} s", file=sys.stderr)
    refused = (hub.allow_list.refused, hub.refused_plain) if hub.allow_list is not None else (None, None)
    if refused[0] or refused[1]:
        print(
            f"hub: refused {refused[0]} connection(s) with unknown keys, {refused[1]} without CURVE",
            file=sys.stderr,
        )
    if args.json:
        facts = {
            "frames": fw.frames if fw is not None else None,
            "bytes": fw.bytes if fw is not None else None,
            "uptime_s": round(fw.uptime_s, 3) if fw is not None else None,
            "refused_unknown_keys": refused[0],
            "refused_without_curve": refused[1],
        }
        print_summary("hub", code, facts)
    return code


def message_record(msg: Any, values: bool) -> dict[str, Any]:
    """The JSON form of a message that ``tap --json`` prints."""
    rec: dict[str, Any] = {k: v for k, v in msg.meta.items()}
    rec.update(
        topic=msg.topic,
        kind=msg.kind,
        device=msg.device,
        modality=msg.modality,
        seq=msg.seq,
        t0=msg.t0_s,
        fs=msg.fs_hz,
        n=msg.n,
    )
    if values:
        rec["values"] = msg.samples.tolist()
        if msg.arrays:
            rec["arrays"] = {k: a.tolist() for k, a in msg.arrays.items()}
    return rec


def _tap(args: argparse.Namespace) -> int:
    import asyncio

    from bus.sockets import Subscriber
    from common.aio import STOP_POLL_S, Stop, run_until_signal

    out = sys.stdout
    subscribed: list[Any] = []  # the subscriber, for the counts at exit

    def json_default(o: Any) -> Any:
        return None if isinstance(o, float) and not math.isfinite(o) else str(o)

    async def main(stop: Stop) -> int:
        seen = 0
        sub = Subscriber(args.bus, args.topic or [""])
        subscribed.append(sub)
        try:
            async with sub:
                # a readiness line, so a script can start publishers only once the tap listens
                print(
                    f"tap: subscribed to {' '.join(args.topic or ['(everything)'])} on {args.bus}",
                    file=sys.stderr,
                    flush=True,
                )
                loop = asyncio.get_running_loop()
                idle_until = None if args.idle_exit is None else loop.time() + args.idle_exit
                while not stop.is_set() and (args.count is None or seen < args.count):
                    wait_s = STOP_POLL_S if idle_until is None else min(STOP_POLL_S, idle_until - loop.time())
                    if wait_s <= 0:
                        break  # --idle-exit: nothing came for that long
                    try:
                        msg = await sub.recv(wait_s)
                    except TimeoutError:
                        continue
                    if args.idle_exit is not None:
                        idle_until = loop.time() + args.idle_exit
                    seen += 1
                    if args.json:
                        out.write(json.dumps(message_record(msg, args.values), default=json_default) + "\n")
                    else:
                        line = f"{msg.topic} seq={msg.seq} t0={msg.t0_s:.6f} fs={msg.fs_hz:g} n={msg.n}"
                        if msg.meta:
                            line += " " + json.dumps(msg.meta, default=json_default)
                        if args.values:
                            line += " " + json.dumps(msg.samples.tolist())
                        out.write(line + "\n")
        finally:
            out.flush()
            st = sub.stats
            print(
                f"tap: received {st.received}, missing {st.gaps}, late {st.late}, "
                f"malformed {sum(st.malformed.values())}",
                file=sys.stderr,
            )
        return 0

    code = run_until_signal(main)
    if args.summary_json:  # after the message lines: the summary, the one line with a "command" field
        st = subscribed[0].stats if subscribed else None
        facts = {
            "received": st.received if st is not None else None,
            "missing": st.gaps if st is not None else None,
            "late": st.late if st is not None else None,
            "malformed": sum(st.malformed.values()) if st is not None else None,
        }
        print_summary("tap", code, facts)
    return code
