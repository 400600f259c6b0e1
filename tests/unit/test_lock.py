"""The dependency locks (scripts/lock.sh, `make lock`): every package pinned
with hashes, both locks satisfy pyproject.toml, the image's lock agrees with
the test lock, and this environment (made by `make setup`) holds exactly
the locked versions."""

from __future__ import annotations

import importlib.metadata
import re

import tomllib
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.helpers import ROOT

RUNTIME, TEST = ROOT / "requirements.lock", ROOT / "requirements-test.lock"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def entries(lock_text: str) -> list[tuple[str, str, str | None, list[str]]]:
    """(name, version, marker, hashes) of each requirement in a hashed lock."""
    found = []
    for block in re.split(r"\n(?=[^\s#])", lock_text):
        if not block.strip() or block.startswith("#"):
            continue
        head = block.split("\\", 1)[0].strip()
        requirement, _, marker = head.partition(";")
        name, version = requirement.strip().split("==")
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", block)
        found.append((canonicalize_name(name), version, marker.strip() or None, hashes))
    return found


def applicable(lock_text: str) -> dict[str, str]:
    """name -> version for this interpreter and platform."""
    return {
        name: version
        for name, version, marker, _ in entries(lock_text)
        if marker is None or Marker(marker).evaluate()
    }


def test_every_package_is_pinned_with_hashes():
    for lock in (RUNTIME, TEST):
        listed = entries(lock.read_text())
        assert len(listed) > 20, lock
        for name, version, _, hashes in listed:
            assert re.fullmatch(r"[\w.!+]+", version), (lock.name, name, version)
            assert hashes, f"{lock.name}: {name} has no hash"


def test_the_entry_parser_sees_a_missing_hash():
    text = "pyyaml==6.0.4 \\\n    --hash=sha256:" + "a" * 64 + "\nnumpy==2.4.6\n"
    assert [(n, h != []) for n, _, _, h in entries(text)] == [("pyyaml", True), ("numpy", False)]


def satisfied(requirements: list[str], locked: dict[str, str]) -> list[str]:
    problems = []
    for line in requirements:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": "test"}):
            continue
        version = locked.get(canonicalize_name(requirement.name))
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{line}: locked {version}")
    return problems


def test_locks_satisfy_pyproject():
    runtime = applicable(RUNTIME.read_text())
    test = applicable(TEST.read_text())
    build = PYPROJECT["build-system"]["requires"]
    dependencies = PYPROJECT["project"]["dependencies"]
    extras = PYPROJECT["project"]["optional-dependencies"]["test"]
    assert satisfied(dependencies + build, runtime) == []
    assert satisfied(dependencies + build + extras, test) == []
    # The image and CI run the same versions of what they share.
    assert {name: test[name] for name in runtime} == runtime


def test_this_environment_is_the_test_lock():
    """What `make setup` installed (scripts/setup-host.sh installs the lock)."""
    installed = {
        canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()
    }
    locked = applicable(TEST.read_text())
    assert {name: installed.get(name) for name in locked} == locked
