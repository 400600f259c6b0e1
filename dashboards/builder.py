"""The small layer between a dashboard's panel list and Grafana's own SDK.

A dashboard module (network.py, security.py, health.py, ...) describes its
panels as plain data: `Panel(kind, title, description, unit, queries)`.
This module turns that into Grafana JSON through `grafana-foundation-sdk`
(the typed builders Grafana publishes), and adds what every orb8 dashboard
shares, the way kubernetes-mixin and node-mixin do:

- a `datasource` variable: every panel and variable references
  `${datasource}`, never a fixed data source;
- `cluster`, `job`, `instance` (the node) and, where the dashboard is per
  workload, `namespace` and `pod` variables, chained so that each lists only
  the values of the ones before it; queries select with `SELECTOR` /
  `TARGET_SELECTOR` and never name a job or instance themselves;
- rates over `$__rate_interval`, a unit on every panel, a description on
  every panel, stable uids.

The queries therefore live in the dashboard modules, readable as data by
tests (`DashboardSpec.panels()`), and the JSON in this directory is only ever
written by `python -m dashboards`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from grafana_foundation_sdk.builders import (
    bargauge,
    piechart,
    stat,
    statetimeline,
    table,
    timeseries,
)
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.cog import plugins
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import piechart as piechart_model
from grafana_foundation_sdk.models import prometheus as prom_model

DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")

# The label selectors every query starts from. `cluster` is matched exactly:
# on a single-cluster Prometheus the variable is empty and `cluster=""`
# matches series without the label (the kubernetes-mixin convention).
TARGET_SELECTOR = 'cluster="$cluster", job=~"$job", instance=~"$instance"'
SELECTOR = TARGET_SELECTOR + ', namespace=~"$namespace", pod=~"$pod"'

# Variable values come from these series: orb8_build_info exists on every
# orb8 target, orb8_syscalls_total carries every workload's identity.
TARGET_METRIC = "orb8_build_info"
WORKLOAD_METRIC = "orb8_syscalls_total"

PANEL_KINDS = ("timeseries", "bargauge", "table", "piechart", "stat", "state-timeline")
# Panels show an instant value (the current one) instead of a time series.
INSTANT_KINDS = ("bargauge", "table", "piechart", "stat")
REFS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Link:
    """A data link on a table column: `url` may use ${__data.fields.<column>}."""

    column: str
    title: str
    url: str


@dataclass(frozen=True)
class Panel:
    kind: str
    title: str
    description: str
    unit: str
    queries: tuple[Query, ...]
    width: int = 12
    height: int = 8
    # Value -> text for state panels, e.g. {"1": "up", "0": "down"}.
    mappings: tuple[tuple[str, str, str], ...] = ()
    links: tuple[Link, ...] = ()
    # Fill ratio or similar where a line on the chart means "act now".
    max_value: float | None = None
    threshold: float | None = None
    stacked: bool = False

    def __post_init__(self) -> None:
        if self.kind not in PANEL_KINDS:
            raise ValueError(f"panel {self.title!r}: unknown kind {self.kind!r}")
        if not self.queries:
            raise ValueError(f"panel {self.title!r} has no query")


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Variable:
    """A further multi-select variable, listing `label` of `metric` under the
    common selectors (e.g. the GPU dashboard's `gpu` from a GPU metric's uuid)."""

    name: str
    title: str
    metric: str
    label: str


@dataclass(frozen=True)
class DashboardSpec:
    uid: str
    title: str
    description: str
    file: str
    rows: tuple[Row, ...]
    # Whether the dashboard is per workload (namespace and pod variables).
    workloads: bool = True
    # Selected with `<label>=~"$<name>"` in the dashboard's own queries.
    extra_variables: tuple[Variable, ...] = ()
    tags: tuple[str, ...] = field(default=("orb8",))

    def panels(self) -> list[Panel]:
        return [panel for row in self.rows for panel in row.panels]


# The Node variable's value stays `instance` (what every query selects on and
# every alert carries), but it shows the `node` label where the scrape adds
# one (the ServiceMonitor and deploy/examples/prometheus.yml relabel
# __meta_kubernetes_pod_node_name to `node`): IP:port means nothing to a
# reader. label_values() can list one label only, so the variable reads
# query_result(), whose lines Grafana writes as
# `orb8_build_info{instance="10.0.0.7:9826",job="orb8",node="n1"} 1 <ms>`
# (labels in Prometheus' sorted order: instance before node), and a regex with
# named groups picks value and text; without a node label the text falls back
# to the value (Grafana's rule for a missing `text` group).
NODE_QUERY = f'query_result({TARGET_METRIC}{{cluster="$cluster", job=~"$job"}})'
NODE_REGEX = r'/[{,]instance="(?<value>[^"]+)"(?:.*[{,]node="(?<text>[^"]+)")?/'


def _query_variable(
    name: str, label: str, query: str, *, multi: bool, regex: str = ""
) -> dash.QueryVariable:
    variable = (
        dash.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
    )
    if regex:
        variable = variable.regex(regex)
    if multi:
        # allValue ".*": "All" also keeps series whose label is empty, such
        # as the non-pod cgroups (namespace="" pod="") on the security view.
        variable = variable.multi(True).include_all(True).all_value(".*")
    return variable


def variables(spec: DashboardSpec) -> list[Any]:
    found = [
        dash.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        # Shown, so that a Prometheus (or Thanos/Mimir) holding several
        # clusters can switch between them; on one cluster it lists nothing
        # and `cluster=""` matches series without the label.
        _query_variable(
            "cluster", "Cluster", f"label_values({TARGET_METRIC}, cluster)", multi=False
        ),
        _query_variable(
            "job", "Job", f'label_values({TARGET_METRIC}{{cluster="$cluster"}}, job)', multi=False
        ),
        _query_variable("instance", "Node", NODE_QUERY, multi=True, regex=NODE_REGEX),
    ]
    if spec.workloads:
        found += [
            _query_variable(
                "namespace",
                "Namespace",
                f"label_values({WORKLOAD_METRIC}{{{TARGET_SELECTOR}}}, namespace)",
                multi=True,
            ),
            _query_variable(
                "pod",
                "Pod",
                f'label_values({WORKLOAD_METRIC}{{{TARGET_SELECTOR}, namespace=~"$namespace"}},'
                " pod)",
                multi=True,
            ),
        ]
    selector = SELECTOR if spec.workloads else TARGET_SELECTOR
    for extra in spec.extra_variables:
        query = f"label_values({extra.metric}{{{selector}}}, {extra.label})"
        found.append(_query_variable(extra.name, extra.title, query, multi=True))
    return found


def _target(query: Query, ref: str, instant: bool, table_format: bool) -> prom.Dataquery:
    target = prom.Dataquery().expr(query.expr).ref_id(ref).datasource(DATASOURCE)
    if query.legend and not table_format:
        target = target.legend_format(query.legend)
    target = target.instant() if instant else target.range()
    if table_format:
        target = target.format(prom_model.PromQueryFormat.TABLE)
    return target


def _legend() -> common_builders.VizLegendOptions:
    return (
        common_builders.VizLegendOptions()
        .display_mode(common.LegendDisplayMode.TABLE)
        .placement(common.LegendPlacement.BOTTOM)
        .show_legend(True)
        .calcs(["mean", "max", "lastNotNull"])
    )


def _reduce_last() -> common_builders.ReduceDataOptions:
    return common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False)


def _mappings(panel: Panel) -> list[Any]:
    if not panel.mappings:
        return []
    options = {
        value: model.ValueMappingResult(text=text, color=color, index=i)
        for i, (value, text, color) in enumerate(panel.mappings)
    }
    return [model.ValueMap(options=options)]


def _thresholds(panel: Panel) -> dash.ThresholdsConfig:
    steps = [model.Threshold(value=None, color="green")]
    if panel.threshold is not None:
        steps.append(model.Threshold(value=panel.threshold, color="red"))
    return dash.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE).steps(steps)


def build_panel(panel: Panel) -> Any:
    kind = panel.kind
    instant = kind in INSTANT_KINDS
    builder: Any
    if kind == "timeseries":
        builder = timeseries.Panel().legend(_legend()).fill_opacity(10).line_width(1)
        builder = builder.tooltip(
            common_builders.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
        if panel.stacked:
            builder = builder.stacking(
                common_builders.StackingConfig().mode(common.StackingMode.NORMAL)
            )
        if panel.threshold is not None:
            builder = builder.thresholds_style(
                common_builders.GraphThresholdsStyleConfig().mode(
                    common.GraphThresholdsStyleMode.LINE
                )
            )
    elif kind == "bargauge":
        builder = (
            bargauge.Panel()
            .display_mode(common.BarGaugeDisplayMode.GRADIENT)
            .orientation(common.VizOrientation.HORIZONTAL)
            .reduce_options(_reduce_last())
        )
    elif kind == "table":
        # A table's value columns are named after their query's legend
        # ("Value" for one query, "Value #A", "Value #B" for several).
        values = (
            {"Value": panel.queries[0].legend}
            if len(panel.queries) == 1
            else {f"Value #{REFS[i]}": q.legend for i, q in enumerate(panel.queries)}
        )
        builder = table.Panel()
        if len(panel.queries) > 1:
            builder = builder.with_transformation(
                model.DataTransformerConfig(id_val="merge", options={})
            )
        builder = builder.with_transformation(
            model.DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": {"Time": True},
                    "renameByName": {k: v for k, v in values.items() if v},
                },
            )
        )
        for link in panel.links:
            builder = builder.override_by_name(
                link.column,
                [
                    model.DynamicConfigValue(
                        id_val="links", value=[{"title": link.title, "url": link.url}]
                    )
                ],
            )
    elif kind == "piechart":
        builder = (
            piechart.Panel()
            .pie_type(piechart_model.PieChartType.DONUT)
            .reduce_options(_reduce_last())
            .legend(
                piechart.PieChartLegendOptions()
                .display_mode(common.LegendDisplayMode.TABLE)
                .placement(common.LegendPlacement.RIGHT)
                .show_legend(True)
                .values([piechart_model.PieChartLegendValues.PERCENT])
            )
        )
    elif kind == "stat":
        builder = (
            stat.Panel()
            .reduce_options(_reduce_last())
            .color_mode(common.BigValueColorMode.BACKGROUND)
            .graph_mode(common.BigValueGraphMode.NONE)
        )
    else:  # state-timeline
        builder = statetimeline.Panel().row_height(0.8).merge_values(True)
    builder = (
        builder.title(panel.title)
        .description(panel.description)
        .datasource(DATASOURCE)
        .unit(panel.unit)
        .span(panel.width)
        .height(panel.height)
        .thresholds(_thresholds(panel))
    )
    if panel.max_value is not None:
        builder = builder.min(0).max(panel.max_value)
    if panel.mappings:
        builder = builder.mappings(_mappings(panel))
    targets = [
        _target(query, REFS[i], instant, kind == "table") for i, query in enumerate(panel.queries)
    ]
    return builder.targets(targets)


def build(spec: DashboardSpec) -> dict[str, Any]:
    """The dashboard as the JSON object Grafana imports."""
    builder = (
        dash.Dashboard(spec.title)
        .uid(spec.uid)
        .description(spec.description)
        .tags(list(spec.tags))
        .editable()
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("utc")
        .variables(variables(spec))
    )
    for row in spec.rows:
        builder = builder.with_row(dash.Row(row.title))
        for panel in row.panels:
            builder = builder.with_panel(build_panel(panel))
    built = builder.build()
    # Panel ids: stable, in layout order (Grafana needs them unique per dashboard).
    for number, grafana_panel in enumerate(built.panels or [], start=1):
        grafana_panel.id_val = number
    return canonical(json.loads(json.dumps(built, cls=JSONEncoder)))


def canonical(data: dict[str, Any]) -> dict[str, Any]:
    """The JSON decoded into the SDK's typed models and encoded again.

    Panel options and field config are decoded by panel type (the SDK's
    plugin registry), which fills in the defaults Grafana would; a committed
    file must come back unchanged (tests/unit/test_dashboards.py).
    """
    plugins.register_default_plugins()
    return json.loads(json.dumps(model.Dashboard.from_json(data), cls=JSONEncoder))


def render(spec: DashboardSpec) -> str:
    """The file content: sorted keys and a trailing newline, so diffs stay small."""
    return json.dumps(build(spec), indent=2, sort_keys=True) + "\n"


def rate(metric: str, selector: str = SELECTOR, extra: str = "") -> str:
    """`rate(metric{selector}[$__rate_interval])`, the only window panels use."""
    matchers = selector + (", " + extra if extra else "")
    return f"rate({metric}{{{matchers}}}[$__rate_interval])"


def select(metric: str, selector: str = SELECTOR, extra: str = "") -> str:
    matchers = selector + (", " + extra if extra else "")
    return f"{metric}{{{matchers}}}"
