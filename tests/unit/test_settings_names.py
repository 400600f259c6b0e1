"""Every `settings.<name>` read in the code names a declared setting.

Settings has no field list (each Spec is its whole declaration), so its
attributes are typed Any for mypy and a misspelt name would pass the type
check and fail only when that line runs (maybe only in production, on the
one code path a test does not reach). This reads every attribute access on
something called `settings` in exporter/, benchmarks/ and tests/ and checks
the name against the full settings table.
"""

from __future__ import annotations

import ast

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
