"""A real Prometheus scrapes a short sharded run: the listener, the admin API, two workers.

Debian's ``prometheus`` (installed by ``.ci/run``) is started on a free port with the
repository's alert rules, and finds the run's processes through the ``file_sd`` target files
``botsim loadtest --prometheus-targets`` writes. Once the run is over, the test asks
Prometheus (its HTTP API, the way Grafana does):

- every metric of ``docs/operations.md``'s table has samples from every job the table names,
  and, for ``worker``, from both workers;
- every query of every dashboard in ``monitoring/grafana/dashboards`` returns data over the
  run (``$__rate_interval`` as Grafana would set it for a 1 s scrape);
- every alert rule evaluated without an error against the run's series.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from loadtest.options import LoadOptions
from loadtest.runner import run_load
from tests.conftest import service_missing

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.timeout(300),
              pytest.mark.xdist_group("processes")]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "monitoring" / "grafana" / "dashboards").glob("*.json"))
JOBS = ("listener", "api", "worker")
SCRAPE_S = 1
#: Grafana's ``$__rate_interval``: max(4 × scrape interval, the step + scrape interval).
RATE_INTERVAL = "15s"


def documented_metrics() -> dict[str, set[str]]:
    """``docs/operations.md``'s metrics table: metric name → the jobs that export it."""
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    table = text.split("<!-- metrics-table -->", 1)[1].split("<!-- /metrics-table -->", 1)[0]
    out: dict[str, set[str]] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        m = re.fullmatch(r"`(botsim_[a-z0-9_]+)`", cells[0]) if cells else None
        if m:
            out[m.group(1)] = {j.strip() for j in cells[2].split(",")}
    return out


def series_name(metric: str, kind: str) -> str:
    """The name a sample of ``metric`` carries: a histogram's ``_count``, else itself."""
    return f"{metric}_count" if kind == "histogram" else metric


def documented_kinds() -> dict[str, str]:
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    return {m.group(1): m.group(2) for m in re.finditer(
        r"^\| `(botsim_[a-z0-9_]+)` \| (counter|gauge|histogram) \|", text, re.M)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_docs_table_lists_defined_metrics() -> None:
    """The table is parsed as the Prometheus test reads it, and names only real metrics."""
    from tests.unit.test_compose import defined_metrics

    table = documented_metrics()
    kinds = documented_kinds()
    assert len(table) >= 30 and set(table) == set(kinds)
    defined = defined_metrics()
    for name, jobs in table.items():
        assert jobs and jobs <= set(JOBS), (name, jobs)
        assert series_name(name, kinds[name]) in defined, f"{name} is not in backend/metrics.py"


@pytest.fixture
def prometheus(tmp_path: Path) -> Any:
    """A Prometheus on 127.0.0.1 scraping the job files in ``tmp_path/targets`` every
    second, with the repository's alert rules; stopped (SIGTERM) after the test."""
    binary = shutil.which("prometheus")
    if binary is None:
        service_missing("prometheus", "Debian's prometheus package is not installed "
                        "(.ci/run installs it)")
    targets = tmp_path / "targets"
    targets.mkdir()
    for job in JOBS:
        (targets / f"{job}.json").write_text("[]")
    config = {
        "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s",
                   "scrape_timeout": f"{SCRAPE_S}s"},
        "rule_files": [str(ROOT / "monitoring" / "alerts.yml")],
        "scrape_configs": [
            {"job_name": job, "file_sd_configs": [
                {"files": [str(targets / f"{job}.json")], "refresh_interval": "1s"}]}
            for job in JOBS],
    }
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/-/ready", timeout=1, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("prometheus did not start:\n"
                            + (tmp_path / "prometheus.log").read_text(errors="replace")[-3000:])
            time.sleep(0.2)
        yield base, targets
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _api(base: str, path: str, **params: Any) -> Any:
    r = httpx.get(f"{base}/api/v1/{path}", params=params, timeout=30, trust_env=False)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", (path, params, body)
    return body["data"]


async def test_prometheus_scrapes_a_sharded_run(prometheus: Any) -> None:
    base, targets = prometheus
    started = time.time()
    figures = await run_load(LoadOptions(
        bots=24, chats=4, workers=2, duration_s=30, warmup_s=5, llm_latency_ms=50,
        human_rate_per_min=40, msgs_per_hour=600, seed=3, floor_samples=20, progress=False,
        targets_dir=targets))
    ended = time.time()
    assert figures["throughput"]["messages"] > 0
    window = {"start": f"{started:.3f}", "end": f"{ended:.3f}"}

    # Every process was a target, and was up.
    up = _api(base, "query_range", query="max_over_time(up[1h])", step="5",
              **window)["result"]
    seen = {(s["metric"]["job"], s["metric"]["instance"]) for s in up}
    assert {j for j, _ in seen} == set(JOBS), seen
    workers = {i for j, i in seen if j == "worker"}
    assert len(workers) == 2, seen
    assert all(float(s["values"][-1][1]) == 1 for s in up), up

    # Every documented metric has samples from every job that should export it.
    kinds = documented_kinds()
    missing: list[str] = []
    for metric, jobs in documented_metrics().items():
        name = series_name(metric, kinds[metric])
        found = _api(base, "series", **{"match[]": name}, **window)
        by_job: dict[str, set[str]] = {}
        for s in found:
            by_job.setdefault(s["job"], set()).add(s["instance"])
        for job in jobs:
            if job not in by_job:
                missing.append(f"{metric} from {job}")
            elif job == "worker" and by_job[job] != workers:
                missing.append(f"{metric} from only {sorted(by_job[job])} of the workers")
    assert not missing, "metrics without samples:\n" + "\n".join(missing)

    # Every dashboard query returns data over the run.
    empty: list[str] = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text("utf-8"))["panels"]:
            for target in panel["targets"]:
                query = target["expr"].replace("$__rate_interval", RATE_INTERVAL)
                data = _api(base, "query_range", query=query, step="5", **window)["result"]
                if not any(s["values"] for s in data):
                    empty.append(f"{path.name}: {panel['title']!r}: {query}")
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)

    # The alert rules were evaluated against the run's series without an error.
    groups = _api(base, "rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert rules, "no alert rule loaded"
    broken = [(r["name"], r.get("lastError")) for r in rules if r.get("health") != "ok"]
    assert not broken, broken
