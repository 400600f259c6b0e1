"""cgroup v2 mount discovery, id -> path walks, and the resolver's rules."""

from __future__ import annotations

import os

import pytest

from exporter.identity.cgroupfs import (
    CgroupError,
    CgroupTree,
    find_cgroup2_mount,
    parse_cgroup2_mounts,
    walk_cgroup_ids,
)
from exporter.identity.resolver import Resolver
from exporter.model import UNRESOLVED, Identity

HYBRID = """\
25 30 0:23 / /sys rw,nosuid - sysfs sysfs rw
31 25 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
32 31 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
33 31 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
"""
UNIFIED = "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n"
ESCAPED = "40 1 0:50 / /mnt/my\\040cgroups rw - cgroup2 none rw\n"
NESTED = UNIFIED + "50 29 0:26 /kubepods /host/sys/fs/cgroup/kubepods rw - cgroup2 cgroup2 rw\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (HYBRID, ["/sys/fs/cgroup/unified"]),
        (UNIFIED, ["/sys/fs/cgroup"]),
        (ESCAPED, ["/mnt/my cgroups"]),
        (NESTED, ["/sys/fs/cgroup", "/host/sys/fs/cgroup/kubepods"]),
        ("31 25 0:26 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n", []),
        ("garbage line without separator\n", []),
    ],
)
def test_parse_cgroup2_mounts(text, expected):
    assert [str(p) for p in parse_cgroup2_mounts(text)] == expected


def test_find_mount_prefers_the_host_mount_and_explains_absence(tmp_path):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(NESTED)
    assert str(find_cgroup2_mount(mountinfo)) == "/sys/fs/cgroup"
    mountinfo.write_text("31 25 0:26 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n")
    with pytest.raises(CgroupError, match="no cgroup2 filesystem is mounted"):
        find_cgroup2_mount(mountinfo)
    with pytest.raises(CgroupError, match="cannot read"):
        find_cgroup2_mount(tmp_path / "missing")


def make_tree(root):
    for rel in ("system.slice/sshd.service", "kubepods.slice/a.slice/c.scope", "user.slice"):
        (root / rel).mkdir(parents=True)
    (root / "system.slice" / "cgroup.procs").write_text("")  # files are not cgroups


def test_walk_maps_inode_numbers_to_paths(tmp_path):
    make_tree(tmp_path)
    ids = walk_cgroup_ids(tmp_path)
    expected = {
        "/": tmp_path,
        "/system.slice": tmp_path / "system.slice",
        "/system.slice/sshd.service": tmp_path / "system.slice/sshd.service",
        "/kubepods.slice/a.slice/c.scope": tmp_path / "kubepods.slice/a.slice/c.scope",
        "/user.slice": tmp_path / "user.slice",
    }
    for rel, path in expected.items():
        assert ids[os.stat(path).st_ino] == rel
    assert len(ids) == 7  # the five above plus kubepods.slice and a.slice


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_tree_walks_again_only_for_ids_newer_than_the_last_walk(tmp_path):
    clock = FakeClock()
    tree = CgroupTree(tmp_path, clock=clock)
    tree.rescan()
    assert tree.scans == 1
    new = tmp_path / "new.scope"
    new.mkdir()
    clock.now += 1
    # Seen after the last walk: walk again and find it.
    assert tree.lookup(os.stat(new).st_ino, seen_at=clock.now) == "/new.scope"
    assert tree.scans == 2
    # An id seen before that walk and not found is gone: no further walk.
    assert tree.lookup(123456789, seen_at=clock.now - 1) is None
    assert tree.scans == 2
    # refresh() walks when the table is older than max_age.
    tree.refresh(max_age=5)
    assert tree.scans == 2
    clock.now += 6
    tree.refresh(max_age=5)
    assert tree.scans == 3


def test_resolver_keeps_identity_of_removed_cgroups_and_folds_unknown_ones(tmp_path):
    clock = FakeClock()
    resolver = Resolver(CgroupTree(tmp_path, clock=clock), max_age=5, forget_after=60, clock=clock)
    service = tmp_path / "svc.service"
    service.mkdir()
    service_id = os.stat(service).st_ino
    short = tmp_path / "short.scope"
    short.mkdir()
    short_id = os.stat(short).st_ino
    short.rmdir()  # removed before anyone resolved it

    found = resolver.resolve(service_id, first_seen=clock.now)
    assert found.identity == Identity(cgroup="/svc.service") and not found.gone
    service.rmdir()
    clock.now += 10
    resolver.refresh()
    removed = resolver.resolve(service_id, first_seen=clock.now - 10)
    assert removed.identity == Identity(cgroup="/svc.service") and removed.gone
    folded = resolver.resolve(short_id, first_seen=clock.now - 1)
    assert folded.identity == UNRESOLVED and folded.gone
    # Forgotten once no source has asked for forget_after seconds.
    clock.now += 59
    resolver.refresh()
    assert resolver.known == 1
    clock.now += 2
    resolver.refresh()
    assert resolver.known == 0


def test_non_utf8_cgroup_names_become_escaped_labels(tmp_path):
    import os

    from exporter.identity.cgroupfs import label_name, walk_cgroup_ids

    os.mkdir(os.path.join(os.fsencode(tmp_path), b"x\xff\xfe"))
    os.mkdir(os.path.join(os.fsencode(tmp_path), b"x\xff\xfe", b"child.scope"))
    assert sorted(walk_cgroup_ids(tmp_path).values()) == [
        "/",
        "/x\\xff\\xfe",
        "/x\\xff\\xfe/child.scope",
    ]
    assert label_name("sshd.service") == "sshd.service"
    assert label_name("dev-disk-by\\x2duuid") == "dev-disk-by\\x2duuid"  # systemd escapes stay


def test_own_cgroup_and_who_else_is_in_it(tmp_path):
    import os

    from exporter.identity.cgroupfs import cgroup_pids, own_cgroup
    from exporter.sources.syscalls.source import _foreign_processes

    (tmp_path / "system.slice" / "orb8.service").mkdir(parents=True)
    (tmp_path / "system.slice" / "orb8.service" / "cgroup.procs").write_text("7\n8\n9\n")
    proc_cgroup = tmp_path / "self-cgroup"
    proc_cgroup.write_text("12:cpu:/\n0::/system.slice/orb8.service\n")
    directory = own_cgroup(tmp_path, proc_cgroup)
    assert directory == tmp_path / "system.slice" / "orb8.service"
    assert cgroup_pids(directory) == [7, 8, 9]
    proc = tmp_path / "proc"
    for pid, argv in ((7, [b"/usr/bin/python3", b"-m", b"exporter.cli", b"run"]),
                      (8, [b"/usr/local/bin/orb8", b"check"]),
                      (9, [b"/bin/bash"])):  # fmt: skip
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "cmdline").write_bytes(b"\0".join(argv) + b"\0")
    assert _foreign_processes([7, 8, 9, 10, os.getpid()], proc) == [9]  # 10 has exited
    # "/" inside a cgroup namespace: the mount itself is this process's cgroup.
    proc_cgroup.write_text("0::/\n")
    assert own_cgroup(tmp_path, proc_cgroup) == tmp_path
    # The real hierarchy's root (id 1) is never "own": it would exclude the host.
    from exporter.identity.cgroupfs import find_cgroup2_mount

    assert own_cgroup(find_cgroup2_mount(), proc_cgroup) is None
