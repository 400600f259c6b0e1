"""pid -> cgroup v2 path -> cgroup id, read from /proc (host PID namespace).

NVML reports host pids, so orb8 needs hostPID: in its own PID namespace the
pids would name other processes or none. A process that exited between the
NVML read and this one simply has no cgroup (None).
"""

from __future__ import annotations

import os
from pathlib import Path


def parse_cgroup_v2_path(text: str) -> str | None:
    """The cgroup v2 path from a /proc/<pid>/cgroup text ("0::/a/b"), or None."""
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, sep, path = rest.partition(":")
        if hierarchy == "0" and sep and controllers == "" and path.startswith("/"):
            return path
    return None


def cgroup_of_pid(pid: int, proc_root: Path, cgroup_root: Path) -> tuple[int, str] | None:
    """(cgroup id, path) of a live pid, or None if it is gone or not in cgroup v2."""
    try:
        text = (proc_root / str(int(pid)) / "cgroup").read_text()
    except (OSError, ValueError):
        return None
    path = parse_cgroup_v2_path(text)
    if path is None:
        return None
    # " (deleted)" marks a cgroup removed under a still-running process.
    if path.endswith(" (deleted)"):
        return None
    try:
        cgroup_id = os.stat(cgroup_root / path.lstrip("/")).st_ino
    except OSError:
        return None
    return cgroup_id, path
