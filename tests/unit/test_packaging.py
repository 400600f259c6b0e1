"""pyproject.toml spells out the package list (bpf/ is mapped onto
exporter.bpf); a new subpackage missing from it would silently be left out
of the wheel."""

from __future__ import annotations

import tomllib

from tests.helpers import ROOT


def test_every_python_package_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "exporter").rglob("__init__.py")
    }
    listed = set(config["packages"])
    assert on_disk <= listed
    assert config["package-dir"] == {"exporter.bpf": "bpf"}
    assert listed - on_disk == {"exporter.bpf", "exporter.bpf.include"}
