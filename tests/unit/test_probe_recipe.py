"""docs/architecture.md's recipe, followed for a small probe built here: its
package declares settings, metrics and maps; nothing else in orb8 is edited,
and the flags, the OTLP names, docs/metrics.md's rows and the memory budget
all follow from that one declaration."""

from __future__ import annotations

from pathlib import Path

from exporter import catalogue, config, registry
from exporter.kernel.mapmemory import MapDef, map_memory
from exporter.model import IDENTITY_LABELS, MetricFamily, MetricSpec
from exporter.outputs import otlp_names
from exporter.outputs.exposition import TEXT, Renderer
from exporter.sources import Context, Probe
from tests.helpers import ROOT

LOAD = MetricSpec(
    "orb8_toy_load_average",
    "gauge",
    "Load average of the node, by period.",
    ("period",),
    otlp="orb8.toy.load_average",
    unit="{thread}",
    doc="Probe `toy`. The kernel's load average (`/proc/loadavg`), by `period` (1m, 5m, 15m).",
)
READS = MetricSpec(
    "orb8_toy_reads_total",
    "counter",
    "Reads of the load average file.",
    IDENTITY_LABELS,
    otlp="orb8.toy.reads",
    unit="{read}",
)


class ToySource:
    name = "toy"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reads = 0

    def start(self) -> None:
        self.path.stat()

    def collect(self) -> list[MetricFamily]:
        self.reads += 1
        load, reads = LOAD.family(), READS.family()
        for period, value in zip(("1m", "5m", "15m"), self.path.read_text().split(), strict=False):
            load.add((period,), float(value))
        reads.add(("", "", "", "/orb8"), self.reads)
        return [load, reads]

    def close(self) -> None:
        pass

    def summary(self) -> str:
        return f"reads {self.path}"


def create(context: Context) -> ToySource:
    return ToySource(context.settings.toy_path)


TOY = Probe(
    "toy",
    default=False,
    settings=(
        config.Spec("toy_path", config.optional_path, "/proc/loadavg", "file to read", "FILE"),
    ),
    factory=create,
    maps=lambda settings: [MapDef("toy_counts", "array", 4, 8, 16)],
    metrics=(LOAD, READS),
)
PROBES = (*registry.PROBES, TOY)


def toy_settings(flags: dict, environ: dict | None = None) -> config.Settings:
    """The full table with the toy's settings; --probes knows it (the
    registry line the recipe adds would do that)."""
    specs = [
        config.Spec("probes", config.name_list, "syscalls", "probes", "LIST")
        if spec.name == "probes"
        else spec
        for spec in registry.SETTINGS
    ]
    return config.load_settings([*specs, *TOY.settings], flags, environ or {})


def test_settings_come_from_the_declaration(tmp_path):
    settings = toy_settings({"probes": "toy"}, {"ORB8_TOY_PATH": str(tmp_path / "load")})
    assert settings.toy_path == tmp_path / "load"
    assert config.flag_name("toy_path") == "--toy-path"


def test_source_families_carry_their_declared_otlp_instrument(tmp_path):
    (tmp_path / "load").write_text("0.50 0.25 0.10 1/100 42\n")
    settings = toy_settings({"toy_path": str(tmp_path / "load")})
    source = TOY.factory(Context(settings, resolver=None))  # type: ignore[arg-type]
    source.start()
    load, reads = source.collect()
    assert otlp_names.instrument(load.name, load.otlp) == ("orb8.toy.load_average", "{thread}")
    assert otlp_names.instrument(reads.name, reads.otlp) == ("orb8.toy.reads", "{read}")
    text = Renderer().render([load, reads], TEXT)
    assert 'orb8_toy_load_average{period="5m"} 0.25' in text
    assert "# TYPE orb8_toy_reads_total counter" in text


def test_docs_rows_and_otlp_table_are_generated(tmp_path):
    docs = catalogue.render((ROOT / "docs" / "metrics.md").read_text(), PROBES)
    assert "### Probe `toy`" in docs
    assert "| `orb8_toy_load_average` | gauge | period | Probe `toy`. The kernel's load" in docs
    otlp_row = "| `orb8_toy_reads_total` | `orb8.toy.reads` | monotonic sum | `{read}` |"
    assert otlp_row in docs
    assert otlp_names.catalogue_from_docs(docs)["orb8_toy_reads_total"] == (
        "counter",
        IDENTITY_LABELS,
    )
    # Rendering is stable: the generated file is a fixed point.
    assert catalogue.render(docs, PROBES) == docs


def test_a_name_declared_twice_is_refused():
    clash = Probe("clash", False, (), create, metrics=(LOAD,))
    try:
        catalogue.declared_metrics((*PROBES, clash))
    except ValueError as e:
        assert "orb8_toy_load_average declared twice" in str(e)
    else:
        raise AssertionError("a duplicate declaration passed")
    taken = MetricSpec("orb8_syscalls_total", "counter", "x", (), "x", "1")
    try:
        catalogue.declared_metrics((*PROBES, Probe("taken", False, (), create, metrics=(taken,))))
    except ValueError as e:
        assert "orb8_syscalls_total declared twice" in str(e)
    else:
        raise AssertionError("a name of otlp_names' table was declared again")


def test_its_maps_count_in_the_memory_budget():
    settings = toy_settings({"probes": "syscalls,toy"})
    maps = registry.kernel_maps(settings, PROBES)
    assert maps[-1].name == "toy_counts" and any(m.name == "syscall_slots" for m in maps)
    assert map_memory(maps[-1], 2) > 16 * 8


def test_counter_names_are_checked_at_declaration():
    for name, kind in (("orb8_toy_reads", "counter"), ("orb8_toy_total", "gauge")):
        try:
            MetricSpec(name, kind, "x", (), "x", "1")  # type: ignore[arg-type]
        except ValueError as e:
            assert "_total" in str(e)
        else:
            raise AssertionError(f"{kind} {name} was accepted")


def test_a_probe_may_name_its_labels_attributes_itself():
    """`role` means a TCP connection's side in otlp_names' table; a DNS role is
    not that, so the dns probe declares its own key, and only its families use it."""
    from exporter.sources.dns.metrics import QUERIES

    family = QUERIES.family()
    values = ("shop", "web", "app", "", "client", "A")
    attrs = otlp_names.attributes(family.labels, values, family.otlp_attributes)
    assert attrs["orb8.dns.role"] == "client" and "orb8.tcp.role" not in attrs
    assert otlp_names.attributes(("role",), ("client",)) == {"orb8.tcp.role": "client"}
    docs = (ROOT / "docs" / "metrics.md").read_text()
    row = next(line for line in docs.splitlines() if "| `orb8.dns.queries` |" in line)
    assert "orb8.dns.role" in row and "orb8.tcp.role" not in row
