"""What reading the pod watch costs: kubernetes' Watch behind orb8's line bound, against
the splitter orb8 had before and against Watch's typed (V1Pod) path, in the same run.

1. CPU per event for a stream of realistic pod events (one HTTP chunk per event, as an
   API server flushes them), through
   - `hand`: the line splitter orb8 carried before (copied below as the baseline) + json.loads,
   - `watch`: kubernetes.watch.Watch().stream with no model type, behind
     exporter.identity.kubernetes._BoundedResponse (what orb8 runs now),
   - `typed`: the same Watch with V1Pod models (what Watch does for
     list_pod_for_all_namespaces by default).
2. One hostile line (a pod whose annotation makes its event `--long-mib` long) arriving in
   small chunks: time and peak Python memory (tracemalloc) of `hand` and `watch`, and a line
   twice the bound: `watch` stops at the bound, Watch alone (`unbounded`) buffers all of it.

Appends a report to RESULTS.md. Usage: .venv/bin/python benchmarks/k8s_watch.py
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from kubernetes.watch import Watch  # noqa: E402

from exporter.identity.kubernetes import (  # noqa: E402
    MAX_WATCH_LINE,
    WatchFailure,
    _BoundedResponse,
    parse_pod,
)
from tests.k8s_apiserver import make_pod  # noqa: E402


class _Chunks:
    """A response as urllib3 hands it over: the body in given chunks."""

    status = 200
    connection = None

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def stream(self, amt: int | None = None, decode_content: bool | None = None) -> Iterator[bytes]:
        yield from self.chunks

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


def hand_lines(response: Any, limit: int = MAX_WATCH_LINE) -> Iterator[bytes]:
    """orb8's former splitter (exporter/identity/kubernetes.py `_lines`, before the move
    onto Watch), kept here only as the baseline."""
    pending: list[bytes] = []
    size = 0
    for chunk in response.stream(amt=None, decode_content=False):
        *complete, rest = chunk.split(b"\n")
        if complete:
            complete[0] = b"".join([*pending, complete[0]])
            pending, size = [], 0
        for line in complete:
            if len(line) > limit:
                raise WatchFailure("bad_response", "too long")
            if line.strip():
                yield line
        pending.append(rest)
        size += len(rest)
        if size > limit:
            raise WatchFailure("bad_response", "too long")
    last = b"".join(pending)
    if last.strip():
        yield last


def read_hand(chunks: list[bytes]) -> int:
    n = 0
    for line in hand_lines(_Chunks(chunks)):
        parse_pod(json.loads(line)["object"])
        n += 1
    return n


def read_watch(chunks: list[bytes], limit: int = MAX_WATCH_LINE, bound: bool = True) -> int:
    def request(**kwargs: Any) -> Any:
        return _BoundedResponse(_Chunks(chunks), limit) if bound else _Chunks(chunks)

    n = 0
    for event in Watch().stream(request, timeout_seconds=1):
        parse_pod(event["object"])
        n += 1
    return n


def read_typed(chunks: list[bytes]) -> int:
    n = 0
    for event in Watch(return_type="V1Pod").stream(lambda **_: _Chunks(chunks), timeout_seconds=1):
        assert event["object"].metadata.uid
        n += 1
    return n


def events(count: int) -> list[bytes]:
    chunks = []
    for i in range(count):
        pod = make_pod(f"pod-{i}", uid=f"u-{i}", containers=(("app", f"{i:064x}"), ("side", None)))
        pod["metadata"]["resourceVersion"] = str(i + 1)
        chunks.append(json.dumps({"type": "MODIFIED", "object": pod}).encode() + b"\n")
    return chunks


def cpu_per_event(read: Callable[[list[bytes]], int], chunks: list[bytes], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.process_time()
        assert read(chunks) == len(chunks)
        times.append(time.process_time() - started)
    return statistics.median(times) / len(chunks)


def long_line(size: int, chunk: int) -> list[bytes]:
    pod = make_pod("huge", uid="u-huge")
    pod["metadata"]["annotations"] = {"blob": ""}
    head = json.dumps({"type": "ADDED", "object": pod}).encode()
    filler = b"x" * (size - len(head) - 1)
    # The annotation's value carries the filler; the event stays valid JSON.
    line = head.replace(b'"blob": ""', b'"blob": "' + filler + b'"', 1) + b"\n"
    return [line[i : i + chunk] for i in range(0, len(line), chunk)]


def hostile(read: Callable[[list[bytes]], Any], chunks: list[bytes]) -> tuple[float, float, str]:
    """(seconds of CPU, peak MiB allocated by the read, outcome)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    started = time.process_time()
    try:
        outcome = f"{read(chunks)} event"
    except WatchFailure as e:
        outcome = f"ended: {e.reason}"
    cpu = time.process_time() - started
    peak = (tracemalloc.get_traced_memory()[1] - base) / 2**20
    tracemalloc.stop()
    return cpu, peak, outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--long-mib", type=float, default=8.0)
    parser.add_argument("--chunk", type=int, default=4096)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    stream = events(args.events)
    size = statistics.median(len(c) for c in stream)
    hand = cpu_per_event(read_hand, stream, args.rounds)
    watch = cpu_per_event(read_watch, stream, args.rounds)
    typed = cpu_per_event(read_typed, stream, args.rounds)

    long = long_line(int(args.long_mib * 2**20), args.chunk)
    over = long_line(2 * MAX_WATCH_LINE, args.chunk)
    rows = [
        ("hand (former splitter)", long, lambda c: read_hand(c)),
        ("watch (Watch + bound, now)", long, lambda c: read_watch(c)),
        ("hand (former splitter)", over, lambda c: read_hand(c)),
        ("watch (Watch + bound, now)", over, lambda c: read_watch(c)),
        ("unbounded (Watch alone)", over, lambda c: read_watch(c, bound=False)),
    ]
    hostile_rows = []
    for name, chunks, read in rows:
        mib = sum(map(len, chunks)) / 2**20
        cpu, peak, outcome = hostile(read, chunks)
        hostile_rows.append(
            f"| {name} | {mib:.0f} MiB in {args.chunk} B chunks | {cpu * 1000:,.0f} ms "
            f"| {peak:.0f} MiB | {outcome} |"
        )
    report = f"""
### k8s_watch ({datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC)

Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} vCPUs, Python
{platform.python_version()}, kubernetes client {__import__("kubernetes").__version__}.
{args.events} pod events of {size:.0f} bytes (median), one chunk each, parse_pod included
except for `typed`; CPU time, median of {args.rounds}.

| reader | CPU per event | ratio to hand |
|---|---|---|
| hand (former splitter + json.loads) | {hand * 1e6:.1f} us | 1.00 |
| watch (Watch, plain dicts, behind the bound: now) | {watch * 1e6:.1f} us | {watch / hand:.2f} |
| typed (Watch with V1Pod models) | {typed * 1e6:.1f} us | {typed / hand:.2f} |

One long line (bound {MAX_WATCH_LINE / 2**20:.0f} MiB):

| reader | line | CPU | peak allocated | outcome |
|---|---|---|---|---|
{chr(10).join(hostile_rows)}
"""
    print(report)
    if not args.no_write:
        with (HERE / "RESULTS.md").open("a") as f:
            f.write(report)


if __name__ == "__main__":
    main()
