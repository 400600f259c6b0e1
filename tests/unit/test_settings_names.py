"""Every `settings.<name>` read in the code names a declared setting.

Settings has no hand-written field list (each Spec is its whole declaration):
its values are read by name at run time, and its types for mypy come from
exporter/settings_fields.py, generated from the Spec table (`make docs`). So
mypy refuses a misspelt name in exporter/ (checked below on a snippet, and the
generated file must be current); benchmarks/ and tests/, which mypy does not
check, are read here: every attribute access on something called `settings`
is checked against the full settings table.
"""

from __future__ import annotations

import ast
import subprocess
import sys

from exporter.catalogue import SETTINGS_FIELDS, render_settings_fields
from exporter.registry import SETTINGS
from tests.helpers import ROOT

DECLARED = {spec.name for spec in SETTINGS} | {"config_file"}


def settings_reads(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        base = node.value
        name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", None)
        if name == "settings" and not node.attr.startswith("_"):
            found.append((node.lineno, node.attr))
    return found


def specs_declared_in(tree: ast.AST) -> set[str]:
    """Settings a file declares itself (a test's own probe): Spec("name", ...)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("Spec") and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                names.add(first.value)
    return names


def test_the_checker_sees_a_misspelt_setting():
    code = "def f(context):\n    return context.settings.syscall_slot + settings.listen\n"
    assert settings_reads(ast.parse(code)) == [(2, "syscall_slot"), (2, "listen")]


def test_every_setting_read_is_declared():
    unknown = []
    for folder in ("exporter", "benchmarks", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text())
            declared = DECLARED | specs_declared_in(tree)
            for line, name in settings_reads(tree):
                if name not in declared:
                    unknown.append(f"{path.relative_to(ROOT)}:{line}: settings.{name}")
    assert not unknown, "no such setting:\n" + "\n".join(unknown)


def test_the_generated_setting_types_are_current():
    assert SETTINGS_FIELDS.read_text() == render_settings_fields(), "run `make docs`"


def test_mypy_refuses_a_misspelt_setting_and_knows_each_type(tmp_path):
    snippet = tmp_path / "reads_settings.py"
    snippet.write_text(
        "from exporter.config import Settings\n\n\n"
        "def slots(settings: Settings) -> int:\n"
        "    return settings.syscall_slots\n\n\n"
        "def misspelt(settings: Settings) -> int:\n"
        "    return settings.syscall_slot\n\n\n"
        "def wrong_type(settings: Settings) -> int:\n"
        "    return settings.node_name\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--follow-imports=silent", "--no-incremental",
         "--cache-dir", str(tmp_path / "cache"), str(snippet)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 2, result.stdout
    assert ':9: error: "Settings" has no attribute "syscall_slot"' in errors[0]
    assert ":13: error: Incompatible return value type" in errors[1]
