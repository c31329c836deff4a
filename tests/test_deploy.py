"""deploy/ checked without Docker (no engine runs here): the compose file's services, mounts,
ports, variables and commands fit together and with the m3sense CLI, the image copies every
package, and the Mosquitto configuration runs in a real Mosquitto with its password file and
ACL: the store's user writes, Home Assistant's user reads, strangers are refused."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

from m3sense.cli import build_parser
from storage.alerts import load_rules
from storage.target import InfluxTarget, MqttTarget, parse_sink
from tests.conftest import REPO, needs
from tests.servers import MOSQUITTO, MOSQUITTO_PASSWD, MOSQUITTO_SUB, free_port

yaml = pytest.importorskip("yaml")

DEPLOY = REPO / "deploy"
MOSQUITTO_PUB = shutil.which("mosquitto_pub")
NEEDS_MOSQUITTO = needs(
    None not in (MOSQUITTO, MOSQUITTO_PASSWD, MOSQUITTO_SUB, MOSQUITTO_PUB),
    "mosquitto not installed (apt-get install mosquitto mosquitto-clients)",
)


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def env_example() -> dict[str, str]:
    lines = (DEPLOY / "env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def mounts(service: dict) -> dict[str, str]:
    """container path -> host source, for the bind mounts and named volumes of a service."""
    out = {}
    for v in service.get("volumes", []):
        source, target = v.split(":")[:2]
        out[target] = source
    return out


def mosquitto_conf() -> dict[str, list[str]]:
    conf: dict[str, list[str]] = {}
    for line in (DEPLOY / "mosquitto" / "mosquitto.conf").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.strip().partition(" ")
            conf.setdefault(key, []).append(value)
    return conf


def acl_users() -> dict[str, list[str]]:
    users: dict[str, list[str]] = {}
    user = None
    for line in (DEPLOY / "mosquitto" / "acl").read_text().splitlines():
        words = line.split()
        if words[:1] == ["user"]:
            user = words[1]
            users[user] = []
        elif words[:1] == ["topic"]:
            assert user is not None
            users[user].append(" ".join(words[1:]))
    return users


def make_passwd(deploy: Path, env: dict[str, str]) -> None:
    assert MOSQUITTO_PASSWD is not None, "only with mosquitto installed"
    env_file = deploy / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    out = subprocess.run(
        [str(deploy / "mosquitto" / "make-passwd.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": str(Path(MOSQUITTO_PASSWD).parent) + ":/usr/bin:/bin", "ENV_FILE": str(env_file)},
    )
    assert out.returncode == 0, out.stderr
    assert (deploy / "mosquitto" / "passwd").stat().st_size > 0


def test_services_ports_variables_and_mounts_fit_together(tmp_path: Path) -> None:
    c = compose()
    services = c["services"]
    declared_volumes = set(c.get("volumes") or {})
    deploy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, deploy, ignore=shutil.ignore_patterns(".env", "passwd"))
    if MOSQUITTO_PASSWD:
        make_passwd(deploy, env_example())  # the one file the README has you make
    documented = set(env_example())
    text = (DEPLOY / "docker-compose.yml").read_text()
    for name in re.findall(r"\$\{([A-Z_]+)(?::?[-?])?", text):  # every variable used is documented or defaulted
        assert name in documented or re.search(r"\$\{" + name + r":-", text), name
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)  # nothing published beyond this host
        deps = svc.get("depends_on") or []
        assert set(deps) <= set(services), (name, deps)
        for source in mounts(svc).values():
            if source.startswith("."):
                if source.endswith("/passwd") and not MOSQUITTO_PASSWD:
                    continue
                assert (deploy / source).exists(), f"{name} mounts {source}, which is missing"
            else:
                assert source in declared_volumes, (name, source)
    assert "alerts.toml" in {Path(s).name for s in mounts(services["store"]).values()}
    # the image has every package pyproject installs
    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = set(re.findall(r"^COPY (\w+) \1$", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE))
    assert {p.rstrip("*") for p in include} <= copied, {p.rstrip("*") for p in include} - copied


def test_pipeline_commands_are_what_m3sense_takes() -> None:
    services = compose()["services"]
    parser = build_parser()
    listeners = {"influxdb": 8086, "mosquitto": int(mosquitto_conf()["listener"][0].split()[0])}
    for name, svc in services.items():
        cmd = svc.get("command")
        if not cmd or cmd[0] != "m3sense":
            continue
        args = parser.parse_args(cmd[1:])  # unknown flags or bad values exit here
        bus = getattr(args, "bus", None)
        if bus and not re.match(r"tcp://(127\.|localhost)", bus):
            assert args.insecure or args.bus_keys, f"{name}: a non-loopback bus needs --insecure or --bus-keys"
    store = services["store"]
    cmd = store["command"]
    sinks = [parse_sink(cmd[i + 1]) for i, a in enumerate(cmd) if a == "--sink"]
    assert {type(s) for s in sinks} == {InfluxTarget, MqttTarget}
    for s in sinks:
        if isinstance(s, InfluxTarget):
            url = re.fullmatch(r"https?://([^:/]+):(\d+)/?", s.url)
            assert url is not None, s.url
            host, port = url[1], int(url[2])
        else:
            assert isinstance(s, MqttTarget)
            host, port = s.host, s.port
        assert host in services and host in store["depends_on"], host
        assert port == listeners[host]
        if isinstance(s, MqttTarget):  # its user may write its topic roots on the broker
            assert s.username is not None, "the store logs in to the broker"
            rules = acl_users()[s.username]
            assert f"readwrite {s.prefix}/#" in rules and f"readwrite {s.discovery}/#" in rules
            assert "MQTT_PASSWORD" in store["environment"]
    alerts = cmd[cmd.index("--alerts") + 1]
    assert load_rules(DEPLOY / mounts(store)[alerts]) and "INFLUX_TOKEN" in store["environment"]


@NEEDS_MOSQUITTO
def test_mosquitto_config_runs_with_its_password_file_and_acl(tmp_path: Path) -> None:
    assert MOSQUITTO is not None and MOSQUITTO_PUB is not None and MOSQUITTO_SUB is not None  # NEEDS_MOSQUITTO
    deploy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, deploy, ignore=shutil.ignore_patterns(".env", "passwd"))
    secrets = {"MQTT_PASSWORD": "store-secret", "HA_MQTT_PASSWORD": "ha-secret"}
    make_passwd(deploy, secrets)
    conf = mosquitto_conf()
    mosquitto = mounts(compose()["services"]["mosquitto"])
    # every file the config names is mounted there from a file that exists
    for key in ("password_file", "acl_file"):
        (path,) = conf[key]
        assert (deploy / mosquitto[path]).is_file(), key
    # the deploy config as it is, but with host paths and a free loopback port (and root, as in CI)
    port = free_port()
    text = (deploy / "mosquitto" / "mosquitto.conf").read_text()
    for path, source in mosquitto.items():
        if source.startswith("./mosquitto/") and path != "/mosquitto/config/mosquitto.conf":
            text = text.replace(path, str(deploy / source))
    (tmp_path / "data").mkdir()
    text = text.replace("/mosquitto/data/", f"{tmp_path / 'data'}/")
    assert re.search(r"^listener 1883$", text, re.MULTILINE)
    text = re.sub(r"^listener 1883$", f"listener {port} 127.0.0.1", text, flags=re.MULTILINE) + "user root\n"
    assert not [line for line in text.splitlines() if " /mosquitto/" in line and not line.startswith("#")]
    (tmp_path / "test.conf").write_text(text)
    log = tmp_path / "mosquitto.log"
    with log.open("w") as out:
        broker = subprocess.Popen([MOSQUITTO, "-c", str(tmp_path / "test.conf")], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:  # its log goes to stdout, which a pipe would buffer: wait for the port instead
            assert broker.poll() is None, f"mosquitto refused the deploy config:\n{log.read_text()}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)

        def client(tool: str, user: str | None, password: str | None, *args: str) -> subprocess.CompletedProcess:
            auth: list[str] = []
            if user is not None:
                assert password is not None, "a user comes with a password"
                auth = ["-u", user, "-P", password]
            return subprocess.run(
                [tool, "-h", "127.0.0.1", "-p", str(port), *auth, *args],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )

        def retained(user: str, password: str) -> subprocess.CompletedProcess:
            return client(MOSQUITTO_SUB, user, password, "-t", "m3sense/#", "-v", "-W", "2", "--retained-only")

        pub = client(
            MOSQUITTO_PUB, "m3sense", secrets["MQTT_PASSWORD"], "-t", "m3sense/dev1/state", "-m", "ok", "-r", "-q", "1"
        )
        assert pub.returncode == 0, pub.stderr
        disco = client(
            MOSQUITTO_PUB,
            "m3sense",
            secrets["MQTT_PASSWORD"],
            "-t",
            "homeassistant/sensor/dev1/config",
            "-m",
            "{}",
            "-r",
            "-q",
            "1",
        )
        assert disco.returncode == 0, disco.stderr
        # Home Assistant's user tries to overwrite a state: the ACL drops it, the store's value stays
        client(
            MOSQUITTO_PUB,
            "homeassistant",
            secrets["HA_MQTT_PASSWORD"],
            "-t",
            "m3sense/dev1/state",
            "-m",
            "forged",
            "-r",
            "-q",
            "1",
        )
        seen = retained("homeassistant", secrets["HA_MQTT_PASSWORD"])
        assert seen.stdout.splitlines() == ["m3sense/dev1/state ok"], seen
        ha_disco = client(
            MOSQUITTO_SUB,
            "homeassistant",
            secrets["HA_MQTT_PASSWORD"],
            "-t",
            "homeassistant/#",
            "-v",
            "-W",
            "2",
            "--retained-only",
        )
        assert ha_disco.stdout.splitlines() == ["homeassistant/sensor/dev1/config {}"], ha_disco
        # no user, or a wrong password: refused
        for user, password in ((None, None), ("m3sense", "wrong"), ("homeassistant", secrets["MQTT_PASSWORD"])):
            refused = client(MOSQUITTO_SUB, user, password, "-t", "m3sense/#", "-W", "2")
            assert refused.returncode != 0 and "not authori" in refused.stderr.lower(), (user, refused)
    finally:
        broker.terminate()
        broker.wait(timeout=20)
