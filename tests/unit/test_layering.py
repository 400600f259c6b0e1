"""Dependencies point one way (docs/architecture.md, exporter/registry.py):
cli/agent -> registry -> sources, outputs -> config; no import cycles.

Read from the source text (every import, also those inside functions, but
not those under `if TYPE_CHECKING:`), so a lazy import cannot hide a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT

PACKAGE = ROOT / "exporter"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only |= {id(child) for child in ast.walk(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # "from exporter import kernel" imports the module exporter.kernel
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.startswith("exporter")}


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py") if "bpf" not in p.parts}
    return {name: imports(path) & set(modules) for name, path in modules.items()}


def test_config_imports_no_source_no_output_and_not_the_registry():
    for name, deps in graph().items():
        if name == "exporter.config":
            bad = {d for d in deps if d.startswith(("exporter.sources", "exporter.outputs"))}
            assert not bad and "exporter.registry" not in deps, bad


def test_outputs_import_no_config_and_no_source():
    for name, deps in graph().items():
        if name.startswith("exporter.outputs"):
            bad = {
                d
                for d in deps
                if d in ("exporter.config", "exporter.registry", "exporter.agent")
                or d.startswith("exporter.sources")
            }
            assert not bad, (name, bad)


def test_sources_import_neither_the_registry_nor_the_agent_nor_outputs():
    for name, deps in graph().items():
        if name.startswith("exporter.sources"):
            bad = {
                d
                for d in deps
                if d in ("exporter.registry", "exporter.agent", "exporter.cli")
                or d.startswith("exporter.outputs")
            }
            assert not bad, (name, bad)


def test_top_is_a_client_of_metrics_and_imports_nothing_of_the_agent():
    """orb8 top reads /metrics like Prometheus does: the agent, its sources,
    outputs and settings stay out of it (and so do their heavy imports)."""
    for name, deps in graph().items():
        if name.startswith("exporter.top"):
            bad = {d for d in deps if not d.startswith("exporter.top") and d != "exporter"}
            assert not bad, (name, bad)


def test_no_bcc_libbcc_or_ctypes_outside_the_kernel_layer():
    """BCC, libbcc and ctypes for BPF live in exporter/kernel/ only (memory.py's
    ctypes call is glibc's malloc_trim, not BPF)."""
    for path in PACKAGE.rglob("*.py"):
        if module_name(path).startswith("exporter.kernel"):
            continue
        text = path.read_text()
        assert "libbcc" not in text and "import bcc" not in text and "from bcc" not in text, path
        if module_name(path) != "exporter.memory":
            assert "import ctypes" not in text, path


def test_the_kernel_layer_imports_nothing_above_it():
    """exporter/kernel/ is the bottom layer: it may use config's types, never a
    source, an output, the registry or the agent."""
    for name, deps in graph().items():
        if name.startswith("exporter.kernel"):
            bad = {d for d in deps if not d.startswith("exporter.kernel") and d != "exporter"}
            assert not bad, (name, bad)


def test_no_import_cycle():
    deps = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(deps[name]):
            if state.get(dep) == 1:
                cycle = [*path[path.index(dep) :], dep] if dep in path else [name, dep]
                raise AssertionError(" -> ".join(cycle))
            if dep not in state:
                visit(dep, [*path, dep])
        state[name] = 2

    for name in sorted(deps):
        if name not in state:
            visit(name, [name])


def test_every_probe_package_is_registered_once_with_its_own_settings():
    import importlib

    from exporter import registry

    packages = sorted(
        p.parent.name for p in (PACKAGE / "sources").glob("*/__init__.py") if p.parent.is_dir()
    )
    declared = [importlib.import_module(f"exporter.sources.{name}").PROBE for name in packages]
    assert sorted(probe.name for probe in registry.PROBES) == sorted(p.name for p in declared)
    names = [spec.name for spec in registry.SETTINGS]
    assert len(names) == len(set(names))  # no setting declared twice
    for probe in registry.PROBES:
        assert {spec.name for spec in probe.settings} <= set(names)
    assert registry.DEFAULT_PROBES == ("syscalls", "network", "gpu")
