"""The fake NVML for tests: build it, point pynvml at it, rewrite capture pids."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.helpers import ROOT, promtool_version

CAPTURE = ROOT / "tests" / "fixtures" / "nvml-h200-two-cgroups.json"
UUID = "GPU-52fa1291-3c93-388b-271d-37fd65c7c5f6"


def build_fake_nvml() -> Path:
    """`make fake-nvml` (the contract other tools use); returns the LD_LIBRARY_PATH dir."""
    subprocess.run(["make", "-s", "fake-nvml"], cwd=ROOT, check=True)
    lib = ROOT / "build" / "fake-nvml"
    assert (lib / "libnvidia-ml.so.1").is_file()
    return lib


def nvml_env(lib: Path, capture: Path, state: str = "busy.0") -> dict[str, str]:
    return {
        "LD_LIBRARY_PATH": str(lib),
        "FAKE_NVML_CAPTURE": str(capture),
        "FAKE_NVML_STATE": state,
    }


def rewrite_capture(path: Path, pids: dict[int, int], edit=None) -> Path:
    """The real capture with its load pids replaced by live ones (and an optional edit)."""
    data = json.loads(CAPTURE.read_text())
    states = [data["idle"], *data["busy"], data["after"]]
    for state in states:
        for device in state["devices"]:
            for key in ("compute_processes", "graphics_processes", "process_utilization"):
                if isinstance(device.get(key), list):
                    for entry in device[key]:
                        entry["pid"] = pids.get(entry["pid"], entry["pid"])
            if edit is not None:
                edit(device)
    path.write_text(json.dumps(data))
    return path


def promtool_check(url: str) -> None:
    """`promtool check metrics` on a live scrape: no errors, no lint warnings."""
    import urllib.request

    text = urllib.request.urlopen(url, timeout=10).read()
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, timeout=60
    )
    output = result.stderr.decode() + result.stdout.decode()
    # Strict on purpose; lints differ between releases, so name the promtool.
    assert result.returncode == 0 and not output.strip(), f"{promtool_version()}:\n{output}"
