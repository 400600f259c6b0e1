"""Release basics agree with each other: one version (exporter/__init__.py)
in the semver form the `vMAJOR.MINOR.PATCH` tags use, a changelog section for
it, the manifests' image tag, an Apache-2.0 LICENSE that pyproject declares
and ships, and a security policy that says how to report."""

from __future__ import annotations

import re
import subprocess

import tomllib
import yaml

from exporter import __version__
from tests.helpers import ROOT

SEMVER = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)")


def test_version_is_semver_and_a_tag_on_this_commit_names_it():
    assert SEMVER.fullmatch(__version__), __version__
    tags = subprocess.run(
        ["git", "tag", "--points-at", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    releases = [tag for tag in tags if tag.startswith("v")]
    assert releases in ([], [f"v{__version__}"]), releases


def test_changelog_has_a_section_for_the_version():
    text = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## \[{re.escape(__version__)}\]", text, re.M), __version__
    link = f"[{__version__}]: https://github.com/orb8/orb8/releases/tag/v{__version__}"
    assert link in text


def test_manifests_deploy_the_version():
    base = yaml.safe_load((ROOT / "deploy" / "base" / "kustomization.yaml").read_text())
    assert [image["newTag"] for image in base["images"]] == [__version__]


def test_license_is_apache_2_and_declared_for_the_wheel():
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:3] == ["Apache", "License", "Version"]
    assert "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]


def test_security_policy_says_how_to_report():
    text = (ROOT / "SECURITY.md").read_text()
    assert "## Reporting a vulnerability" in text
    assert "security/advisories/new" in text
    assert "Do not open a\n  public issue" in text
