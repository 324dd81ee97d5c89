"""The Prometheus alert rules (``monitoring/alerts.yml``) checked and unit-tested by promtool.

- ``promtool check rules`` and ``promtool check config`` (the config loads the rules; it
  makes no DNS lookup for the worker job's ``dns_sd_configs``, so it validates offline);
- ``promtool test rules monitoring/tests/alerts_test.yml``: each alert fired by its series,
  and kept quiet below its threshold, within its ``for`` or without traffic;
- without promtool: every alert has a test that fires it and one where it must stay
  quiet, names the runbook section it should, and reads only metrics that
  ``backend/metrics.py`` defines.

promtool comes with Debian's ``prometheus`` package (``.ci/run`` installs it);
``BOTSIM_PROMTOOL`` names another binary. Without it the promtool tests skip, unless ``CI``
is set: then they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.registry import REGISTRY

import backend.metrics  # noqa: F401  (registers every botsim metric in REGISTRY)
from tests.conftest import service_missing

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "monitoring" / "alerts.yml"
CONFIG = ROOT / "monitoring" / "prometheus.yml"
ALERT_TESTS = ROOT / "monitoring" / "tests" / "alerts_test.yml"
PROMTOOL = os.environ.get("BOTSIM_PROMTOOL", "promtool")
SEVERITIES = {"critical", "warning"}


@pytest.fixture(scope="module")
def promtool() -> str:
    """The path of promtool; skips (fails when ``CI`` is set) when it is not installed."""
    path = shutil.which(PROMTOOL)
    if path is None:
        service_missing("promtool", f"{PROMTOOL!r} not found on PATH (apt-get install"
                        " prometheus, or set BOTSIM_PROMTOOL)")
    return path


def _run(promtool: str, *args: str) -> None:
    proc = subprocess.run([promtool, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, (
        f"promtool {' '.join(args)} exited {proc.returncode}\n"
        f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")


def test_check_rules(promtool: str) -> None:
    """``promtool check rules``: the rules parse and their expressions are valid PromQL."""
    _run(promtool, "check", "rules", str(ALERTS.relative_to(ROOT)))


def test_check_config(promtool: str) -> None:
    """``promtool check config``: the deployment's config and the rule file it loads."""
    _run(promtool, "check", "config", str(CONFIG.relative_to(ROOT)))


def test_alert_unit_tests(promtool: str) -> None:
    """``promtool test rules``: every alert's tests pass."""
    _run(promtool, "test", "rules", str(ALERT_TESTS.relative_to(ROOT)))


def _alerts() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def _rule_tests() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))
    return [case for test in doc["tests"] for case in test.get("alert_rule_test", [])]


def test_every_alert_is_tested_firing_and_quiet() -> None:
    """Each alert has an ``alert_rule_test`` that expects it to fire and one that expects
    it quiet; the tests name no alert that does not exist."""
    names = [rule["alert"] for rule in _alerts()]
    assert len(names) == len(set(names)), "an alert name is used twice"
    firing = {c["alertname"] for c in _rule_tests() if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in _rule_tests() if not c.get("exp_alerts")}
    assert not set(names) - firing, f"alerts never tested firing: {sorted(set(names) - firing)}"
    assert not set(names) - quiet, f"alerts never tested quiet: {sorted(set(names) - quiet)}"
    unknown = (firing | quiet) - set(names)
    assert not unknown, f"tests of alerts that alerts.yml does not define: {sorted(unknown)}"


def test_every_alert_has_for_severity_and_runbook() -> None:
    """Each alert waits a ``for``, has a severity, a summary, a description and a runbook
    link to its section of docs/operations.md (the heading's anchor: its name lowercased)."""
    for rule in _alerts():
        name = rule["alert"]
        assert rule.get("for"), f"{name}: no `for`"
        assert rule.get("labels", {}).get("severity") in SEVERITIES, f"{name}: severity"
        notes = rule.get("annotations", {})
        for key in ("summary", "description"):
            assert notes.get(key), f"{name}: no {key} annotation"
        assert notes.get("runbook") == f"docs/operations.md#{name.lower()}", f"{name}: runbook"


def test_every_runbook_section_exists() -> None:
    """docs/operations.md has a ``### <AlertName>`` section for every alert, and none for an
    alert that no longer exists."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text("utf-8")
    sections = set(re.findall(r"^### (Botsim\w+)$", doc, re.M))
    names = {rule["alert"] for rule in _alerts()}
    assert names <= sections, f"alerts without a runbook section: {sorted(names - sections)}"
    assert not sections - names, f"runbook sections of no alert: {sorted(sections - names)}"


def _exported_names() -> set[str]:
    """Every series name the default registry's metrics export (counters with ``_total``,
    histograms with ``_bucket``, ``_count`` and ``_sum``)."""
    suffixes = {"counter": ("_total",), "gauge": ("",),
                "histogram": ("_bucket", "_count", "_sum")}
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names


def test_alerts_read_only_defined_metrics() -> None:
    """Every metric an alert expression reads is exported by ``backend/metrics.py`` under
    that exact name (a missing ``_total`` would make an alert silently never fire)."""
    exported = _exported_names()
    for rule in _alerts():
        used = set(re.findall(r"\bbotsim_\w+", rule["expr"]))
        assert used or "up{" in rule["expr"], f"{rule['alert']}: reads no metric"
        unknown = used - exported
        assert not unknown, f"{rule['alert']}: no such metric {sorted(unknown)}"
