"""Reading the committed dashboards the way Grafana does, for the tests.

- `panels()`: every (dashboard, panel, target) of dashboards/*.json, the files
  users import (not the Python that generates them);
- `substitute()`: template variables interpolated with Grafana's Prometheus
  data source rules (regex-escaped for multi-value variables);
- a small PromQL reader: selectors, matchers, grouping labels. Enough for
  the label-agreement checks; the live test has Prometheus parse for real.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import ROOT

DASHBOARD_DIR = ROOT / "dashboards"
# Labels Prometheus adds to every scraped series (cluster: by relabelling,
# in multi-cluster setups).
TARGET_LABELS = {"job", "instance", "cluster"}


@dataclass(frozen=True)
class Target:
    dashboard: str  # dashboard title
    panel: str  # panel title
    panel_type: str
    expr: str
    legend: str
    instant: bool
    panel_json: dict

    @property
    def name(self) -> str:
        return f"{self.dashboard} / {self.panel}"


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARD_DIR.glob("*.json"))


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def panels(dashboard: dict) -> Iterator[dict]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # panels of a collapsed row


def targets() -> list[Target]:
    found = []
    for path in dashboard_files():
        dashboard = load(path)
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                found.append(
                    Target(
                        dashboard["title"],
                        panel["title"],
                        panel["type"],
                        target["expr"],
                        target.get("legendFormat", ""),
                        bool(target.get("instant")),
                        panel,
                    )
                )
    return found


# --- Grafana's interpolation (public/app/plugins/datasource/prometheus) -----


def regular_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\\\'")


def special_regex_escape(value: str) -> str:
    value = value.replace("\\", "\\\\\\\\")
    return re.sub(r"[$^*{}\[\]'+?.()|]", lambda m: "\\\\" + m.group(0), value)


def interpolate(value: str, variable: Mapping) -> str:
    if not variable.get("multi") and not variable.get("includeAll"):
        return regular_escape(value)
    return special_regex_escape(value)


_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def substitute(
    expr: str,
    values: Mapping[str, str],
    variables: Mapping[str, Mapping],
    all_selected: Collection[str] = (),
) -> str:
    """Replace $name / ${name}; built-ins ($__rate_interval...) must be in `values`.

    A variable in `all_selected` has "All" selected: Grafana then inserts its
    allValue as it is.
    """

    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name in all_selected:
            return variables[name]["allValue"]
        if name not in values:
            raise KeyError(f"no value for ${name} in {expr!r}")
        if name.startswith("__"):
            return values[name]
        return interpolate(values[name], variables[name])

    return _VARIABLE.sub(replace, expr)


# --- query variables: what Grafana lists -------------------------------------


def query_result_lines(result: list[dict]) -> list[str]:
    """An instant vector as Grafana's query_result() writes it, one line per
    series: `name{label="value",...} value ms` (labels in the API's order)."""
    lines = []
    for series in result:
        labels = dict(series["metric"])
        text = labels.pop("__name__", "")
        text += "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
        stamp, value = series["value"]
        lines.append(f"{text} {value} {int(float(stamp) * 1000)}")
    return lines


def js_regex(regex: str) -> re.Pattern:
    """A variable's `/pattern/flags` regex as Python compiles it (named groups
    spelt `(?P<name>`); fails on flags or syntax the two would read differently."""
    match = re.fullmatch(r"/(.*)/([a-z]*)", regex, re.S)
    assert match, f"not a /regex/: {regex!r}"
    pattern, flags = match.groups()
    assert flags == "", f"flags {flags!r}"
    assert not re.search(r"\\[dDwWsSbB]|\(\?<[=!]|\\k<", pattern), f"not portable: {pattern}"
    return re.compile(pattern.replace("(?<", "(?P<"))


def variable_options(variable: Mapping, lines: list[str]) -> dict[str, str]:
    """{value: text} Grafana offers for `lines` under the variable's regex:
    lines that do not match are dropped; a missing `text` group shows the value."""
    if not variable.get("regex"):
        return {line: line for line in lines}
    pattern = js_regex(variable["regex"])
    options = {}
    for line in lines:
        match = pattern.search(line)
        if not match:
            continue
        groups = match.groupdict()
        if groups.get("value") or groups.get("text"):
            value = groups.get("value") or groups["text"]
            options[value] = groups.get("text") or value
        else:
            value = match.group(1) if match.groups() else match.group(0)
            options[value] = value
    return options


# --- a small PromQL reader ---------------------------------------------------

_STRING = r'"(?:[^"\\]|\\.)*"'
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{((?:[^{}\"]|" + _STRING + r")*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*(" + _STRING + ")")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_LABEL_REPLACE = re.compile(r'label_replace\(.*?,\s*"(\w+)",\s*' + _STRING)


def selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """[(metric, [(label, op, value)])] for every `metric{...}` in expr."""
    found = []
    for match in _SELECTOR.finditer(expr):
        matchers = [(m[1], m[2], json.loads(m[3])) for m in _MATCHER.finditer(match.group(2))]
        found.append((match.group(1), matchers))
    return found


def grouping_labels(expr: str) -> set[str]:
    labels = set()
    for match in _GROUPING.finditer(expr):
        labels |= {label.strip() for label in match.group(1).split(",") if label.strip()}
    return labels


def added_labels(expr: str) -> set[str]:
    """Labels a query creates itself (label_replace destinations)."""
    return set(_LABEL_REPLACE.findall(expr))


def catalogue() -> dict[str, set[str]]:
    """{metric: label names} from the table in docs/metrics.md."""
    metrics = {}
    for line in (ROOT / "docs" / "metrics.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith(("`orb8_", "`process_")):
            labels = {label.strip() for label in cells[2].split(",") if label.strip()}
            metrics[cells[0].strip("`")] = labels
            if cells[1] == "histogram":  # the series a histogram family is made of
                name = cells[0].strip("`")
                metrics[f"{name}_bucket"] = labels | {"le"}
                metrics[f"{name}_sum"] = metrics[f"{name}_count"] = labels
    return metrics
