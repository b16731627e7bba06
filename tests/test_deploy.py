"""deploy/ as data (no Docker engine or cluster here): the files parse, every flag, env var and
TOML key they use exists in the CLI and resolves through click exactly as the bridge would
read it, probe paths and ports match the metrics server, and the compose services refer to
each other consistently (the monitoring profile's Prometheus and Grafana included; the
PromQL of deploy/prometheus and deploy/grafana is checked in tests/test_monitoring.py)."""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import httpx
import pytest
import yaml

from facespace_bridge import __version__
from facespace_bridge.checkpoints import default_path
from facespace_bridge.commands import load_all
from facespace_bridge.docgen import DIRECT_ENV
from facespace_bridge.metrics import Metrics, serve_metrics

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
REPO = DEPLOY.parent
COMMANDS = {command.name: command for command in load_all()}
RUN = COMMANDS["run"]
# Read by Python or the base image, not by us.
FOREIGN_ENV = {"PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}
# The ports Prometheus (--web.listen-address) and Grafana (http_port) listen on by default.
PROMETHEUS_PORT = 9090
GRAFANA_PORT = 3000


# -- helpers --------------------------------------------------------------------------------------


def flags(command: click.Command) -> set[str]:
    found = {"--help", "-h"}
    for param in command.params:
        if isinstance(param, click.Option):
            found.update(param.opts)
            found.update(param.secondary_opts)
    return found


def envvars(command: click.Command) -> set[str]:
    found = set(DIRECT_ENV)
    for param in command.params:
        if isinstance(param, click.Option) and param.envvar:
            found.update([param.envvar] if isinstance(param.envvar, str) else param.envvar)
    return found


def check_argv(argv: list[str]) -> click.Command:
    """`facespace-bridge <command> [flags]`: the command exists and so does every flag."""
    assert argv and argv[0] in COMMANDS, f"unknown command in {argv}"
    command = COMMANDS[argv[0]]
    used = {arg.split("=", 1)[0] for arg in argv[1:] if arg.startswith("-")}
    assert used <= flags(command), f"{argv[0]} has no {sorted(used - flags(command))}"
    return command


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No settings from the machine running the tests leak into a resolution."""
    for name in list(os.environ):
        if name.startswith(("FACESPACE_", "KAFKA_", "MQTT_")):
            monkeypatch.delenv(name)
    return monkeypatch


def resolve(command: click.Command, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The parameters `command` would run with under `env`: env vars, the --config TOML file
    and defaults, through click itself (nothing runs)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    ctx = command.make_context(command.name or "", [])
    return ctx.params


def host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"tcp://{url}")
    return parts.hostname or "", parts.port or default_port


def probe_paths(*urls: str) -> set[str]:
    return {urlsplit(url).path for url in urls}


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> file or directory of deploy/ mounted there (named volumes left out)."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            found[target] = (DEPLOY / source).resolve()
    return found


def named_volumes(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> named volume."""
    pairs = (volume.split(":")[:2] for volume in service.get("volumes", []))
    return {target: source for source, target in pairs if not source.startswith(".")}


def published_ports(service: dict[str, Any]) -> set[int]:
    """The container ports a service publishes on the host."""
    return {int(str(port).rsplit(":", 1)[-1]) for port in service.get("ports", [])}


# -- Dockerfile -----------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def docker_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in dockerfile():
        if word == "ENV":
            env.update(dict(item.split("=", 1) for item in shlex.split(rest)))
    return env


def test_dockerfile_is_multistage_and_installs_the_wheel_not_the_tree() -> None:
    steps = dockerfile()
    stages = [i for i, (word, _) in enumerate(steps) if word == "FROM"]
    assert len(stages) >= 2 and all("slim" in steps[i][1] for i in stages)
    build, final = steps[stages[0] : stages[-1]], steps[stages[-1] :]
    assert any(word == "RUN" and "build --wheel" in rest for word, rest in build)
    assert any(word == "RUN" and re.search(r"pip install .*\.whl", rest) for word, rest in final)
    # The final stage copies nothing from the build context: only the wheel.
    assert not any(word in ("COPY", "ADD") and "--from=" not in rest for word, rest in final)
    for word, rest in build:
        if word == "COPY":
            *sources, _target = shlex.split(rest)
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"


def test_dockerfile_runs_as_non_root_with_the_run_command() -> None:
    steps = dict(dockerfile())  # the last of each instruction wins
    assert steps["USER"] not in ("root", "0")
    assert yaml.safe_load(steps["ENTRYPOINT"]) == ["facespace-bridge"]
    assert yaml.safe_load(steps["CMD"]) == ["run"]


def test_dockerfile_env_exists_and_state_volume_is_the_checkpoint_dir(clean_env: pytest.MonkeyPatch) -> None:
    env = docker_env()
    assert set(env) - FOREIGN_ENV <= envvars(RUN)
    volume = yaml.safe_load(dict(dockerfile())["VOLUME"])
    clean_env.setenv("XDG_STATE_HOME", env["XDG_STATE_HOME"])
    assert [str(default_path("default").parent)] == volume
    params = resolve(RUN, {**env, "FACESPACE_BRIDGE_BROKER": "file"}, clean_env)
    port = params["metrics_port"]
    healthcheck = dict(dockerfile())["HEALTHCHECK"]
    assert "/healthz" in healthcheck and "FACESPACE_BRIDGE_METRICS_PORT" in healthcheck
    assert f"'{port}'" in healthcheck  # the fallback in the probe is the same port
    assert dict(dockerfile())["EXPOSE"] == str(port)


# -- docker-compose.yml ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_dependencies_wait_for_healthy_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"kafka", "mosquitto", "simulator", "bridge", "homeassistant", "prometheus", "grafana"} <= set(
        services
    )
    for name, service in services.items():
        assert "healthcheck" in service, f"{name} has no healthcheck"
        for dependency, how in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert how == {"condition": "service_healthy"}
            # An optional dependency is only fine when every profile that starts `name` starts it too.
            needed, profiles = set(services[dependency].get("profiles", [])), set(service.get("profiles", []))
            assert not needed or (profiles and profiles <= needed), (
                f"{name} would wait for an optional service"
            )
    assert set(services["bridge"]["depends_on"]) == {"kafka", "mosquitto", "simulator"}
    assert {n: s["profiles"] for n, s in services.items() if "profiles" in s} == {
        "homeassistant": ["homeassistant"],
        "prometheus": ["monitoring"],
        "grafana": ["monitoring"],
    }
    # Prometheus must see a bridge that is down, so it never waits for one.
    assert "depends_on" not in services["prometheus"]
    assert set(services["grafana"]["depends_on"]) == {"prometheus"}


def test_compose_kafka_is_kraft_and_mosquitto_allows_anonymous(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert "controller" in env["KAFKA_PROCESS_ROLES"] and not any("ZOOKEEPER" in k for k in env)
    mosquitto = compose["services"]["mosquitto"]
    assert mosquitto["image"].startswith("eclipse-mosquitto:")
    source, target = mosquitto["volumes"][0].split(":")[:2]
    assert target == "/mosquitto/config/mosquitto.conf"
    conf = (DEPLOY / source).read_text().splitlines()
    assert "allow_anonymous true" in conf


def compose_bridge_params(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The parameters the compose file's bridge runs with: its environment and its mounted TOML."""
    bridge = compose["services"]["bridge"]
    env = {k: str(v) for k, v in bridge["environment"].items()}
    assert set(env) <= envvars(RUN)
    config_source, config_target = bridge["volumes"][0].split(":")[:2]
    assert config_target == env["FACESPACE_BRIDGE_CONFIG"]
    env["FACESPACE_BRIDGE_CONFIG"] = str(DEPLOY / config_source)  # the file as mounted
    return resolve(RUN, env, monkeypatch)


def test_compose_bridge_settings_point_at_the_other_services(
    compose: dict[str, Any], clean_env: pytest.MonkeyPatch
) -> None:
    services = compose["services"]
    bridge, simulator = services["bridge"], services["simulator"]
    check_argv(bridge["command"])
    sim_command = check_argv(simulator["command"])
    assert bridge["build"] == simulator["build"] and bridge["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (DEPLOY / bridge["build"]["context"] / bridge["build"]["dockerfile"]).is_file()

    env = {k: str(v) for k, v in bridge["environment"].items()}
    params = compose_bridge_params(compose, clean_env)
    assert set(params["broker"]) == {"kafka", "mqtt"}

    # The API: the simulator's address, port and key.
    sim_params = sim_command.make_context("simulate", simulator["command"][1:]).params
    assert host_port(params["api_url"], 80) == ("simulator", sim_params["port"])
    assert sim_params["host"] == "0.0.0.0"
    assert simulator["environment"]["FACESPACE_API_KEY"] == env["FACESPACE_API_KEY"]
    assert str(sim_params["port"]) in " ".join(simulator["healthcheck"]["test"])

    # Kafka: the bridge's bootstrap server is a listener Kafka advertises on the network.
    advertised = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert any(host_port(url, 0) == host_port(params["bootstrap_servers"], 9092) for url in advertised)
    assert host_port(params["bootstrap_servers"], 9092)[0] == "kafka"

    # MQTT: the port Mosquitto listens on.
    listener = next(
        line.split()
        for line in (DEPLOY / "mosquitto/mosquitto.conf").read_text().splitlines()
        if line.startswith("listener ")
    )
    assert host_port(params["mqtt_url"], 1883) == ("mosquitto", int(listener[1]))

    # Metrics: the healthcheck and the published port are the bridge's --metrics-port.
    port = params["metrics_port"]
    health_url = re.search(r"http://[^'\"]+", " ".join(bridge["healthcheck"]["test"]))
    assert health_url and host_port(health_url.group(), 80)[1] == port
    assert probe_paths(health_url.group()) == {"/healthz"}
    assert any(str(p).endswith(f":{port}") for p in bridge["ports"])


# -- the monitoring profile -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def prometheus_config() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())


def flag_values(command: list[str]) -> dict[str, str]:
    return dict(
        arg.removeprefix("--").split("=", 1) for arg in command if arg.startswith("--") and "=" in arg
    )


def test_compose_prometheus_reads_the_mounted_config_and_rules(
    compose: dict[str, Any], prometheus_config: dict[str, Any]
) -> None:
    prometheus = compose["services"]["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus:v")
    mounts = bind_mounts(prometheus)
    assert all(source.is_file() for source in mounts.values())
    flags = flag_values(prometheus["command"])
    assert mounts[flags["config.file"]] == DEPLOY / "prometheus/prometheus.yml"
    assert flags["storage.tsdb.path"] in named_volumes(prometheus)  # the series outlive the container
    # rule_files are read relative to the config file: each lands on a mounted rule file.
    rule_files = prometheus_config["rule_files"]
    config_dir = posixpath.dirname(flags["config.file"])
    assert [mounts[posixpath.join(config_dir, path)] for path in rule_files] == [
        DEPLOY / "prometheus/alerts.yml"
    ]
    assert "web.listen-address" not in flags
    health = re.search(r"http://[^'\"]+", " ".join(prometheus["healthcheck"]["test"]))
    assert health and host_port(health.group(), 80) == ("127.0.0.1", PROMETHEUS_PORT)
    assert probe_paths(health.group()) == {"/-/ready"}
    assert published_ports(prometheus) == {PROMETHEUS_PORT}


def test_compose_prometheus_scrapes_the_bridge_under_the_job_the_rules_select(
    compose: dict[str, Any], prometheus_config: dict[str, Any], clean_env: pytest.MonkeyPatch
) -> None:
    (job,) = prometheus_config["scrape_configs"]
    port = compose_bridge_params(compose, clean_env)["metrics_port"]
    assert [target for group in job["static_configs"] for target in group["targets"]] == [f"bridge:{port}"]
    assert "bridge" in compose["services"]
    # Every job the rules select is this one (a rule for another job would never fire).
    rules_text = (DEPLOY / "prometheus/alerts.yml").read_text()
    assert set(re.findall(r'\bjob="([^"]+)"', rules_text)) == {job["job_name"]}


def test_compose_grafana_provisions_the_prometheus_datasource_and_the_dashboard(
    compose: dict[str, Any],
) -> None:
    grafana = compose["services"]["grafana"]
    assert grafana["image"].startswith("grafana/grafana:")
    env = {k: str(v) for k, v in grafana["environment"].items()}
    assert "GF_PATHS_PROVISIONING" not in env  # so the default /etc/grafana/provisioning is read
    mounts = bind_mounts(grafana)
    assert mounts["/etc/grafana/provisioning/datasources"] == DEPLOY / "grafana/provisioning/datasources"
    assert mounts["/etc/grafana/provisioning/dashboards"] == DEPLOY / "grafana/provisioning/dashboards"
    assert "/var/lib/grafana" in named_volumes(grafana)

    # The data source is the compose file's Prometheus, at the port it listens on.
    (datasource_file,) = (DEPLOY / "grafana/provisioning/datasources").glob("*.yml")
    (datasource,) = yaml.safe_load(datasource_file.read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["isDefault"] is True
    assert host_port(datasource["url"], 80) == ("prometheus", PROMETHEUS_PORT)
    assert "prometheus" in compose["services"]

    # The dashboard provider's folder holds the mounted dashboard.
    (provider_file,) = (DEPLOY / "grafana/provisioning/dashboards").glob("*.yml")
    (provider,) = yaml.safe_load(provider_file.read_text())["providers"]
    assert provider["type"] == "file"
    dashboard_target = next(t for t, s in mounts.items() if s == DEPLOY / "grafana/facespace-bridge.json")
    assert posixpath.dirname(dashboard_target) == provider["options"]["path"]
    assert env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == dashboard_target
    assert json.loads((DEPLOY / "grafana/facespace-bridge.json").read_text())["uid"]

    health = re.search(r"http://[^'\"]+", " ".join(grafana["healthcheck"]["test"]))
    assert health and host_port(health.group(), 80) == ("127.0.0.1", GRAFANA_PORT)
    assert probe_paths(health.group()) == {"/api/health"}
    assert published_ports(grafana) == {GRAFANA_PORT}


# -- Kubernetes -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                found[document["kind"]] = document
    return found


def containers(k8s: dict[str, dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield from k8s["Deployment"]["spec"]["template"]["spec"]["containers"]


def test_k8s_kustomization_lists_every_manifest(k8s: dict[str, dict[str, Any]]) -> None:
    listed = set(k8s["Kustomization"]["resources"])
    files = {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    # The Secret is an example only: applying it with the rest would reset the real key.
    assert listed == files - {"secret.example.yaml"}
    assert {"Deployment", "Secret", "ConfigMap", "Service"} <= set(k8s)


def test_k8s_deployment_one_replica_probes_and_no_volume_with_kafka_checkpoints(
    k8s: dict[str, dict[str, Any]], tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    deployment = k8s["Deployment"]["spec"]
    assert deployment["replicas"] == 1 and deployment["strategy"]["type"] == "Recreate"
    (container,) = containers(k8s)
    assert container["image"].endswith(f":{__version__}")
    check_argv(container["args"])
    env = {item["name"]: item["value"] for item in container["env"]}
    assert set(env) <= envvars(RUN)

    # The ConfigMap's TOML, mounted where FACESPACE_BRIDGE_CONFIG says, read by click.
    configmap = k8s["ConfigMap"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in k8s["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    config_volume = next(n for n, v in volumes.items() if "configMap" in v)
    assert volumes[config_volume]["configMap"]["name"] == configmap["metadata"]["name"]
    mount_dir, file_name = os.path.split(env["FACESPACE_BRIDGE_CONFIG"])
    assert mounts[config_volume] == mount_dir and file_name in configmap["data"]
    local = tmp_path / file_name
    local.write_text(configmap["data"][file_name])
    params = resolve(RUN, {**env, "FACESPACE_BRIDGE_CONFIG": str(local)}, clean_env)
    assert params["checkpoint"] == "kafka"
    # With Kafka checkpoints nothing needs a persistent volume.
    assert all(set(v) <= {"name", "configMap", "emptyDir", "secret"} for v in volumes.values())

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == params["metrics_port"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"]["port"] == "metrics"

    # Secrets by reference: the Secret's keys are variables the bridge reads.
    secret = k8s["Secret"]
    assert [s["secretRef"]["name"] for s in container["envFrom"]] == [secret["metadata"]["name"]]
    assert set(secret["stringData"]) <= envvars(RUN)

    resources = container["resources"]
    assert _mebibytes(resources["requests"]["memory"]) <= _mebibytes(resources["limits"]["memory"])


def _mebibytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()  # type: ignore[union-attr]
    return int(number) * (1024 if unit == "Gi" else 1)


def test_k8s_service_selects_the_pods_metrics_port(k8s: dict[str, dict[str, Any]]) -> None:
    service = k8s["Service"]["spec"]
    labels = k8s["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    assert k8s["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = containers(k8s)
    names = {p["name"] for p in container["ports"]}
    assert all(p["targetPort"] in names for p in service["ports"])
    annotations = k8s["Service"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == service["ports"][0]["port"]


# -- systemd --------------------------------------------------------------------------------------


def unit_file() -> dict[str, list[str]]:
    """Key → values (keys such as Environment= repeat)."""
    values: dict[str, list[str]] = {}
    for line in (DEPLOY / "systemd/facespace-bridge.service").read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def test_systemd_unit_is_hardened_and_uses_existing_flags() -> None:
    unit = unit_file()
    for key, value in {
        "DynamicUser": "yes",
        "StateDirectory": "facespace-bridge",
        "ProtectSystem": "strict",
        "Restart": "on-failure",
        "NoNewPrivileges": "yes",
    }.items():
        assert unit[key] == [value], key
    assert unit["EnvironmentFile"]
    program, *argv = shlex.split(unit["ExecStart"][0])
    assert program.endswith("/facespace-bridge")
    check_argv(argv)
    env = dict(item.split("=", 1) for item in unit["Environment"])
    assert set(env) <= envvars(RUN)
    # The default checkpoint file lands in the StateDirectory (the only writable place).
    assert Path(env["XDG_STATE_HOME"]) / "facespace-bridge" == Path("/var/lib") / unit["StateDirectory"][0]
    assert unit["RestartPreventExitStatus"] == ["2"]  # bad input: exit 2 (cli.py)


def test_example_config_and_env_file_name_real_settings(clean_env: pytest.MonkeyPatch) -> None:
    config = DEPLOY / "facespace-bridge.toml"
    tomllib.loads(config.read_text())
    params = resolve(RUN, {"FACESPACE_BRIDGE_CONFIG": str(config)}, clean_env)
    assert params["broker"]
    example = (DEPLOY / "facespace-bridge.env.example").read_text()
    names = re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", example, re.M)
    assert "FACESPACE_API_KEY" in names and set(names) <= envvars(RUN)


def test_direct_env_vars_are_read_by_the_package() -> None:
    """docgen's list of variables read straight from the environment is not stale."""
    files = [p for p in (REPO / "facespace_bridge").rglob("*.py") if p.name != "docgen.py"]
    source = "\n".join(p.read_text() for p in files)
    for name in DIRECT_ENV:
        assert f'"{name}"' in source, name


# -- probes against the real metrics server -------------------------------------------------------


def all_probe_paths(compose: dict[str, Any], k8s: dict[str, dict[str, Any]]) -> set[str]:
    paths = set(re.findall(r"/(?:healthz|readyz|metrics)\b", dict(dockerfile())["HEALTHCHECK"]))
    bridge_check = " ".join(compose["services"]["bridge"]["healthcheck"]["test"])
    paths |= set(re.findall(r"/(?:healthz|readyz)\b", bridge_check))
    (container,) = containers(k8s)
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        paths.add(container[probe]["httpGet"]["path"])
    paths.add(k8s["Service"]["metadata"]["annotations"]["prometheus.io/path"])
    prometheus_config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    paths.update(job.get("metrics_path", "/metrics") for job in prometheus_config["scrape_configs"])
    return paths


async def test_every_probe_path_is_served_by_the_metrics_server(
    compose: dict[str, Any], k8s: dict[str, dict[str, Any]]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    status: dict[str, Any] = {"state": "STARTING", "sinks": {}}
    runner = await serve_metrics(Metrics(), port, lambda: status, "127.0.0.1")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            paths = all_probe_paths(compose, k8s)
            assert paths == {"/healthz", "/readyz", "/metrics"}
            assert (await client.get("/readyz")).status_code == 503  # not ready yet: out of rotation
            status["state"] = "RUNNING"
            for path in sorted(paths):
                assert (await client.get(path)).status_code == 200, path
    finally:
        await runner.cleanup()
