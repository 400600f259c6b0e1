"""One line describing the machine a benchmark ran on (for benchmarks/RESULTS.md)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def describe() -> str:
    model = platform.processor() or platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return (
        f"{model}, {os.cpu_count()} vCPUs, kernel {platform.release()}, "
        f"Python {platform.python_version()}"
    )
