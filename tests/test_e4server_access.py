"""Who may use the e4-server (issue 12, item 3): loopback by default; with an allow-list or a
token, real TCP clients from an address not allowed, without the token or with a wrong one get
one clear ERR reply and no data, while allowed or authenticated ones stream as before. Every
client runs on loopback: 127.0.0.2 plays the allowed host, 127.0.0.1 everyone else."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest

from bus import Publisher
from ingest.e4server import Access, E4ServerSession, ServerStats, serve
from tests.conftest import Proc, run_cli

TOKEN = "k3Qw-9vZt_7yLr2PxN0aHs"
ALLOWED_HOST = "127.0.0.2"
T = TypeVar("T")


def _say(session: E4ServerSession, *lines: str) -> list[str]:
    return session.receive_data("".join(f"{line}\r\n" for line in lines).encode())


def test_session_wants_the_token_before_anything_else() -> None:
    access = Access(allow=(ipaddress.ip_network("10.1.0.0/16"),), token=TOKEN)
    stranger = E4ServerSession(lambda: ["dev1"], peer="192.0.2.9", access=access)
    assert _say(stranger, "device_list", "device_connect dev1") == [
        "R device_list ERR authentication required: send server_auth TOKEN first",
        "R device_connect ERR authentication required: send server_auth TOKEN first",
    ]
    assert stranger.bound is None and not stranger.closing
    assert _say(stranger, f"server_auth {TOKEN}", "device_list") == [
        "R server_auth OK",
        "R device_list 1 | dev1 Empatica_E4",
    ]
    guesser = E4ServerSession(lambda: ["dev1"], peer="192.0.2.9", access=access)
    assert _say(guesser, "server_auth nope") == ["R server_auth ERR wrong token"] and guesser.closing
    colleague = E4ServerSession(lambda: ["dev1"], peer="10.1.4.2", access=access)
    assert _say(colleague, "device_list") == ["R device_list 1 | dev1 Empatica_E4"]
    mapped = E4ServerSession(lambda: ["dev1"], peer="::ffff:10.1.4.2", access=access)
    assert mapped.authorized
    no_token = E4ServerSession(lambda: ["dev1"], peer="192.0.2.9", access=Access(allow=access.allow))
    assert _say(no_token, "device_list") == ["R device_list ERR access denied: client address 192.0.2.9 is not allowed"]
    assert no_token.closing
    assert E4ServerSession(list, peer="192.0.2.9").authorized  # no rule: the loopback default


async def _client(port: int, local: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(local, 0))


async def _ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: str) -> str:
    writer.write(line.encode() + b"\r\n")
    await writer.drain()
    return (await asyncio.wait_for(reader.readline(), 10)).decode().strip()


async def _subscribe_bvp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> list[str]:
    return [await _ask(reader, writer, "device_connect dev1"), await _ask(reader, writer, "device_subscribe bvp ON")]


def _with_server(bus: str, access: Access, body: Callable[[int, Publisher], Awaitable[T]]) -> tuple[T, ServerStats]:
    async def main() -> tuple[T, ServerStats]:
        stop = asyncio.Event()
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        seen = asyncio.Event()
        server = asyncio.create_task(
            serve(
                bus,
                "127.0.0.1",
                0,
                stop=stop,
                on_ready=ready.set_result,
                on_device=lambda _d: seen.set(),
                access=access,
            )
        )
        port = int((await asyncio.wait_for(ready, 10)).rpartition(":")[2])
        try:
            async with Publisher(bus) as pub:
                assert not await pub.wait_for_subscribers(["raw/bvp/dev1/", "status/dev1/"], 10)
                await pub.publish("status", "dev1", t0_s=1.0, fs_hz=0.0, meta={"event": "connected"})
                await asyncio.wait_for(seen.wait(), 10)
                result = await body(port, pub)
        finally:
            stop.set()
        return result, await server

    return asyncio.run(main())


def test_token_and_allow_list_over_real_tcp(hub, bus_address: str) -> None:
    access = Access(allow=(ipaddress.ip_network(ALLOWED_HOST),), token=TOKEN)

    async def body(port: int, pub: Publisher) -> dict[str, list[str]]:
        seen: dict[str, list[str]] = {}
        allowed = await _client(port, ALLOWED_HOST)
        seen["allowed"] = await _subscribe_bvp(*allowed)
        anonymous = await _client(port)
        seen["anonymous"] = [await _ask(*anonymous, "device_list"), *await _subscribe_bvp(*anonymous)]
        guesser = await _client(port)
        seen["guesser"] = [await _ask(*guesser, "server_auth not-the-token")]
        seen["guesser_after"] = [(await asyncio.wait_for(guesser[0].read(), 10)).decode()]  # closed: EOF
        authed = await _client(port)
        seen["authed"] = [await _ask(*authed, f"server_auth {TOKEN}"), *await _subscribe_bvp(*authed)]
        await pub.publish("raw", "dev1", "bvp", t0_s=20.0, fs_hz=64.0, samples=np.array([1.5, 2.5]))
        for name, (reader, _) in (("allowed", allowed), ("authed", authed)):
            seen[name] += [(await asyncio.wait_for(reader.readline(), 10)).decode().strip() for _ in range(2)]
        # the anonymous client asks again after the data went out: its next line is its reply, no data
        seen["anonymous"].append(await _ask(*anonymous, "device_list"))
        for _, writer in (allowed, anonymous, authed):
            writer.close()
        return seen

    seen, stats = _with_server(bus_address, access, body)
    data = ["E4_Bvp 20.000000 1.5", "E4_Bvp 20.015625 2.5"]
    ok = ["R device_connect OK", "R device_subscribe bvp OK"]
    assert seen["allowed"] == ok + data
    assert seen["authed"] == ["R server_auth OK", *ok, *data]
    wants = "ERR authentication required: send server_auth TOKEN first"
    assert seen["anonymous"] == [
        f"R device_list {wants}",
        f"R device_connect {wants}",
        f"R device_subscribe {wants}",
        f"R device_list {wants}",
    ]
    assert seen["guesser"] == ["R server_auth ERR wrong token"] and seen["guesser_after"] == [""]
    assert stats.refused_clients == 2 and stats.lines == 4  # the guesser, and the anonymous client that left


def test_an_address_not_allowed_is_refused_and_disconnected(hub, bus_address: str) -> None:
    access = Access(allow=(ipaddress.ip_network(ALLOWED_HOST),))

    async def body(port: int, pub: Publisher) -> list[str]:
        reader, writer = await _client(port)
        reply = await _ask(reader, writer, "device_list")
        rest = (await asyncio.wait_for(reader.read(), 10)).decode()
        writer.close()
        return [reply, rest]

    (reply, rest), stats = _with_server(bus_address, access, body)
    assert reply == "R device_list ERR access denied: client address 127.0.0.1 is not allowed" and rest == ""
    assert stats.refused_clients == 1


def test_e4_server_cli_refuses_a_wider_listener_without_rules(tmp_path: Path) -> None:
    for extra in ([], ["--insecure", "--token-file", str(tmp_path / "missing")]):
        proc = run_cli("e4-server", "--host", "0.0.0.0", "--port", "0", *extra, timeout=60)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert (
        "--host 0.0.0.0 is not loopback: give --allow ADDR[/BITS] or --token-file FILE"
        in run_cli("e4-server", "--host", "0.0.0.0", "--port", "0").stderr
    )
    short = tmp_path / "short"
    short.write_text("abc\n")
    proc = run_cli("e4-server", "--port", "0", "--token-file", str(short))
    assert proc.returncode == 2 and "at least 16 characters" in proc.stderr
    proc = run_cli("e4-server", "--port", "0", "--allow", "not-an-address")
    assert proc.returncode == 2 and proc.stderr.startswith("m3sense e4-server: error: --allow")


def test_e4_client_sends_its_token(hub, bus_address: str, tmp_path: Path, procs: list[Proc]) -> None:
    """m3sense e4-client against m3sense e4-server, both as commands: without the token it is
    refused in one line; with it, it gets past authentication (to a server with no wristband)."""
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    server = Proc(
        ["e4-server", "--bus", bus_address, "--port", "0", "--allow", ALLOWED_HOST, "--token-file", str(token)]
    )
    procs.append(server)
    port = server.wait_for_stderr("listening on").strip().rsplit(":", 1)[1]
    bare = run_cli("e4-client", "--bus", bus_address, "--server", f"127.0.0.1:{port}", "--duration-s", "5")
    assert bare.returncode == 2
    assert bare.stderr.strip() == (
        f"m3sense e4-client: error: e4 server 127.0.0.1:{port}: server refused "
        f"'device_list': ERR authentication required: send server_auth "
        f"TOKEN first"
    )
    authed = run_cli(
        "e4-client",
        "--bus",
        bus_address,
        "--server",
        f"127.0.0.1:{port}",
        "--duration",
        "5",
        "--token-file",
        str(token),
    )
    assert authed.returncode == 2 and "no wristband" in authed.stderr and TOKEN not in authed.stderr
    server.popen.terminate()
    assert server.popen.wait(timeout=30) == 0
    assert server.stderr.read().strip().splitlines()[-1].endswith("0 dropped, 1 refused")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_loopback_hosts_need_no_rules(host: str) -> None:
    from bus.security import is_loopback_host

    assert is_loopback_host(host) and not is_loopback_host("0.0.0.0") and not is_loopback_host("e4.lab.example")


def test_an_unchanged_third_party_client_works_through_the_allow_list(hub, bus_address: str) -> None:
    """open-e4-client (PyPI) cannot send a token (it refuses replies its command table does not
    know), so an allow-list is what admits it."""
    e4client = pytest.importorskip("e4client", reason="open-e4-client (PyPI) is the third-party client under test")

    def listing(port: int) -> list[str]:
        with e4client.E4StreamingClient("127.0.0.1", port) as client:
            return [d.uid for d in client.list_connected_devices()]

    async def body(port: int, pub: Publisher) -> list[str]:
        return await asyncio.to_thread(listing, port)

    access = Access(allow=(ipaddress.ip_network("127.0.0.1"),), token=TOKEN)
    devices, stats = _with_server(bus_address, access, body)
    assert devices == ["dev1"] and stats.refused_clients == 0
