"""docker-compose.yml is valid Compose and in step with the code it runs.

There is no Docker engine here, so `docker compose config` cannot run: the file is checked
against the Compose Specification's JSON Schema, and against Settings and the CLI.
"""

from __future__ import annotations

import json
import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer
import typer.main
import yaml

from channels.email import EmailSettings
from monitoring.alertmanager.wecom_relay import Config, settings
from pipeline.config import Settings
from pipeline.durations import parse_duration
from tests.support.channels import setting_env_names

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = Path(__file__).resolve().parents[2] / "shared/schemas/compose-spec.json"
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error} and ${VAR?error}, as Compose
# interpolates them.
INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
SECRET_NAME = re.compile(r"PASSWORD|PASS$|SECRET|TOKEN|WEBHOOK|KEY$")
# Variables that are credentials or name an account: never a default, always required.
CREDENTIAL_NAME = re.compile(r"PASSWORD|PASS$|SECRET|TOKEN|USER")
RELAY = "wecom-robot-relay"
# The only ports published on the host: the web pages of the stack, on loopback.
# Documented in the compose header and docs/operations.md; a port added here must bind
# 127.0.0.1 too (test_host_ports_bind_loopback_only).
PUBLISHED = {
    "api": ["127.0.0.1:8080:8080"],
    "mailpit": ["127.0.0.1:8025:8025"],
    "prometheus": ["127.0.0.1:9091:9090"],
    "alertmanager": ["127.0.0.1:9093:9093"],
    "grafana": ["127.0.0.1:3001:3000"],
}
# (service, container port) allowed to bind beyond the host's loopback, with the reason.
PUBLIC_PORTS: dict[tuple[str, str], str] = {}


def _load() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return document


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load()


def _tocsin_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    # The WeCom relay runs from the same image but is no Tocsin process (tested below).
    return {
        name: svc for name, svc in compose["services"].items() if "build" in svc and name != RELAY
    }


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(key): str(value) for key, value in env.items()}


def _interpolate(value: str) -> str:
    """value as Compose would make it, a required variable standing in as its name in lower case."""

    def one(match: re.Match[str]) -> str:
        if (match["op"] or "").endswith("?"):
            return f"{match['name'].lower()}-from-env"
        return match["arg"] or ""

    return INTERPOLATION.sub(one, value)


def _strings(node: Any, where: str = "") -> list[tuple[str, str]]:
    """Every (path, string) in a loaded YAML document: keys are not included, values are."""
    if isinstance(node, dict):
        return [item for key, value in node.items() for item in _strings(value, f"{where}.{key}")]
    if isinstance(node, list):
        return [item for i, value in enumerate(node) for item in _strings(value, f"{where}[{i}]")]
    return [(where, str(node))] if node is not None else []


def test_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    if not SCHEMA.is_file():
        pytest.skip(f"{SCHEMA} is absent")
    jsonschema = pytest.importorskip("jsonschema")

    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, "\n".join(errors)


def test_shared_environment_uses_only_settings_names(compose: dict[str, Any]) -> None:
    shared = compose["x-tocsin-env"]
    assert set(shared) - setting_env_names() == set()
    for name, service in _tocsin_services(compose).items():
        unknown = set(_environment(service)) - setting_env_names()
        assert not unknown, f"{name} sets variables Settings does not read: {unknown}"


def test_shared_environment_parses_into_settings(compose: dict[str, Any]) -> None:
    worker = _environment(compose["services"]["worker"])
    env = {key: _interpolate(value) for key, value in worker.items()}
    # model_validate checks exactly these values: no process environment, no .env file.
    settings = Settings.model_validate(env)
    assert settings.queue_scheme == "amqp"
    assert not settings.is_sqlite
    assert EmailSettings.model_validate(env).enabled


def test_urls_and_hosts_name_compose_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    env = {key: _interpolate(value) for key, value in compose["x-tocsin-env"].items()}
    database = urlsplit(env["DATABASE_URL"])
    postgres = _environment(services["postgres"])
    assert database.hostname == "postgres"
    assert database.username == postgres["POSTGRES_USER"]
    assert database.password == _interpolate(postgres["POSTGRES_PASSWORD"])
    assert database.path == f"/{postgres['POSTGRES_DB']}"
    queue = urlsplit(env["QUEUE_URL"])
    rabbitmq = {k: _interpolate(v) for k, v in _environment(services["rabbitmq"]).items()}
    assert queue.hostname == "rabbitmq"
    assert (queue.username, queue.password) == (
        rabbitmq["RABBITMQ_DEFAULT_USER"],
        rabbitmq["RABBITMQ_DEFAULT_PASS"],
    )
    assert env["EMAIL_SMTP_SERVER"] in services
    assert env["EMAIL_SMTP_PORT"] in [str(port) for port in services["mailpit"]["expose"]]


def test_dependencies_name_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        missing = set(service.get("depends_on", {})) - set(services)
        assert not missing, f"{name} depends on unknown services {missing}"
        for dependency in service.get("depends_on", {}):
            if dependency not in ("migrate", "mailpit") and dependency in services:
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"


def test_secrets_only_come_from_the_environment(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for key, value in _environment(service).items():
            if SECRET_NAME.search(key):
                assert INTERPOLATION.fullmatch(value), f"{name}.{key} holds a literal secret"
            if key.endswith("_URL"):
                password = urlsplit(INTERPOLATION.sub("interpolated", value)).password
                assert password in (None, "interpolated"), f"{name}.{key} embeds a password"


def _published(mapping: object) -> tuple[str, str]:
    """(host IP, container port) of a `ports` entry, short or long syntax ("" = all IPs)."""
    if isinstance(mapping, dict):
        return str(mapping.get("host_ip", "")), str(mapping["target"])
    parts = str(mapping).split(":")
    host_ip = parts[0] if len(parts) == 3 else ""
    return host_ip, parts[-1].split("/")[0]


def test_host_ports_bind_loopback_only(compose: dict[str, Any]) -> None:
    published = {name: svc["ports"] for name, svc in compose["services"].items() if "ports" in svc}
    assert published == PUBLISHED, "publish only what a user asked for, and document it"
    for name, ports in published.items():
        for mapping in ports:
            host_ip, target = _published(mapping)
            if (name, target) in PUBLIC_PORTS:
                continue
            assert host_ip == "127.0.0.1", f"{name} publishes {mapping} beyond loopback"


def test_no_credential_has_a_default(compose: dict[str, Any]) -> None:
    required = set()
    for where, value in _strings(compose):
        for match in INTERPOLATION.finditer(value):
            name, op, arg = match["name"], match["op"] or "", match["arg"]
            if CREDENTIAL_NAME.search(name):
                # ${X:?...} or ${X?...}: Compose stops when it is missing; no fallback.
                assert op.endswith("?"), (
                    f"{where}: {name} must be required (${{{name}:?...}}), not defaulted"
                )
                required.add(name)
            elif SECRET_NAME.search(name):
                assert not arg, f"{where}: {name} defaults to a secret"
    assert {
        "POSTGRES_PASSWORD",
        "RABBITMQ_USER",
        "RABBITMQ_PASSWORD",
        "GRAFANA_ADMIN_USER",
        "GRAFANA_ADMIN_PASSWORD",
        "WECOM_RELAY_TOKEN",
    } <= required
    for where, value in _strings(compose):
        assert "guest" not in value.lower(), f"{where}: RabbitMQ's guest account"
    for name, service in compose["services"].items():
        for key, value in _environment(service).items():
            if CREDENTIAL_NAME.search(key):
                assert value.lower() not in {"admin", "guest", "root", "password"}, (
                    f"{name}.{key} is a well-known credential"
                )


def test_no_service_offers_an_admin_or_lifecycle_api(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        command = service.get("command", [])
        words = command.split() if isinstance(command, str) else [str(w) for w in command]
        for flag in ("--web.enable-lifecycle", "--web.enable-admin-api"):
            assert not [w for w in words if w.startswith(flag)], f"{name} enables {flag}"


def test_metrics_ports_match_metrics_port(compose: dict[str, Any]) -> None:
    served = 0
    for name, service in _tocsin_services(compose).items():
        env = _environment(service)
        port = env.get("METRICS_PORT")
        if port is None or name == "migrate":
            continue
        served += 1
        api = [env["API_PORT"]] if "API_PORT" in env else []
        assert [str(p) for p in service.get("expose", [])] == [*api, port], name
        # Prometheus scrapes on the compose network, so inside it /metrics listens on every
        # interface (Tocsin's default is loopback); on the host it is not published.
        assert env.get("METRICS_ADDR") == "0.0.0.0", name
        published = [str(p) for p in service.get("ports", [])]
        assert not any(f":{port}" in p for p in published), f"{name} publishes /metrics"
    assert served >= 2
    assert f"EXPOSE {compose['x-tocsin-env']['METRICS_PORT']}" in (ROOT / "Dockerfile").read_text()


def test_processes_get_their_shutdown_grace_before_docker_kills_them(
    compose: dict[str, Any],
) -> None:
    grace = Settings(_env_file=None).shutdown_grace
    for name, service in _tocsin_services(compose).items():
        if name == "migrate":
            continue
        allowed = parse_duration(str(service.get("stop_grace_period", "10s")))
        assert allowed > grace, f"{name}: stop_grace_period {allowed} <= SHUTDOWN_GRACE {grace}"


def test_dockerfile_builds_the_package() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"pip install .*/tmp/tocsin|pip install \.", dockerfile)
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".venv", ".git", ".env"} <= set(ignored)
    assert "requirements.lock" not in ignored


def test_dockerfile_base_has_the_cpython_email_fixes() -> None:
    # CVE-2024-6923 and CVE-2023-27043 are fixed in 3.12.6; an unpinned tag could go back.
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    base = re.search(r"^FROM python:3\.12\.(\d+)-slim(-\w+)?$", dockerfile, re.MULTILINE)
    assert base, "the base image is python:3.12.N-slim, pinned to a patch release"
    assert int(base[1]) >= 6


def test_dockerfile_installs_dependencies_only_from_the_hashed_lock() -> None:
    runs = [
        line for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines()
        if line.startswith("RUN pip install")
    ]  # fmt: skip
    assert any("--require-hashes -r /tmp/requirements.lock" in line for line in runs)
    package = [line for line in runs if "/tmp/tocsin" in line]
    assert package and all("--no-deps" in line for line in package)


def test_dockerfile_runs_as_an_unprivileged_user() -> None:
    users = re.findall(r"^USER (\S+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert users and users[-1] not in {"root", "0"}


def _command_path(command: list[str] | str) -> list[str]:
    words = command.split() if isinstance(command, str) else list(command)
    assert words[0] == "tocsin", f"{command!r} does not run tocsin"
    return words[1:]


def _subcommands(command: object) -> dict[str, object] | None:
    # Duck-typed: typer >= 0.2x vendors click (typer._click), so `click` may not import,
    # and TyperGroup is no longer a click.Group subclass.
    commands = getattr(command, "commands", None)
    return commands if isinstance(commands, dict) else None


def _cli_app() -> typer.Typer:
    cli = pytest.importorskip("pipeline.cli")
    if getattr(cli, "__file__", None) is None:
        pytest.skip("pipeline.cli has no __init__.py yet (namespace package)")
    app = getattr(cli, "app", None)
    assert isinstance(app, typer.Typer), "pipeline.cli must expose its typer app as `app`"
    return app


def test_commands_are_real_cli_commands(compose: dict[str, Any]) -> None:
    root = typer.main.get_command(_cli_app())
    for name, service in _tocsin_services(compose).items():
        current: object = root
        for word in _command_path(service["command"]):
            subcommands = _subcommands(current)
            if word.startswith("-") or subcommands is None:
                break
            assert word in subcommands, f"{name}: `{word}` is not a tocsin command"
            current = subcommands[word]
        assert _subcommands(current) is None, f"{name} names a group, not a command"


# --- monitoring: Prometheus, Alertmanager and Grafana wired to monitoring/ ---------------

MONITORING = {
    "prometheus": ("prom/prometheus:v2.54.1", "127.0.0.1:9091:9090"),
    "alertmanager": ("quay.io/prometheus/alertmanager:v0.27.0", "127.0.0.1:9093:9093"),
    "grafana": ("grafana/grafana:11.0.0", "127.0.0.1:3001:3000"),
}
PLACEHOLDER = re.compile(r"\$\{(\w+)\}")


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source (a named volume or a ./ path) of a service's volumes."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        mounts[target] = source
    return mounts


def _mounted_file(service: dict[str, Any], container_path: str) -> Path:
    """The repository file a service sees at container_path through a ./ bind mount."""
    for target, source in _mounts(service).items():
        if source.startswith("./") and container_path.startswith(f"{target}/"):
            return ROOT / source / container_path.removeprefix(f"{target}/")
    raise AssertionError(f"{container_path} is not in a bind mount")


def _flag(service: dict[str, Any], name: str) -> str:
    args: list[str] = service["command"]
    (value,) = [arg.split("=", 1)[1] for arg in args if arg.startswith(f"{name}=")]
    return value


def _container_port(service: dict[str, Any]) -> str:
    (mapping,) = service["ports"]
    return str(mapping).rsplit(":", 1)[-1]


def test_monitoring_services_images_ports_and_volumes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, (image, port) in MONITORING.items():
        assert services[name]["image"] == image
        assert services[name]["ports"] == [port]
        for source in _mounts(services[name]).values():
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
    assert _mounts(services["prometheus"])["/prometheus"] == "prometheus_data"
    assert _mounts(services["grafana"])["/var/lib/grafana"] == "grafana_data"
    assert {"prometheus_data", "grafana_data"} <= set(compose["volumes"])


def test_prometheus_scrapes_the_tocsin_processes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    prometheus = services["prometheus"]
    config = yaml.safe_load(
        _mounted_file(prometheus, _flag(prometheus, "--config.file")).read_text()
    )
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    port = compose["x-tocsin-env"]["METRICS_PORT"]
    for job_name, command in (
        ("tocsin-producer", "producer"),
        ("tocsin-worker", "worker"),
        ("tocsin-api", "api"),
    ):
        (discovery,) = jobs[job_name]["dns_sd_configs"]
        (service,) = discovery["names"]
        assert _command_path(services[service]["command"]) == [command], job_name
        assert str(discovery["port"]) == port, job_name
    (alertmanager,) = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    host, _, am_port = alertmanager.partition(":")
    assert host in services
    assert am_port == _container_port(services[host])


def test_alertmanager_environment_fills_every_placeholder(compose: dict[str, Any]) -> None:
    service = compose["services"]["alertmanager"]
    words: list[str] = [*service["entrypoint"][1:], *service["command"]]
    render, template, output, binary, *flags = words
    assert _mounted_file(service, render).name == "render.sh"
    config = _mounted_file(service, template)
    assert config.name == "alertmanager.yml"
    assert binary == "/bin/alertmanager"
    assert f"--config.file={output}" in flags
    lines = config.read_text(encoding="utf-8").splitlines()
    placeholders = {
        name
        for line in lines
        if not line.lstrip().startswith("#")
        for name in PLACEHOLDER.findall(line)
    }
    # ALERT_SMTP_REQUIRE_TLS is read by render.sh itself, not spliced into the file.
    assert set(_environment(service)) - {"ALERT_SMTP_REQUIRE_TLS"} == placeholders


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    grafana = services["grafana"]
    provisioning = _mounted_file(grafana, "/etc/grafana/provisioning/datasources/prometheus.yml")
    (datasource,) = yaml.safe_load(provisioning.read_text())["datasources"]
    url = urlsplit(datasource["url"])
    assert url.hostname in services
    assert str(url.port) == _container_port(services[url.hostname])
    providers = _mounted_file(grafana, "/etc/grafana/provisioning/dashboards/tocsin.yml")
    (provider,) = yaml.safe_load(providers.read_text())["providers"]
    dashboards = _mounted_file(grafana, f"{provider['options']['path']}/tocsin-overview.json")
    assert dashboards.is_file()


# --- the WeCom robot relay: Alertmanager's wecom-oncall receiver posts to it ---------------

RELAY_MODULE = "monitoring.alertmanager.wecom_relay"
RELAY_ENV = {
    "WECOM_RELAY_LISTEN",
    "WECOM_RELAY_TOKEN",
    "WECOM_RELAY_ROBOTS",
    "WECOM_ROBOT_BASE_URL",
    "WECOM_ROBOT_TIMEOUT",
}


def _relay_settings(compose: dict[str, Any]) -> Config:
    env = {k: _interpolate(v) for k, v in _environment(compose["services"][RELAY]).items()}
    return settings(env)


def _relay_routes(compose: dict[str, Any]) -> dict[str, str]:
    """Route -> the ${...} its key comes from, as the relay's WECOM_RELAY_ROBOTS names them."""
    robots = _environment(compose["services"][RELAY])["WECOM_RELAY_ROBOTS"]
    return dict(item.split("=", 1) for item in robots.replace(",", " ").split())


def test_wecom_relay_service_runs_the_relay_alone(compose: dict[str, Any]) -> None:
    services = compose["services"]
    relay = services[RELAY]
    assert relay["build"] == services["producer"]["build"]
    assert relay["image"] == services["producer"]["image"]
    python, flag, module = relay["command"]
    assert (python, flag, module) == ("python", "-m", RELAY_MODULE)
    assert (ROOT / (module.replace(".", "/") + ".py")).is_file()
    # The image has the module only if the package search picks up monitoring/alertmanager,
    # a directory without __init__.py: setuptools' pyproject default namespaces = true.
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert find["find"].get("namespaces", True) is True
    assert any(fnmatch(module.rpartition(".")[0], pattern) for pattern in find["find"]["include"])
    # Independent of Tocsin: none of its settings. It holds the robot keys and its token.
    env = _environment(relay)
    assert set(env) <= RELAY_ENV
    assert not set(env) & set(compose["x-tocsin-env"])
    assert "depends_on" not in relay
    config = _relay_settings(compose)
    assert config.host == "0.0.0.0"  # inside the compose network: Alertmanager's container
    assert config.base_url == "https://qyapi.weixin.qq.com/cgi-bin/webhook/send"
    assert [str(p) for p in relay["expose"]] == [str(config.port)]
    assert "ports" not in relay, "the relay needs no published port"
    probe = " ".join(relay["healthcheck"]["test"])
    # /healthz is the one request the relay answers without the token.
    assert f"http://127.0.0.1:{config.port}/healthz" in probe
    for route, key in _relay_routes(compose).items():
        assert INTERPOLATION.fullmatch(key), f"route {route}: its key is not from the environment"


def test_alertmanager_receiver_posts_to_the_relay(compose: dict[str, Any]) -> None:
    services = compose["services"]
    alertmanager = services["alertmanager"]
    assert RELAY in alertmanager["depends_on"]
    # A relay that cannot start must not keep Alertmanager (and its e-mail) down.
    assert alertmanager["depends_on"][RELAY]["condition"] == "service_started"
    template = _mounted_file(alertmanager, alertmanager["command"][0])
    config = yaml.safe_load(template.read_text(encoding="utf-8"))
    (receiver,) = [r for r in config["receivers"] if r["name"] == "wecom-oncall"]
    (webhook,) = receiver["webhook_configs"]
    url = urlsplit(webhook["url"])
    assert url.hostname == RELAY
    assert url.port == _relay_settings(compose).port
    # A route the relay has a robot for, chosen by name: no key, no query string.
    route = url.path.removeprefix("/alertmanager/")
    assert url.path == f"/alertmanager/{route}"
    assert route in _relay_routes(compose)
    assert not url.query
    # Alertmanager sends the relay's own token, from the same variable.
    (placeholder,) = PLACEHOLDER.findall(webhook["http_config"]["authorization"]["credentials"])
    relay_token = _environment(services[RELAY])["WECOM_RELAY_TOKEN"]
    assert _environment(alertmanager)[placeholder] == relay_token
    token = INTERPOLATION.fullmatch(relay_token)
    assert token and token["name"] == "WECOM_RELAY_TOKEN" and token["op"] == ":?"


def test_the_api_service_listens_inside_and_is_checked_for_readiness(
    compose: dict[str, Any],
) -> None:
    api = compose["services"]["api"]
    env = _environment(api)
    assert env["API_ADDR"] == "0.0.0.0"  # the container's interfaces; published on loopback
    settings = Settings(_env_file=None, api_port=int(env["API_PORT"]))
    assert api["ports"] == [f"127.0.0.1:{settings.api_port}:{settings.api_port}"]
    probe = " ".join(api["healthcheck"]["test"])
    assert f"http://127.0.0.1:{settings.api_port}/readyz" in probe
