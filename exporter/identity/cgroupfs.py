"""The cgroup v2 filesystem: find its mount, map cgroup ids to paths.

A cgroup v2 id, as returned by bpf_get_current_cgroup_id(), is the inode
number of the cgroup's directory. Walking the tree with scandir reads those
inode numbers from directory entries without a stat() per cgroup, so a full
walk of a busy node (thousands of cgroups) takes milliseconds.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

MOUNTINFO = Path("/proc/self/mountinfo")


class CgroupError(RuntimeError):
    pass


def _unescape_mount_path(path: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def parse_cgroup2_mounts(mountinfo_text: str) -> list[Path]:
    """Mount points of cgroup2 filesystems, in mountinfo order."""
    mounts = []
    for line in mountinfo_text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        fstype = right.split()[0] if right.split() else ""
        if fstype == "cgroup2" and len(fields) >= 5:
            mounts.append(Path(_unescape_mount_path(fields[4])))
    return mounts


def find_cgroup2_mount(mountinfo: Path = MOUNTINFO) -> Path:
    """The cgroup v2 mount point, found in mountinfo; never hard-coded."""
    try:
        text = mountinfo.read_text()
    except OSError as e:
        raise CgroupError(f"cannot read {mountinfo}: {e.strerror}") from None
    mounts = parse_cgroup2_mounts(text)
    if not mounts:
        raise CgroupError(
            "no cgroup2 filesystem is mounted; orb8 needs cgroup v2 (unified or hybrid "
            "layout), e.g. mount -t cgroup2 none /sys/fs/cgroup/unified"
        )
    # The shortest path is the host's own mount when containers add more.
    return min(mounts, key=lambda p: len(p.parts))


def label_name(name: str) -> str:
    """A cgroup directory name as a label: bytes that are not UTF-8 become \\xHH.

    cgroupfs names are bytes; os.scandir hands undecodable ones over as lone
    surrogates, which no exposition can encode (one such cgroup used to fail
    every scrape). Valid names are returned unchanged.
    """
    try:
        name.encode()
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def walk_cgroup_ids(root: Path) -> dict[int, str]:
    """Every cgroup under root: {cgroup id: path relative to root, starting with /}.

    Paths are labels: undecodable bytes are escaped (label_name)."""
    ids = {os.stat(root).st_ino: "/"}
    stack = [(str(root), "")]
    while stack:
        directory, rel = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue  # removed while walking
        for entry in entries:
            try:
                if not entry.is_dir(follow_symlinks=False):
                    continue
                child = f"{rel}/{label_name(entry.name)}"
                ids[entry.inode()] = child
            except OSError:
                continue
            stack.append((entry.path, child))
    return ids


class CgroupTree:
    """cgroup id -> path, from walks of the v2 mount.

    The table always mirrors the last walk, so it is bounded by the number of
    cgroups that exist. A lookup of an id that is not in the table walks
    again, but only if the last walk started before the id was first seen:
    a cgroup seen before a walk began and missing from it has been removed.
    So one collect walks at most once, however many new ids it meets.

    A walk reads the filesystem (47 ms for 3,000 cgroups) and then installs
    its result: the Resolver walks (walk()) without holding its own lock and
    installs (install()) under it, so nobody waits on the filesystem but the
    caller that needed the walk. `scans` counts walks, for tests and metrics.
    """

    def __init__(self, root: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.root = root
        self.clock = clock
        self.paths: dict[int, str] = {}
        self.scanned_at = float("-inf")
        self.scans = 0
        self.last_walk_seconds = 0.0

    def walk(self) -> tuple[dict[int, str], float]:
        """(every cgroup now, when the walk started); changes nothing here."""
        started = self.clock()
        began = time.perf_counter()
        paths = walk_cgroup_ids(self.root)
        self.last_walk_seconds = time.perf_counter() - began
        return paths, started

    def install(self, paths: dict[int, str], started: float) -> None:
        """Make a walk's result the table, unless a later walk already is."""
        self.scans += 1
        if started >= self.scanned_at:
            self.paths = paths
            self.scanned_at = started
        log.debug("walked %s: %d cgroups", self.root, len(paths))

    def rescan(self) -> None:
        self.install(*self.walk())

    def refresh(self, max_age: float) -> None:
        """Walk again if the table is older than max_age: this is how removals are seen."""
        if self.stale(max_age):
            self.rescan()

    def stale(self, max_age: float) -> bool:
        return self.clock() - self.scanned_at > max_age

    def needs_walk(self, cgroup_id: int, seen_at: float) -> bool:
        """True if only a new walk can tell whether this id (existing at `seen_at`) exists."""
        return cgroup_id not in self.paths and self.scanned_at < seen_at

    def lookup(self, cgroup_id: int, seen_at: float) -> str | None:
        """Path of a cgroup id that was known to exist at `seen_at`, or None if gone."""
        if self.needs_walk(cgroup_id, seen_at):
            self.rescan()
        return self.paths.get(cgroup_id)


ROOT_CGROUP_ID = 1  # the v2 hierarchy's root directory, whatever namespace looks at it


def own_cgroup(root: Path, proc_cgroup: Path = Path("/proc/self/cgroup")) -> Path | None:
    """This process's cgroup v2 directory, or None in the root cgroup (or if unknown).

    The path in /proc/self/cgroup is relative to the cgroup namespace's root,
    which is also what the v2 mount shows inside that namespace, so
    mount + path is the right directory either way (and its inode number,
    global, is the real cgroup id).
    """
    try:
        for line in proc_cgroup.read_text().splitlines():
            if line.startswith("0::"):
                directory = root / line[3:].lstrip("/")
                return None if os.stat(directory).st_ino == ROOT_CGROUP_ID else directory
    except OSError:
        return None
    return None


def cgroup_pids(directory: Path) -> list[int]:
    try:
        return [int(pid) for pid in (directory / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []
