"""A broken state directory: reported once per episode, no leaked files, start-up goes on.

Real files on real filesystems: a full disk and a read-only filesystem are small tmpfs
mounts made for the test (root), unmounted after it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.sources.syscalls.baseline import MAX_STATE_BYTES, Baselines


def _saves(baselines: Baselines, n: int) -> None:
    for i in range(n):
        baselines.observe("cgroup:/svc", f"call{i}")  # something to save every time
        baselines.save()


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@contextlib.contextmanager
def tmpfs(tmp_path: Path, *options: str) -> Iterator[Path]:
    mountpoint = tmp_path / f"tmpfs-{uuid.uuid4().hex[:8]}"
    mountpoint.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(("size=256k", *options)), "tmpfs", mountpoint],
        check=True,
    )
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", mountpoint], check=True)


@pytest.mark.parametrize(
    "content",
    [bytes(range(256)), b"\xff\xfe\x00garbage", b"[1, 2]", b'{"version": 1}', b"null"],
    ids=["binary", "not-utf8", "list", "no-workloads", "null"],
)
def test_an_unreadable_baselines_file_means_learning_afresh(tmp_path, caplog, content):
    (tmp_path / "baselines.json").write_bytes(content)
    with caplog.at_level(logging.WARNING):
        baselines = Baselines(window=10, state_dir=tmp_path)
    assert baselines.workloads == {}
    (warning,) = _warnings(caplog)
    assert "learning from scratch" in warning and "\n" not in warning
    assert not baselines.observe("cgroup:/svc", "read"), "learning"


def test_baselines_path_is_a_directory_warns_once_and_leaks_nothing(tmp_path, caplog):
    (tmp_path / "baselines.json").mkdir()
    with caplog.at_level(logging.INFO):
        baselines = Baselines(window=10, state_dir=tmp_path)  # unreadable: one warning
        caplog.clear()
        _saves(baselines, 8)
    assert len(_warnings(caplog)) == 1, _warnings(caplog)
    assert "cannot save baselines" in _warnings(caplog)[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["baselines.json"]
    # The episode ends when a save works again; that is said once too.
    (tmp_path / "baselines.json").rmdir()
    with caplog.at_level(logging.INFO):
        _saves(baselines, 2)
    assert sum("saved to" in m for m in caplog.messages) == 1
    assert json.loads((tmp_path / "baselines.json").read_text())["version"] == 1


def test_full_disk_warns_once_per_episode_and_leaks_no_temp_file(tmp_path, caplog):
    with tmpfs(tmp_path) as state:
        filler = state / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as f:
            f.write(b"\0" * (512 * 1024))  # more than the 256 KiB there is
        baselines = Baselines(window=1e6, state_dir=state)
        for i in range(1000):  # a baseline bigger than the (no) space left
            baselines.observe(f"cgroup:/svc{i}", "read")
        with caplog.at_level(logging.INFO):
            _saves(baselines, 6)
        assert len(_warnings(caplog)) == 1 and "No space left" in _warnings(caplog)[0]
        assert sorted(p.name for p in state.iterdir()) == ["filler"]
        filler.unlink()
        _saves(baselines, 1)
        assert (state / "baselines.json").exists()


def test_read_only_state_dir_warns_once(tmp_path, caplog):
    with tmpfs(tmp_path, "ro") as state:
        baselines = Baselines(window=10, state_dir=state)
        with caplog.at_level(logging.INFO):
            _saves(baselines, 6)
        assert len(_warnings(caplog)) == 1 and "Read-only" in _warnings(caplog)[0]
        assert list(state.iterdir()) == []


def _dev_zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _oversized(path: Path) -> None:
    with path.open("wb") as f:  # sparse: no disk used
        f.truncate(MAX_STATE_BYTES + 1)


def _symlink_out(path: Path) -> None:
    # A valid baselines file outside the state dir: still not followed.
    outside = path.parent.parent / f"elsewhere-{uuid.uuid4().hex[:8]}.json"
    outside.write_text(json.dumps({"version": 1, "workloads": {}}))
    path.symlink_to(outside)


@pytest.mark.parametrize(
    "make",
    [_dev_zero, _fifo, _oversized, _symlink_out, Path.mkdir],
    ids=["symlink-to-dev-zero", "fifo", "oversized", "symlink-out", "directory"],
)
def test_a_baselines_path_that_is_not_a_small_regular_file_means_learning_afresh(
    tmp_path, caplog, make
):
    state = tmp_path / "state"
    state.mkdir()
    make(state / "baselines.json")
    with caplog.at_level(logging.WARNING):
        baselines = Baselines(window=10, state_dir=state)  # neither hangs nor raises
    assert baselines.workloads == {}
    (warning,) = _warnings(caplog)
    assert "learning from scratch" in warning and "\n" not in warning
    if make is _oversized:
        assert f"more than {MAX_STATE_BYTES}" in warning, "refused unread, by its size"


def test_a_fifo_state_file_does_not_hold_up_start_up(tmp_path, start_exporter):
    """Before: start-up blocked reading the FIFO and /healthz never answered."""
    os.mkfifo(tmp_path / "baselines.json")
    exporter = start_exporter("--probes", "syscalls", "--state-dir", str(tmp_path))
    health = exporter.url.replace("/metrics", "/healthz")
    with urllib.request.urlopen(health, timeout=10) as response:
        assert response.status == 200
    assert exporter.output().count("cannot read baselines") == 1
