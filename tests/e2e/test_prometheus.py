"""A real Prometheus scrapes a short sharded run: the listener, the admin API, two workers.

The run is the session's ``small_run`` (``tests/e2e/conftest.py``): Debian's ``prometheus``
(installed by ``.ci/run``) started on a free port with the repository's alert rules finds
the run's processes through the ``file_sd`` target files ``botsim loadtest
--prometheus-targets`` writes. Once the run is over, the test asks Prometheus (its HTTP
API, the way Grafana does):

- every metric of ``docs/operations.md``'s table has samples from every job the table names,
  and, for ``worker``, from both workers;
- every query of every dashboard in ``monitoring/grafana/dashboards`` returns data over the
  run, a number at least once (not only NaN; ``$__rate_interval`` as Grafana would set it
  for a 1 s scrape);
- every alert rule evaluated without an error against the run's series.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import service_missing
from tests.e2e.conftest import JOBS, SmallRun

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.timeout(240),
              pytest.mark.xdist_group("processes")]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "monitoring" / "grafana" / "dashboards").glob("*.json"))
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


def _api(base: str, path: str, **params: Any) -> Any:
    r = httpx.get(f"{base}/api/v1/{path}", params=params, timeout=30, trust_env=False)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", (path, params, body)
    return body["data"]


def test_prometheus_scrapes_a_sharded_run(small_run: SmallRun) -> None:
    if small_run.prometheus is None:
        service_missing("prometheus", small_run.missing or "not started")
    base = small_run.prometheus
    assert small_run.figures["throughput"]["messages"] > 0
    window = {"start": f"{small_run.started:.3f}", "end": f"{small_run.ended:.3f}"}

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
                data = _api(base, "query_range", query=query, step="2", **window)["result"]
                if not any(v != "NaN" for s in data for _, v in s["values"]):
                    empty.append(f"{path.name}: {panel['title']!r}: {query}")
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)

    # The alert rules were evaluated against the run's series without an error.
    groups = _api(base, "rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert rules, "no alert rule loaded"
    broken = [(r["name"], r.get("lastError")) for r in rules if r.get("health") != "ok"]
    assert not broken, broken
