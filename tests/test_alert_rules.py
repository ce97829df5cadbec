"""The alert rules are valid, and every alert is unit-tested firing and not firing.

``promtool`` (Debian's ``prometheus`` package; ``.ci/run`` installs it) checks
``deploy/prometheus/alerts.yml`` and runs ``alerts_test.yml``; this module also
reads both files and fails when an alert lacks a test case where it fires or
one where it stays silent.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

RULES_DIR = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """``promtool args`` in the rules' folder; fails the test (never skips) without promtool."""
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool not found: install Debian's prometheus package (.ci/run does)")
    return subprocess.run(
        [found, *args], cwd=RULES_DIR, capture_output=True, text=True, timeout=120, check=False
    )


def rules() -> list[dict[str, Any]]:
    """Every rule of ``alerts.yml``: alerting and recording."""
    found = yaml.safe_load((RULES_DIR / "alerts.yml").read_text())
    return [rule for group in found["groups"] for rule in group["rules"]]


def alert_names() -> list[str]:
    return [rule["alert"] for rule in rules() if "alert" in rule]


def test_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", "alerts_test.yml")
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    tests: list[dict[str, Any]] = yaml.safe_load((RULES_DIR / "alerts_test.yml").read_text())[
        "tests"
    ]
    fires: set[str] = set()
    silent: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    names = alert_names()
    assert len(names) == len(set(names)), "an alert name is used twice"
    assert sorted(set(names) - fires) == [], "alerts never tested firing"
    assert sorted(set(names) - silent) == [], "alerts never tested silent"
    assert sorted((fires | silent) - set(names)) == [], "tests of alerts that do not exist"


def test_every_alert_has_a_runbook_entry() -> None:
    readme = (RULES_DIR.parent / "README.md").read_text()
    runbook = readme[readme.index("## Runbook") :]
    runbook = runbook[: runbook.index("\n## ", 1)]
    rows = {
        line.split("|")[1].strip(" `") for line in runbook.splitlines() if line.startswith("| `")
    }
    assert sorted(set(alert_names()) - rows) == [], "alerts without a runbook row"
    assert sorted(rows - set(alert_names())) == [], "runbook rows of alerts that do not exist"
