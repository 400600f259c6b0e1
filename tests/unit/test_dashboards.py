"""Dashboards as code: the committed JSON is what dashboards/*.py generate,
fits Grafana's dashboard schema (the typed models of Grafana's own SDK),
follows the mixin conventions (datasource variable, units, descriptions,
$__rate_interval, no hard-coded job or instance), uses only catalogued
metrics and labels, and agrees with alerts/orb8-rules.yml on label names.
The proof that every query returns data is tests/kernel/test_dashboards_live.py.
"""

from __future__ import annotations

import enum
import json
import re
import shutil
import typing
from typing import Any

import pytest
import yaml
from grafana_foundation_sdk.cog import plugins
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model

from dashboards import DASHBOARDS, DEPLOY_DIRECTORY, DIRECTORY, security
from dashboards.__main__ import main
from dashboards.builder import canonical, render
from tests.dashboard_queries import (
    TARGET_LABELS,
    added_labels,
    catalogue,
    dashboard_files,
    grouping_labels,
    load,
    panels,
    query_result_lines,
    selectors,
    targets,
    variable_options,
)
from tests.helpers import ROOT

RULES = yaml.safe_load((ROOT / "alerts" / "orb8-rules.yml").read_text())
ALERT_RULES = [rule for group in RULES["groups"] for rule in group["rules"]]
SECURITY_RULES = [
    rule for group in RULES["groups"] if group["name"] == "orb8-security" for rule in group["rules"]
]
# Series Prometheus makes itself, with the labels they carry.
PROMETHEUS_METRICS = {
    "up": set(),
    "scrape_duration_seconds": set(),
    "scrape_samples_scraped": set(),
}
TARGET_VARIABLES = {"cluster": "$cluster", "job": "$job", "instance": "$instance"}
WORKLOAD_VARIABLES = {"namespace": "$namespace", "pod": "$pod"}


# --- generated, not hand-edited ---------------------------------------------


def test_committed_json_is_what_the_code_generates():
    for spec in DASHBOARDS:
        committed = (DIRECTORY / spec.file).read_text()
        assert committed == render(spec), f"{spec.file} is stale: run `make dashboards`"
        copy = (DEPLOY_DIRECTORY / spec.file).read_text()
        assert copy == committed, f"the sidecar copy of {spec.file} is stale: run `make dashboards`"
    # No hand-made file beside the generated ones.
    assert {p.name for p in dashboard_files()} == {spec.file for spec in DASHBOARDS}


def test_check_names_an_edited_and_a_missing_file(tmp_path, capsys):
    for spec in DASHBOARDS:
        shutil.copy(DIRECTORY / spec.file, tmp_path)
    assert main(["--check", "--directory", str(tmp_path)]) == 0
    edited, missing, *untouched = (tmp_path / spec.file for spec in DASHBOARDS)
    data = json.loads(edited.read_text())
    data["panels"][1]["title"] = "edited by hand"
    edited.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    missing.unlink()
    assert main(["--check", "--directory", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{edited.name} (differs)" in err
    assert f"{missing.name} (missing)" in err
    assert untouched and not [path.name for path in untouched if path.name in err]
    assert not missing.exists(), "--check writes nothing"


# --- Grafana's dashboard schema (the SDK's typed models) ---------------------


def type_problems(value: Any, hint: Any, path: str) -> list[str]:
    """Where `value` does not fit the SDK annotation `hint` (recursively)."""
    if hint is Any or hint is object:
        return _object_problems(value, path) if hasattr(value, "to_json") else []
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return []
        # A decoded model: check it against its own class, not the other variants.
        own = [arg for arg in args if isinstance(arg, type) and type(value) is arg]
        tried = [type_problems(value, arg, path) for arg in own or args if arg is not type(None)]
        return [] if any(not problems for problems in tried) else min(tried, key=len)
    if origin is typing.Literal:
        return [] if value in args else [f"{path}: {value!r} is not one of {args}"]
    if origin is list:
        if not isinstance(value, list):
            return [f"{path}: {value!r} is not a list"]
        return [
            p for i, item in enumerate(value) for p in type_problems(item, args[0], f"{path}[{i}]")
        ]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{path}: {value!r} is not an object"]
        return [p for k, item in value.items() for p in type_problems(item, args[1], f"{path}.{k}")]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            hint(value)
        except ValueError:
            return [f"{path}: {value!r} is not a {hint.__name__}"]
        return []
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return [] if ok else [f"{path}: {value!r} is not a number"]
    if hint in (int, str, bool):
        ok = isinstance(value, hint) and (hint is bool or not isinstance(value, bool))
        return [] if ok else [f"{path}: {value!r} is not {hint.__name__}"]
    if isinstance(hint, type):
        if isinstance(value, dict) and hasattr(hint, "from_json"):
            # Parts the SDK leaves as plain JSON when decoding (transformations).
            decoded = hint.from_json(value)
            if json.loads(json.dumps(decoded, cls=JSONEncoder)) != value:
                return [f"{path}: fields outside {hint.__name__}"]
            value = decoded
        if not isinstance(value, hint):
            return [f"{path}: {type(value).__name__} is not {hint.__name__}"]
        return _object_problems(value, path)
    return []


def _object_problems(value: Any, path: str) -> list[str]:
    hints = typing.get_type_hints(type(value))
    return [
        p
        for name, hint in hints.items()
        for p in type_problems(getattr(value, name), hint, f"{path}.{name}")
    ]


def schema_problems(data: dict) -> list[str]:
    plugins.register_default_plugins()
    return type_problems(model.Dashboard.from_json(data), model.Dashboard, "dashboard")


def test_files_round_trip_through_the_sdk_models_unchanged():
    """Decoding drops any key the schema does not know; nothing is dropped."""
    for path in dashboard_files():
        data = load(path)
        assert canonical(data) == data, f"{path.name} has fields outside the dashboard schema"


def test_every_field_has_the_schema_type():
    for path in dashboard_files():
        assert schema_problems(load(path)) == [], path.name


def test_the_schema_check_catches_wrong_types_and_unknown_fields():
    data = load(dashboard_files()[0])
    data["panels"][1]["gridPos"]["h"] = "eight"
    data["graphTooltip"] = 7
    data["panels"][1]["targets"][0]["instant"] = "yes"
    problems = schema_problems(data)
    assert any(p.startswith("dashboard.panels[1].grid_pos.h:") for p in problems), problems
    assert any(p.startswith("dashboard.graph_tooltip:") for p in problems), problems
    assert any(p.startswith("dashboard.panels[1].targets[0].instant:") for p in problems), problems
    data = load(dashboard_files()[0])
    data["panels"][1]["fieldConfig"]["defaults"]["unitt"] = "s"
    assert canonical(data) != data


# --- imports cleanly and follows the conventions ------------------------------


def test_uids_are_stable_and_unique():
    uids = {load(path)["uid"]: path.name for path in dashboard_files()}
    assert uids == {
        "orb8-network": "orb8-network.json",
        "orb8-security": "orb8-security.json",
        "orb8-health": "orb8-health.json",
        "orb8-gpu": "orb8-gpu.json",
        "orb8-dns": "orb8-dns.json",
    }
    for path in dashboard_files():
        ids = [panel["id"] for panel in panels(load(path))]
        assert len(ids) == len(set(ids)), path.name


def test_panels_fit_the_grid_without_overlapping_and_have_unique_titles():
    for path in dashboard_files():
        cells: dict[tuple[int, int], str] = {}
        titles = [p["title"] for p in panels(load(path)) if p["type"] != "row"]
        assert len(titles) == len(set(titles)), path.name
        for panel in panels(load(path)):
            pos = panel["gridPos"]
            assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
            for x in range(pos["x"], pos["x"] + pos["w"]):
                for y in range(pos["y"], pos["y"] + pos["h"]):
                    other = cells.setdefault((x, y), panel["title"])
                    assert other == panel["title"], (
                        f"{path.name}: {panel['title']} overlaps {other}"
                    )


def test_every_panel_has_a_description_a_unit_and_the_datasource_variable():
    for path in dashboard_files():
        dashboard = load(path)
        variables = dashboard["templating"]["list"]
        assert variables[0]["name"] == "datasource"
        assert variables[0]["type"] == "datasource" and variables[0]["query"] == "prometheus"
        for variable in variables[1:]:
            assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for panel in panels(dashboard):
            if panel["type"] == "row":
                continue
            where = f"{dashboard['title']} / {panel['title']}"
            assert panel.get("description", "").strip(), f"{where}: no description"
            assert panel["fieldConfig"]["defaults"].get("unit"), f"{where}: no unit"
            refs = [panel["datasource"]] + [t["datasource"] for t in panel["targets"]]
            assert all(ref == {"type": "prometheus", "uid": "${datasource}"} for ref in refs), where


def workload_chained(dashboard: dict) -> dict[str, str]:
    """{label: "$variable"} of the extra variables listed under the pod selection
    (the GPU dashboard's `gpu`: the uuids the selected pods use)."""
    found = {}
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query", "")
        if variable["name"] not in WORKLOAD_VARIABLES and 'pod=~"$pod"' in query:
            label = re.fullmatch(r"label_values\(.*,\s*(\w+)\)", query).group(1)
            found[label] = f"${variable['name']}"
    return found


def test_queries_select_by_variables_and_use_the_rate_interval():
    variables_of = {
        load(path)["title"]: {v["name"] for v in load(path)["templating"]["list"]}
        for path in dashboard_files()
    }
    chained_of = {load(path)["title"]: workload_chained(load(path)) for path in dashboard_files()}
    for target in targets():
        for window in re.findall(r"\[([^\]]*)\]", target.expr):
            assert window == "$__rate_interval", f"{target.name}: window [{window}]"
        for metric, matchers in selectors(target.expr):
            by_label = {label: (op, value) for label, op, value in matchers}
            # No hard-coded cluster/job/instance/namespace/pod anywhere.
            for label in {*TARGET_VARIABLES, *WORKLOAD_VARIABLES} & by_label.keys():
                assert by_label[label][1] == f"${label}", f"{target.name}: {label} not ${label}"
            if metric == "ALERTS":
                continue
            required = dict(TARGET_VARIABLES)
            per_workload = "namespace" in variables_of[target.dashboard]
            # A device selected by a variable chained on the pods (uuid=~"$gpu")
            # is filtered by workload already: it is one the selected pods use.
            chained = chained_of[target.dashboard]
            by_device = any(by_label.get(label) == ("=~", v) for label, v in chained.items())
            if per_workload and "namespace" in catalogue().get(metric, ()) and not by_device:
                required |= WORKLOAD_VARIABLES
            missing = required.keys() - by_label.keys()
            assert not missing, f"{target.name}: {metric} not filtered by {sorted(missing)}"


def test_gpu_dashboard_selects_every_gpu_series_by_the_gpu_variable():
    """$gpu lists the uuids the selected pods use; every GPU series is
    selected with it, so picking a pod narrows the device panels too."""
    dashboard = load(DIRECTORY / "orb8-gpu.json")
    assert workload_chained(dashboard) == {"uuid": "$gpu"}
    [gpu] = [v for v in dashboard["templating"]["list"] if v["name"] == "gpu"]
    assert gpu["multi"] and gpu["includeAll"] and gpu["allValue"] == ".*"
    checked = 0
    for target in targets():
        if target.dashboard != dashboard["title"]:
            continue
        for metric, matchers in selectors(target.expr):
            if "uuid" in catalogue()[metric]:
                assert ("uuid", "=~", "$gpu") in matchers, f"{target.name}: {metric}"
                checked += 1
    assert checked >= 20


def test_queries_use_only_catalogued_metrics_and_labels():
    known = {**catalogue(), **PROMETHEUS_METRICS}
    alert_labels = set().union(*(labels_of_alert(rule) for rule in ALERT_RULES))
    for target in targets():
        labels_here: set[str] = set(TARGET_LABELS)
        for metric, matchers in selectors(target.expr):
            if metric == "ALERTS":
                metric_labels = alert_labels
            else:
                assert metric in known, f"{target.name}: {metric} is not in docs/metrics.md"
                metric_labels = known[metric] | TARGET_LABELS
            unknown = {label for label, _, _ in matchers} - metric_labels
            assert not unknown, f"{target.name}: {metric} has no label {sorted(unknown)}"
            labels_here |= metric_labels
        unknown = grouping_labels(target.expr) - labels_here
        assert not unknown, f"{target.name}: grouping by unknown label(s) {sorted(unknown)}"
        legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.legend))
        grouped = grouping_labels(target.expr) or labels_here
        assert legend <= grouped | added_labels(target.expr), f"{target.name}: legend {legend}"


def test_variable_queries_use_catalogued_labels():
    known = catalogue()
    for path in dashboard_files():
        for variable in load(path)["templating"]["list"][1:]:
            if variable["query"].startswith("query_result("):
                # The Node variable: value and text groups name target labels
                # (node: added by the ServiceMonitor's relabeling).
                metric = re.fullmatch(r"query_result\((\w+)\{.*\}\)", variable["query"]).group(1)
                assert metric in known, path.name
                labels = set(re.findall(r'(\w+)="\(\?<', variable["regex"]))
                assert labels == {"instance", "node"}, (path.name, labels)
                continue
            metric, label = re.fullmatch(
                r"label_values\((\w+)\{?.*,\s*(\w+)\)", variable["query"]
            ).groups()
            assert label in known[metric] | TARGET_LABELS, f"{path.name}: ${variable['name']}"


def test_node_variable_shows_the_node_label_and_keeps_instance_as_value():
    """Grafana's query_result() lines through the variable's regex: the node
    name where the scrape added one, IP:port where it did not; the value is
    always the instance, which every query and alert selects on."""
    result = [
        {
            "metric": {
                "__name__": "orb8_build_info",
                "instance": "10.0.3.7:9826",
                "job": "orb8",
                "kernel": "6.1.0-18-amd64",
                "node": "gpu-node-1",
                "version": "0.1.0",
            },
            "value": [1733350000.5, "1"],
        },
        {
            "metric": {
                "__name__": "orb8_build_info",
                "instance": "10.0.3.8:9826",
                "job": "orb8",
                "kernel": "6.1.0-18-amd64",
                "version": "0.1.0",
            },
            "value": [1733350000.5, "1"],
        },
    ]
    lines = query_result_lines(result)
    assert lines[0] == (
        'orb8_build_info{instance="10.0.3.7:9826",job="orb8",kernel="6.1.0-18-amd64",'
        'node="gpu-node-1",version="0.1.0"} 1 1733350000500'
    )
    for path in dashboard_files():
        [node] = [v for v in load(path)["templating"]["list"] if v["name"] == "instance"]
        assert node["label"] == "Node" and node["multi"] and node["allValue"] == ".*"
        assert variable_options(node, lines) == {
            "10.0.3.7:9826": "gpu-node-1",
            "10.0.3.8:9826": "10.0.3.8:9826",
        }, path.name


def test_cluster_variable_is_selectable():
    for path in dashboard_files():
        [cluster] = [v for v in load(path)["templating"]["list"] if v["name"] == "cluster"]
        assert cluster.get("hide", 0) == 0, path.name


# --- alert rules and dashboards agree ----------------------------------------


def labels_of_alert(rule: dict) -> set[str]:
    """The labels an alert of this rule carries (what ALERTS{...} can select on)."""
    expr = rule["expr"]
    grouped = grouping_labels(expr)
    absent = re.fullmatch(r"absent\((\w+)\{(.*)\}\)", expr.strip())
    if absent:
        # absent() keeps only the equality matchers of its selector.
        labels = {label for label, op, _ in selectors(expr)[0][1] if op == "="}
    elif grouped:
        labels = grouped
    else:
        metric = re.findall(r"\b(orb8_\w+|up)\b", expr)[0]
        labels = catalogue().get(metric, set()) | {"job", "instance"}
    return labels | set(rule.get("labels", {})) | {"alertname", "alertstate"}


def alerts_target():
    [found] = [t for t in targets() if "ALERTS" in t.expr]
    return found


def test_alerts_panel_selects_only_labels_the_alerts_carry():
    target = alerts_target()
    [(_, matchers)] = [s for s in selectors(target.expr) if s[0] == "ALERTS"]
    by_variable = {label for label, _, value in matchers if value.startswith("$")}
    # Every alert of a node carries the node, so the node filter never hides
    # one; an absent() alert has no node (its allValue ".*" shows it under All).
    assert "instance" in by_variable
    for rule in ALERT_RULES:
        if rule["expr"].startswith("absent("):
            assert labels_of_alert(rule) == {"job", "severity", "alertname", "alertstate"}
            continue
        assert "instance" in labels_of_alert(rule), rule["alert"]
    # ...and every workload alert carries every label the panel filters on.
    for rule in SECURITY_RULES:
        missing = by_variable - labels_of_alert(rule)
        assert not missing, f"{rule['alert']} lacks {missing}: the panel would hide it"
    # What the table shows exists on some alert.
    shown = grouping_labels(target.expr)
    assert shown <= set().union(*(labels_of_alert(rule) for rule in ALERT_RULES))


def test_workload_tables_group_by_the_labels_the_security_alerts_carry():
    alert_identity = {
        frozenset(labels_of_alert(rule) - {"severity", "alertname", "alertstate"})
        for rule in SECURITY_RULES
    }
    [identity] = alert_identity
    for target in targets():
        if target.panel_type == "table" and re.search(
            r"orb8_(dangerous|syscall_novel)", target.expr
        ):
            assert grouping_labels(target.expr) | {"instance"} == identity, target.name


def test_runbook_links_follow_the_rules_and_exist_in_docs():
    rules = {rule["alert"]: rule for rule in SECURITY_RULES}
    headings = set(re.findall(r"^## (\w+)$", (ROOT / "docs" / "alerts.md").read_text(), re.M))
    specific = []
    for alert, syscalls in security.RUNBOOKS:
        matchers = re.findall(r'syscall(=~|=)"([^"]+)"', rules[alert]["expr"])
        assert {value for _, value in matchers} == {syscalls}, alert
        specific += syscalls.split("|")
    catch_all = rules[security.CATCH_ALL_ALERT]["expr"]
    [excluded] = set(re.findall(r'syscall!~"([^"]+)"', catch_all))
    assert sorted(excluded.split("|")) == sorted(specific)
    for alert in [security.CATCH_ALL_ALERT, *(a for a, _ in security.RUNBOOKS)]:
        assert alert in headings, f"docs/alerts.md has no section {alert}"
        anchor = f"{security.RUNBOOK_BASE}#{alert.lower()}"
        assert rules[alert]["annotations"]["runbook_url"] == anchor
    [table] = [t for t in targets() if t.panel == "Dangerous syscalls by pod and syscall"]
    links = table.panel_json["fieldConfig"]["overrides"][0]["properties"][0]["value"]
    assert links[0]["url"] == security.RUNBOOK_BASE + "#${__data.fields.runbook}"
    assert "runbook" in added_labels(table.expr)


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (
            'sum by (a, b) (rate(m{x="1", y=~"$y"}[5m]))',
            ([("m", [("x", "=", "1"), ("y", "=~", "$y")])], {"a", "b"}),
        ),
        (
            'm{a="}{", b!~"x\\"y"} / n{c!="d"}',
            ([("m", [("a", "=", "}{"), ("b", "!~", 'x"y')]), ("n", [("c", "!=", "d")])], set()),
        ),
        ("max without(le) (m)", ([], {"le"})),
    ],
)
def test_promql_reader(expr, expected):
    assert (selectors(expr), grouping_labels(expr)) == expected
