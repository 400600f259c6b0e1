"""A built wheel is a working orb8: installed into a fresh virtualenv and run
from outside the checkout, `orb8 check` compiles and attaches every probe
from the sources the wheel carries (before this, a wheel had no bpf/*.c and
failed with "probe source not found")."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.kernel

BCC_DIR = Path("/usr/lib/python3/dist-packages/bcc")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("orb8-*.whl")
    return built


def test_wheel_carries_every_probe_source(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for source in sorted((ROOT / "bpf").rglob("*.[ch]")):
        assert f"exporter/bpf/{source.relative_to(ROOT / 'bpf')}" in names


def test_wheel_carries_the_license(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    [license_file] = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    text = zipfile.ZipFile(wheel).read(license_file).decode()
    assert text == (ROOT / "LICENSE").read_text()
    [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
    assert "License-Expression: Apache-2.0" in zipfile.ZipFile(wheel).read(metadata).decode()


def test_installed_wheel_runs_orb8_check_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # The system BCC, linked in the way scripts/setup-host.sh and the image do.
    (site / "bcc").symlink_to(BCC_DIR)
    # Third-party dependencies come from the project environment rather than
    # a 30 s download per run; `pip check` below proves the wheel's declared
    # requirements are met by them. orb8 itself comes only from the wheel.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            str(wheel),
        ],
        check=True,
    )
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin"}
    located = subprocess.run(
        [
            python,
            "-c",
            "import exporter, exporter.kernel.headers as p; print(exporter.__file__);"
            "print(p.default_bpf_dir())",
        ],
        cwd=outside,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert all(Path(path).is_relative_to(site) for path in located), located
    deps = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "check"],
        capture_output=True,
        text=True,
    )
    assert deps.returncode == 0, deps.stdout + deps.stderr
    check = subprocess.run(
        [venv / "bin" / "orb8", "check"], cwd=outside, env=env, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "OK    syscalls" in check.stdout
    assert "OK    network" in check.stdout


def install_wheel(wheel: Path, venv: Path) -> Path:
    """The wheel into `venv` (no pip inside it), third-party dependencies from
    the project environment (as above) but not its link to the system bcc:
    where bcc comes from is what these tests are about. Returns the venv's
    site-packages."""
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    deps = venv.parent / f"{venv.name}-deps"
    deps.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if entry.name != "bcc" and not entry.name.endswith(".pth"):
            (deps / entry.name).symlink_to(entry)
    (site / "deps.pth").write_text(f"{deps}\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", wheel],
        check=True,
    )
    return site


def test_pip_install_with_system_site_packages_sees_the_distribution_bcc(wheel, tmp_path):
    """The documented install outside a checkout (docs/deploying.md#pip-outside-a-checkout):
    a virtualenv made from the distribution's python3 with --system-site-packages
    imports the distribution's bcc, no link needed, and orb8 check passes."""
    venv = tmp_path / "venv"
    subprocess.run(
        ["/usr/bin/python3", "-m", "venv", "--without-pip", "--system-site-packages", str(venv)],
        check=True,
    )
    site = install_wheel(wheel, venv)
    assert not (site / "bcc").exists()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin"}
    found = subprocess.run(
        [venv / "bin" / "python", "-c", "import bcc; print(bcc.__file__)"],
        cwd=outside,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert Path(found).is_relative_to(BCC_DIR.parent), found
    check = subprocess.run(
        [venv / "bin" / "orb8", "check"], cwd=outside, env=env, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "OK    syscalls" in check.stdout


def test_diagnose_without_bcc_says_how_a_virtualenv_gets_it(wheel, tmp_path):
    """A virtualenv that cannot see the distribution's bcc (the usual first
    mistake outside a checkout): orb8 diagnose names --system-site-packages."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    install_wheel(wheel, venv)
    env = {"PATH": f"{venv / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin"}
    diagnose = subprocess.run(
        [venv / "bin" / "orb8", "diagnose"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert diagnose.returncode != 0, diagnose.stdout
    [line] = [line for line in diagnose.stdout.splitlines() if "bcc" in line and "FAIL" in line]
    assert "cannot import bcc" in line, diagnose.stdout
    assert "--system-site-packages" in diagnose.stdout, diagnose.stdout
    assert "python3-bpfcc" in diagnose.stdout, diagnose.stdout
