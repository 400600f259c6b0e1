"""Containerfile: `podman build -f Containerfile .` needs no build argument
(buildah warns about every ARG without a value), and the image installs the
locked, hashed dependencies."""

from __future__ import annotations

import re

from tests.helpers import ROOT

CONTAINERFILE = (ROOT / "Containerfile").read_text()


def args_without_value(text: str) -> list[str]:
    """ARGs buildah would warn about: no default in their stage, none globally."""
    global_defaults, missing, in_stage = set(), [], False
    for line in text.replace("\\\n", " ").splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0].upper() == "FROM":
            in_stage = True
        elif words[0].upper() == "ARG":
            name, has_default = words[1].split("=", 1)[0], "=" in words[1]
            if not in_stage and has_default:
                global_defaults.add(name)
            elif not has_default and name not in global_defaults:
                missing.append(name)
    return missing


def test_every_build_argument_has_a_default():
    assert args_without_value(CONTAINERFILE) == []
    # What the check catches: the PIP_CERT argument that warned on every build.
    assert args_without_value("FROM x\nARG PIP_CERT\n") == ["PIP_CERT"]
    assert args_without_value("ARG BASE=x\nFROM ${BASE}\nARG BASE\n") == []


def test_the_image_installs_the_lock_with_hashes():
    assert re.search(r"install --require-hashes -r /src/requirements\.lock", CONTAINERFILE)
    assert re.search(r"install --no-deps --no-build-isolation /src\b", CONTAINERFILE)
    assert "COPY requirements.lock" in CONTAINERFILE
