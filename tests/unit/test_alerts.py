"""Alert rules: promtool-clean, unit-tested firing and not firing, documented."""

from __future__ import annotations

import re
import subprocess

import yaml

from tests.helpers import ROOT

RULES = ROOT / "alerts" / "orb8-rules.yml"
RULE_TESTS = ROOT / "alerts" / "orb8-rules.test.yml"
RUNBOOKS = ROOT / "docs" / "alerts.md"


def alerts() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_check_rules_is_clean():
    result = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 19 rules found" in result.stdout
    assert "WARNING" not in result.stdout + result.stderr


def test_promtool_unit_tests_pass():
    result = subprocess.run(
        ["promtool", "test", "rules", str(RULE_TESTS)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_not_firing():
    cases = [
        case
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    for rule in alerts():
        mine = [c for c in cases if c["alertname"] == rule["alert"]]
        assert any(c.get("exp_alerts") for c in mine), f"{rule['alert']} never fires in tests"
        assert any(not c.get("exp_alerts") for c in mine), f"{rule['alert']} always fires"


def test_every_alert_has_severity_summary_description_and_a_runbook():
    anchors = {heading.lower() for heading in re.findall(r"^## (\w+)$", RUNBOOKS.read_text(), re.M)}
    for rule in alerts():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        assert rule["annotations"]["runbook_url"].endswith(f"docs/alerts.md#{name.lower()}")
        assert name.lower() in anchors, f"{name} has no runbook section in docs/alerts.md"


def test_workload_alerts_name_the_workload_and_syscall():
    for rule in alerts():
        if "orb8_dangerous_syscalls_total" in rule["expr"] or "novel" in rule["expr"]:
            for label in ("namespace", "pod", "container", "syscall"):
                assert f"$labels.{label}" in rule["annotations"]["description"], rule["alert"]


def test_newer_dangerous_syscalls_each_have_a_firing_alert_test():
    from exporter.sources.syscalls import DEFAULT_DANGEROUS_SYSCALLS

    newer = DEFAULT_DANGEROUS_SYSCALLS[DEFAULT_DANGEROUS_SYSCALLS.index("open_tree") :]
    assert "io_uring_setup" in newer and "mount_setattr" in newer
    fired = set()
    for group in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in group.get("alert_rule_test", []):
            for alert in case.get("exp_alerts") or []:
                fired.add((case["alertname"], alert["exp_labels"].get("syscall")))
    for name in newer:
        assert ("Orb8DangerousSyscall", name) in fired, name
        assert f"`{name}`" in RUNBOOKS.read_text(), f"{name}: reason missing in docs/alerts.md"
