"""The deployment files keep their promises: docker-compose.yml, Dockerfile, monitoring/.

Docker itself is not needed: the files are parsed and checked against the README's
deployment section, ``backend/metrics.py`` and each other. When ``docker compose`` is
installed, one more test asks it to validate the file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
MONITORING = ROOT / "monitoring"
DASHBOARDS = sorted((MONITORING / "grafana" / "dashboards").glob("*.json"))

#: Metrics being added alongside these files (a gauge and a counter); allowed by name.
PENDING_METRICS = {"botsim_workers_live", "botsim_send_unknown_total"}
#: Environment variables whose value is a secret: never a literal, never a default.
SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|API_KEY", re.I)
REQUIRED_REF = re.compile(r"^\$\{[A-Z_][A-Z0-9_]*:\?[^}]+\}$")
APP_SERVICES = ("migrate", "listener", "api", "worker")


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = _load_yaml(COMPOSE_FILE)
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]  # type: ignore[no-any-return]


def _env(service: dict[str, Any]) -> dict[str, Any]:
    """A service's environment as a dict (compose accepts a mapping or KEY=VALUE list)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return dict(env)


def _command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command") or []
    return cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]


def _healthcheck(service: dict[str, Any]) -> str:
    test = (service.get("healthcheck") or {}).get("test") or []
    return test if isinstance(test, str) else " ".join(str(t) for t in test)


def readme_services() -> list[str]:
    """Service names of the README's deployment section: its ``- `name`: ...`` bullets."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    head = "## Deployment (docker compose)\n"
    assert head in readme, "README has no deployment section"
    section = readme.split(head, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^- `([A-Za-z0-9._-]+)`:", section, re.M)


def defined_metrics() -> set[str]:
    """Series names exposed for the metrics of backend/metrics.py (prometheus-client rules).

    A Counter ``x`` or ``x_total`` is exposed as ``x_total`` (and ``x_created``); a
    Histogram ``h`` as ``h_bucket``, ``h_sum``, ``h_count`` (and ``h_created``).
    """
    source = (ROOT / "backend" / "metrics.py").read_text(encoding="utf-8")
    names: set[str] = set()
    for kind, name in re.findall(
        r"\b(Counter|Gauge|Histogram|Summary)\(\s*[\"']([a-zA-Z_:][a-zA-Z0-9_:]*)[\"']", source
    ):
        if kind == "Counter":
            base = name.removesuffix("_total")
            names |= {f"{base}_total", f"{base}_created"}
        elif kind == "Gauge":
            names.add(name)
        else:
            names |= {f"{name}{s}" for s in ("_bucket", "_sum", "_count", "_created")}
            if kind == "Summary":
                names.add(name)
    return names


def used_metrics(text: str) -> set[str]:
    return set(re.findall(r"\bbotsim_[a-z0-9_]+", text))


# --- compose: services ------------------------------------------------------------------


def test_readme_and_compose_list_the_same_services(services: dict[str, Any]) -> None:
    promised = readme_services()
    assert len(promised) == len(set(promised)), f"README lists a service twice: {promised}"
    assert set(promised) == set(services), (
        f"README only: {sorted(set(promised) - set(services))}; "
        f"compose only: {sorted(set(services) - set(promised))}"
    )


def test_no_version_key_and_expected_services(compose: dict[str, Any]) -> None:
    assert "version" not in compose, "the Compose specification has no version key"
    expected = {"postgres", "redis", "listener", "api", "worker", "prometheus", "grafana",
                "sandbox-telegram"}
    assert expected <= set(compose["services"])


def test_worker_is_one_replicated_service(services: dict[str, Any]) -> None:
    worker = services["worker"]
    assert int(worker["deploy"]["replicas"]) >= 2
    assert "container_name" not in worker, "replicas cannot share a container_name"
    for port in worker.get("ports") or []:
        assert ":" not in str(port), f"a fixed host port {port} breaks replicas"
    copies = [n for n in services if re.fullmatch(r"worker[-_]?\d+", n)]
    assert not copies, f"hand-numbered worker services: {copies}"
    runs_worker = [n for n, s in services.items() if _command(s)[:2] == ["botsim", "worker"]]
    assert runs_worker == ["worker"]


def test_worker_healthcheck_is_the_heartbeat_check(services: dict[str, Any]) -> None:
    test = services["worker"]["healthcheck"]["test"]
    assert test[0] == "CMD" and "worker" in test and test[test.index("worker") + 1] == "--check"
    assert _env(services["worker"]).get("BOTSIM_METRICS_PORT") == "9100"


def test_http_services_check_readiness(services: dict[str, Any]) -> None:
    assert _command(services["listener"]) == ["botsim", "listener", "--register"]
    assert _command(services["api"])[:2] == ["botsim", "api"]
    for name, port in (("listener", 8082), ("api", 8000)):
        check = _healthcheck(services[name])
        assert f"127.0.0.1:{port}/health/ready" in check and "urllib" in check, name
        assert any(str(p).endswith(f":{port}") for p in services[name].get("ports", [])), name
    assert "pg_isready" in _healthcheck(services["postgres"])
    assert "redis-cli ping" in _healthcheck(services["redis"])


def test_app_services_share_config_and_wait_for_storage(services: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        service = services[name]
        env = _env(service)
        assert env.get("BOTSIM_ENV") == "production", name
        assert env.get("DATABASE_URL") == "postgresql://botsim@postgres:5432/botsim", name
        assert env.get("REDIS_URL") == "redis://redis:6379/0", name
        assert env.get("BOTSIM_TELEGRAM_API_URL") == (
            "${BOTSIM_TELEGRAM_API_URL:-https://api.telegram.org/bot}"), name
        assert "BOTSIM_LLM_PROVIDERS" in env, name
        for var in ("BOTSIM_FERNET_KEY", "BOTSIM_WEBHOOK_SECRET", "BOTSIM_PUBLIC_WEBHOOK_URL"):
            assert REQUIRED_REF.match(str(env.get(var))), f"{name}: {var} must be required"
            assert env[var].startswith(f"${{{var}:?"), f"{name}: {var} from another variable"
        deps = service["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy", name
        if name != "migrate":
            assert deps["redis"]["condition"] == "service_healthy", name
            assert deps["migrate"]["condition"] == "service_completed_successfully", name


def test_sandbox_service_is_optional_and_uses_the_cli(services: dict[str, Any]) -> None:
    sandbox = services["sandbox-telegram"]
    assert sandbox["profiles"] == ["sandbox"]
    cmd = _command(sandbox)
    assert cmd[:3] == ["python", "-m", "sandbox.telegram_api"]
    source = (ROOT / "sandbox" / "telegram_api.py").read_text(encoding="utf-8")
    options = set(re.findall(r"add_argument\(\s*\"(--[a-z-]+)\"", source))
    used = {arg for arg in cmd[3:] if arg.startswith("--")}
    assert used <= options, f"unknown sandbox options: {sorted(used - options)}"
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert cmd[cmd.index("--port") + 1] == "8081"
    for name, service in services.items():
        if name != "sandbox-telegram":
            assert "profiles" not in service, f"{name} would not start by default"


# --- compose: secrets and files ---------------------------------------------------------


def test_no_literal_secret_in_compose(compose: dict[str, Any]) -> None:
    envs = [(name, _env(s)) for name, s in compose["services"].items()]
    envs += [(key, _env(value)) for key, value in compose.items()
             if key.startswith("x-") and isinstance(value, dict)]
    secrets = 0
    for owner, env in envs:
        for var, value in env.items():
            if SECRET_NAME.search(var):
                secrets += 1
                assert value is not None and REQUIRED_REF.match(str(value)), (
                    f"{owner}: {var}={value!r} must be a ${{VAR:?message}} reference"
                )
            if isinstance(value, str) and "://" in value:
                assert not re.search(r"://[^/@\s]+:[^/@\s]+@", value), f"{owner}: {var} password"
    assert secrets >= 4, "the compose file should require its secrets from the environment"
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    defaulted = re.findall(r"\$\{(\w+):?-", text)
    assert not [v for v in defaulted if SECRET_NAME.search(v)], "a secret with a default"


def _bind_sources(compose: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(service, source, target) of every bind mount from the repository."""
    binds = []
    for name, service in compose["services"].items():
        for volume in service.get("volumes") or []:
            if isinstance(volume, dict):
                if volume.get("type") == "bind":
                    binds.append((name, volume["source"], volume["target"]))
                continue
            source, _, rest = str(volume).partition(":")
            if source.startswith((".", "/")):
                binds.append((name, source, rest.split(":")[0]))
    return binds


def test_every_mounted_file_exists(compose: dict[str, Any]) -> None:
    binds = _bind_sources(compose)
    assert binds, "prometheus and grafana mount their configuration from the repository"
    for service, source, _ in binds:
        assert (ROOT / source).exists(), f"{service} mounts missing {source}"
    named = {str(v).split(":")[0] for s in compose["services"].values()
             for v in s.get("volumes") or [] if not str(v).startswith((".", "/", "{"))}
    assert named <= set(compose.get("volumes") or {}), "undeclared named volume"
    for name, service in compose["services"].items():
        if "build" in service:
            context = service["build"] if isinstance(service["build"], str) else (
                service["build"].get("context", "."))
            assert (ROOT / context / "Dockerfile").is_file(), name
    mounted = {source.removeprefix("./") for _, source, _ in binds}
    assert {"monitoring/prometheus.yml", "monitoring/alerts.yml"} <= mounted


def test_grafana_provisioning_matches_its_mounts(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    targets = {source.removeprefix("./"): target for svc, source, target in _bind_sources(compose)
               if svc == "grafana"}
    assert targets.get("monitoring/grafana/provisioning") == "/etc/grafana/provisioning"
    provider = _load_yaml(MONITORING / "grafana/provisioning/dashboards/botsim.yml")
    path = provider["providers"][0]["options"]["path"]
    assert targets.get("monitoring/grafana/dashboards") == path
    datasources = _load_yaml(MONITORING / "grafana/provisioning/datasources/prometheus.yml")
    source = datasources["datasources"][0]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text("utf-8"))
        uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
        assert uids == {source["uid"]}, path.name
    assert _env(grafana)["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")


# --- monitoring -------------------------------------------------------------------------


def test_metric_names_are_read_from_backend_metrics() -> None:
    names = defined_metrics()
    assert {"botsim_llm_calls_total", "botsim_cache_redis_up",
            "botsim_llm_latency_seconds_bucket"} <= names
    assert "botsim_llm_calls_total_total" not in names
    assert "botsim_llm_latency_seconds" not in names  # a histogram has no bare series


def test_prometheus_scrapes_every_process(services: dict[str, Any]) -> None:
    config = _load_yaml(MONITORING / "prometheus.yml")
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["listener"]["static_configs"][0]["targets"] == ["listener:8082"]
    assert jobs["api"]["static_configs"][0]["targets"] == ["api:8000"]
    dns = jobs["worker"]["dns_sd_configs"][0]
    assert dns["names"] == ["worker"] and dns["type"] == "A"
    assert str(dns["port"]) == _env(services["worker"])["BOTSIM_METRICS_PORT"]


def test_alerts_parse_and_use_defined_metrics() -> None:
    text = (MONITORING / "alerts.yml").read_text(encoding="utf-8")
    rules = [rule for group in yaml.safe_load(text)["groups"] for rule in group["rules"]]
    assert len(rules) >= 4
    for rule in rules:
        assert rule["alert"] and rule["expr"].strip(), rule
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", "0s"))), rule["alert"]
    exprs = " ".join(rule["expr"] for rule in rules)
    assert re.search(r'up\{job="worker"\}\s*==\s*0', exprs), "no alert for a worker down"
    unknown = used_metrics(text) - defined_metrics() - PENDING_METRICS
    assert not unknown, f"alerts.yml uses undefined metrics: {sorted(unknown)}"
    assert used_metrics(exprs) & defined_metrics(), "no alert on botsim's own metrics"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_parses_and_uses_defined_metrics(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    dashboard = json.loads(text)
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(dashboard["panels"]) >= 4 and all(e.strip() for e in exprs)
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    assert all(p.get("description") for p in dashboard["panels"]), "a panel says what it shows"
    unknown = used_metrics(text) - defined_metrics() - PENDING_METRICS
    assert not unknown, f"dashboard uses undefined metrics: {sorted(unknown)}"


def test_dashboards_have_distinct_uids_and_no_overlapping_panels() -> None:
    uids = [json.loads(p.read_text("utf-8"))["uid"] for p in DASHBOARDS]
    assert len(DASHBOARDS) >= 3 and len(set(uids)) == len(uids)
    for path in DASHBOARDS:
        cells: set[tuple[int, int]] = set()
        for panel in json.loads(path.read_text("utf-8"))["panels"]:
            g = panel["gridPos"]
            assert g["x"] + g["w"] <= 24, (path.name, panel["title"])
            mine = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                    for y in range(g["y"], g["y"] + g["h"])}
            assert not mine & cells, f"{path.name}: {panel['title']!r} overlaps another panel"
            cells |= mine


# --- Dockerfile -------------------------------------------------------------------------


def test_dockerfile_has_no_secret_and_runs_unprivileged() -> None:
    lines = []
    for raw in (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            lines.append(line)
    instructions = [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]
    assert instructions[0] == ("FROM", "python:3.11-slim")
    assert any(op == "RUN" and re.search(r"pip install \.(\s|$)", arg)
               for op, arg in instructions)
    for op, arg in instructions:
        if op in ("ENV", "ARG", "LABEL"):
            assert not SECRET_NAME.search(arg), f"secret in Dockerfile: {op} {arg}"
    users = [arg.split(":")[0] for op, arg in instructions if op == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must end as a non-root user"
    last_user = max(i for i, (op, _) in enumerate(instructions) if op == "USER")
    assert all(op != "RUN" for op, _ in instructions[last_user:]), "RUN after the final USER"
    assert instructions[-1] == ("CMD", '["botsim", "worker"]')


# --- docker compose itself, when installed ----------------------------------------------


def _docker_compose_available() -> str | None:
    """None when ``docker compose`` works here, else why the test skips."""
    if shutil.which("docker") is None:
        return "docker is not installed"
    try:
        done = subprocess.run(["docker", "compose", "version"], capture_output=True,
                              timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"docker compose version failed: {exc}"
    return None if done.returncode == 0 else "the docker compose plugin is not available"


@pytest.mark.parametrize("profile", [None, "sandbox"])
def test_docker_compose_config_accepts_the_file(profile: str | None) -> None:
    reason = _docker_compose_available()
    if reason:
        pytest.skip(reason)
    env = {**os.environ, "POSTGRES_PASSWORD": "x", "GRAFANA_ADMIN_PASSWORD": "x",
           "BOTSIM_FERNET_KEY": "x", "BOTSIM_WEBHOOK_SECRET": "x" * 32,
           "BOTSIM_PUBLIC_WEBHOOK_URL": "https://example.invalid"}
    args = ["docker", "compose", "-f", str(COMPOSE_FILE)]
    if profile:
        args += ["--profile", profile]
    done = subprocess.run([*args, "config", "-q"], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    missing = {k: v for k, v in env.items() if k != "BOTSIM_FERNET_KEY"}
    done = subprocess.run([*args, "config", "-q"], capture_output=True, text=True, env=missing,
                          cwd=ROOT, timeout=60, check=False)
    assert done.returncode != 0 and "BOTSIM_FERNET_KEY" in done.stderr
