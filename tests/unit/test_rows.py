"""Rows kept between collects (exporter/rows.py, sources/syscalls/counts.py): what
they render is what prometheus_client writes for the same samples, after any
sequence of value changes, new rows, gone rows and relabelled cgroups; no
cache serves a label or a number of another collect."""

from __future__ import annotations

import math
import random
from collections import defaultdict

import numpy as np
import pytest
from prometheus_client.utils import floatToGoString

from exporter.model import UNRESOLVED, Identity, MetricFamily
from exporter.outputs.exposition import (
    CHUNK_ROWS,
    OPENMETRICS,
    TEXT,
    Renderer,
    go_lines,
)
from exporter.rows import Interner, RowFamily, RowTable
from exporter.sources.lifecycle import CarriedCounts
from exporter.sources.syscalls import native_syscall_numbers
from exporter.sources.syscalls.baseline import Baselines
from exporter.sources.syscalls.counts import KEY_UNKNOWN, SyscallCounts
from exporter.sources.syscalls.names import abi_tables, syscall_namer
from tests.unit.test_exposition import ODD_LABELS, VALUES, expected, rendered

LABELS = ("namespace", "pod", "container", "cgroup", "syscall")
NR = native_syscall_numbers()


def row_family(table: RowTable, series: dict[tuple[str, ...], float]) -> RowFamily:
    """A RowFamily for {label values: value}, codes from an interner of label tuples."""
    codes = {labels: INTERN(labels) for labels in series}
    order = sorted(series, key=codes.__getitem__)
    layout = table.update(
        np.array([codes[labels] for labels in order], dtype=np.int64),
        lambda new: [INTERN.values[code] for code in new.tolist()],
    )
    values = np.array([series[labels] for labels in order], dtype=np.float64)
    return RowFamily(
        "orb8_syscalls_total", "counter", 'Help "with"\nodd\\ text.', LABELS, layout, values
    )


INTERN: Interner[tuple[str, ...]] = Interner()


def plain(family: RowFamily) -> MetricFamily:
    return MetricFamily(family.name, family.type, family.help, family.labels, family.samples)


@pytest.mark.parametrize("form", [TEXT, OPENMETRICS])
def test_row_families_render_as_prometheus_client_through_any_sequence_of_changes(form):
    rng = random.Random(20)
    table, renderer = RowTable(), Renderer()
    pool = [
        (odd, f"pod-{i}", ODD_LABELS[(i + 3) % len(ODD_LABELS)], "", name)
        for i, odd in enumerate(ODD_LABELS)
        for name in ("read", "write", "ptrace")
    ] + [("ns", f"p{i}", "app", "", "read") for i in range(3 * CHUNK_ROWS)]
    series: dict[tuple[str, ...], float] = {}
    for step in range(12):
        for labels in rng.sample(pool, len(pool) // 3):  # some series come
            series.setdefault(labels, float(rng.randrange(10**9)))
        for labels in rng.sample(sorted(series), len(series) // 5):  # some go
            del series[labels]
        for labels in rng.sample(sorted(series), len(series) // 4):  # some count
            series[labels] = rng.choice([*VALUES, series[labels] + rng.randrange(10**7)])
        family = row_family(table, series)
        want = expected([plain(family)], form)
        assert rendered(renderer, [family], form) == want, step
        assert rendered(renderer, [family], form) == want, step  # from the caches
    assert b"NaN" in want or b"Inf" in want or step == 11


def test_two_snapshots_of_one_layout_each_render_their_own_values():
    table, renderer = RowTable(), Renderer()
    series = {("ns", "p", "c", "", "read"): 1.0, ("ns", "p", "c", "", "write"): 2.0}
    first = row_family(table, series)
    second = row_family(table, {k: v + 10 for k, v in series.items()})
    assert first.layout is second.layout
    for family in (first, second, first, second):
        assert rendered(renderer, [family], TEXT) == expected([plain(family)], TEXT)


def test_a_row_family_with_no_rows_is_its_header():
    family = row_family(RowTable(), {})
    assert rendered(Renderer(), [family], TEXT) == expected([plain(family)], TEXT)


def test_bulk_formatting_matches_prometheus_client():
    rng = random.Random(7)
    values = [*VALUES, 2.0**53 - 1, 2.0**53, 1e15, 10.0**12, 123000000.0, 5e-324, -1e6]
    for _ in range(20000):
        values.append(float(rng.randrange(10 ** rng.randrange(1, 17))))
        values.append(float(rng.randrange(10**6)) * 10 ** rng.randrange(10))
        values.append(rng.random() * 10 ** rng.randrange(-5, 20))
    got = go_lines(np.array(values))
    assert got == [floatToGoString(v) + "\n" for v in values]


# --- orb8_syscalls_total from kernel rows -------------------------------------------


class Reference:
    """The former collect (per-row Python): sums per (identity, name), and the
    baselines observed per (identity, kernel key) series whose count went up
    since the last collect; a series not in the last collect goes up from
    what was carried for it (its identity came back)."""

    def __init__(self, baselines: Baselines) -> None:
        self.name = syscall_namer()
        self.baselines = baselines
        self.last: dict[tuple[Identity, int], int] = {}
        self.novel = CarriedCounts()

    def collect(self, identities, rows, carried, present, owners):
        series: dict[tuple[Identity, int], int] = defaultdict(int)
        for key, (value,) in carried.items(present):
            series[key] += value
        was_carried = dict(series)
        for cgroup_id, key, count in rows:
            series[(identities[cgroup_id], key)] += count
        last, self.last = self.last, dict(series)
        for key, value in series.items():
            identity, nr = key
            delta = value - last.get(key, was_carried.get(key, 0))
            if delta <= 0 or identity == UNRESOLVED:
                continue
            if identity.pod:
                owner = owners.get((identity.namespace, identity.pod)) or identity.pod
                workload = f"{identity.namespace}/{owner}/{identity.container}"
            else:
                workload = f"cgroup:{identity.cgroup}"
            if self.baselines.observe(workload, self.name(nr)):
                self.novel.add(key, delta)
        named: dict[tuple[str, ...], float] = defaultdict(int)
        for (identity, key), value in series.items():
            named[(*identity, self.name(key))] += value
        return {labels: float(value) for labels, value in named.items()}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def counts_source(clock: Clock, owners: dict) -> tuple[SyscallCounts, CarriedCounts]:
    novel = CarriedCounts()
    counts = SyscallCounts(
        abi_tables(), LABELS, Baselines(50.0, None, clock=clock), lambda: owners, novel
    )
    return counts, novel


def rows_of(entries: dict[tuple[int, int], int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    keys = sorted(entries)
    return (
        np.array([c for c, _ in keys], dtype=np.uint64),
        np.array([k for _, k in keys], dtype=np.uint32),
        np.array([entries[k] for k in keys], dtype=np.uint64),
    )


def test_syscall_rows_match_the_former_collect_through_relabels_retires_and_carries():
    """Random kernel rows over 40 collects: identities move from a path to a
    pod and back to another pod, cgroups go (counts carried), i386 and
    unknown keys share names; sums, labels and novel counts equal the
    former per-row collect's, and every render is prometheus_client's."""
    rng = random.Random(3)
    clock, owners = Clock(), {("ns", "web-1"): "web"}
    counts, novel = counts_source(clock, owners)
    reference = Reference(Baselines(50.0, None, clock=clock))
    renderer, carried = Renderer(), CarriedCounts()
    keys = [NR["read"], NR["write"], NR["ptrace"], (1 << 16) | 26, KEY_UNKNOWN, (2 << 16) | 1]
    who = [
        Identity(cgroup="/system.slice/a.service"),
        Identity("ns", "web-1", "app", ""),
        Identity("ns", "web-2", 'q"uote\\', ""),
        Identity("ns", "db-0", "db\n", ""),
        Identity("", "", "", "/\ud800odd"),
        UNRESOLVED,
    ]
    entries: dict[tuple[int, int], int] = {}
    identities: dict[int, Identity] = {}
    for step in range(40):
        clock.now += 10
        for cgroup_id in range(1, 9):
            identities.setdefault(cgroup_id, rng.choice(who))
        if rng.random() < 0.3:  # a cgroup is relabelled (path -> pod, or a pod arrives)
            identities[rng.randrange(1, 9)] = rng.choice(who)
        if step in (10, 20, 30):  # calls never seen in the learning window
            keys.append(NR[("mount", "setns", "bpf")[step // 10 - 1]])
        for _ in range(rng.randrange(1, 15)):
            key = (rng.randrange(1, 9), rng.choice(keys))
            entries[key] = entries.get(key, 0) + rng.choice([1, 2**40, 2**53 + 1])
        if rng.random() < 0.2:  # a cgroup is retired: its counts are carried
            gone = rng.randrange(1, 9)
            for key in [k for k in entries if k[0] == gone]:
                carried.add((identities[gone], key[1]), entries.pop(key))
        seen = {cgroup_id for cgroup_id, _ in entries}
        now = {cgroup_id: identities[cgroup_id] for cgroup_id in seen}
        present = set(now.values())
        family = counts.update(now, *rows_of(entries), carried, present)
        want = reference.collect(
            now, [(c, k, v) for (c, k), v in entries.items()], carried, present, owners
        )
        assert dict(family.samples) == {
            tuple(map(_safe, labels)): value for labels, value in want.items()
        }, step
        assert dict(novel.items(present | {UNRESOLVED})) == dict(
            reference.novel.items(present | {UNRESOLVED})
        ), step
        assert rendered(renderer, [family], TEXT) == expected([plain(family)], TEXT)
    assert len(novel) > 0  # the window ended: novel calls were counted


def _safe(value: str) -> str:
    try:
        value.encode()
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode()


def test_a_cgroup_relabelled_from_its_path_to_its_pod_shows_only_the_pod_labels():
    counts, _ = counts_source(Clock(), {})
    path = Identity(cgroup="/kubepods.slice/pod-x.slice/cri-containerd-1.scope")
    pod = Identity("ns", "web-1", "app", "")
    rows = rows_of({(7, NR["read"]): 5, (8, NR["write"]): 1})
    before = counts.update({7: path, 8: path}, *rows, CarriedCounts(), {path})
    assert dict(before.samples) == {(*path, "read"): 5.0, (*path, "write"): 1.0}
    renderer = Renderer()
    renderer.render([before])
    after = counts.update({7: pod, 8: path}, *rows, CarriedCounts(), {pod, path})
    assert dict(after.samples) == {(*pod, "read"): 5.0, (*path, "write"): 1.0}
    assert rendered(renderer, [after], TEXT) == expected([plain(after)], TEXT)
    assert b'pod="web-1",syscall="read"' in rendered(renderer, [after], TEXT)


def test_renumbering_the_identities_starts_a_new_table(monkeypatch):
    """Once the interner holds many identities no longer in use it is rebuilt;
    rows made under the old numbers must not survive (their codes mean
    other identities now)."""
    monkeypatch.setattr("exporter.sources.syscalls.counts.SLACK", 0)
    counts, _ = counts_source(Clock(), {})
    renderer = Renderer()
    for i in range(6):
        identity = Identity(cgroup=f"/svc-{i}")
        family = counts.update(
            {i: identity}, *rows_of({(i, NR["read"]): i + 1}), CarriedCounts(), {identity}
        )
        assert dict(family.samples) == {(*identity, "read"): float(i + 1)}
        assert rendered(renderer, [family], TEXT) == expected([plain(family)], TEXT)
    assert len(counts.identities) <= 3


def test_renumbering_does_not_make_old_calls_look_new(monkeypatch):
    """Baselines see what a series counted since the last collect: after the
    identities are renumbered, a series whose count did not move is not
    counted as novel calls again."""
    monkeypatch.setattr("exporter.sources.syscalls.counts.SLACK", 0)
    clock = Clock()
    counts, novel = counts_source(clock, {})
    steady = Identity(cgroup="/steady.service")
    counts.update({99: steady}, *rows_of({(99, NR["write"]): 1}), CarriedCounts(), {steady})
    for i in range(6):  # a new identity each time, the old ones gone: renumbered
        clock.now = 1000.0 + i  # past the learning window: a new call is novel
        churn = Identity(cgroup=f"/svc-{i}")
        identities = {99: steady, 1 + i: churn}  # numbered before steady
        entries = {(99, NR["write"]): 1, (99, NR["read"]): 5, (1 + i, NR["write"]): 1}
        counts.update(identities, *rows_of(entries), CarriedCounts(), {steady, churn})
    assert dict(novel.items([steady]))[(steady, NR["read"])] == [5]
    assert len(counts.identities) <= 4


def test_sums_are_exact_beyond_float_precision():
    counts, _ = counts_source(Clock(), {})
    identity = Identity(cgroup="/big")
    other = Identity(cgroup="/other")  # i386 ptrace and native ptrace: one series
    entries = {(1, NR["ptrace"]): 2**53 + 1, (1, (1 << 16) | 26): 2**53 + 1, (2, NR["ptrace"]): 3}
    family = counts.update({1: identity, 2: other}, *rows_of(entries), CarriedCounts(), {identity})
    assert dict(family.samples)[(*identity, "ptrace")] == float(2 * (2**53 + 1))
    assert math.isfinite(dict(family.samples)[(*other, "ptrace")])


def test_a_row_family_refuses_plain_edits():
    family = row_family(RowTable(), {("a", "b", "c", "", "read"): 1.0})
    with pytest.raises(TypeError):
        family.add(("a", "b", "c", "", "x"), 1)
    with pytest.raises(AttributeError):
        family.samples = []


def test_the_agent_merges_a_row_family_with_a_plain_one_of_the_same_name():
    from exporter.agent import _merge

    family = row_family(RowTable(), {("a", "b", "c", "", "read"): 1.0})
    extra = MetricFamily(family.name, "counter", family.help, LABELS)
    extra.add(("a", "b", "c", "", "write"), 2)
    (merged,) = _merge([family, extra])
    want = {("a", "b", "c", "", "read"): 1.0, ("a", "b", "c", "", "write"): 2.0}
    assert dict(merged.samples) == want
    assert len(family) == 1  # the source's rows are untouched


# --- gzip of the pieces (exporter/outputs/gzipped.py) --------------------------------


def test_gzip_of_pieces_is_one_member_of_the_whole_body_scrape_after_scrape():
    import gzip
    import zlib

    from exporter.outputs.gzipped import GzipCache
    from exporter.outputs.gzipped import plain as joined

    rng = random.Random(5)
    table, renderer, cache = RowTable(), Renderer(), GzipCache(1)
    series = {("ns", f"p{i}", "app", "", "read"): float(i) for i in range(4 * CHUNK_ROWS)}
    for step in range(6):
        for labels in rng.sample(sorted(series), 7):  # a few rows change: few chunks
            series[labels] += rng.randrange(1, 10**9)
        if step == 3:  # a layout change: every chunk is new
            series[("ns", "new", "app", "", "write")] = 1.0
        family = row_family(table, series)
        pieces = renderer.pieces([family], TEXT)
        tail = b"# process_* from prometheus_client\n"
        body = cache.compress(pieces, tail)
        whole = joined(pieces) + tail
        assert gzip.decompress(body) == whole == expected([plain(family)], TEXT) + tail
        one = zlib.decompressobj(16 + zlib.MAX_WBITS)  # stops at the end of a member
        assert one.decompress(body) == whole and one.eof and one.unused_data == b""
    assert gzip.decompress(cache.compress([], b"")) == b""


def test_a_gzip_scrape_over_http_decodes_to_the_plain_one():
    import gzip
    import urllib.request

    from exporter.listen import Listen
    from exporter.outputs.prometheus import PrometheusServer

    table = RowTable()
    series = {("ns", f"p{i}", 'q"x', "", "read"): float(i) for i in range(3 * CHUNK_ROWS)}
    server = PrometheusServer(
        Listen("127.0.0.1", 0), lambda: [row_family(table, series)], lambda: ""
    )
    server.start()
    url = f"http://127.0.0.1:{server.address[1]}/metrics"
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    try:
        for round_ in range(3):
            series[("ns", "p1", 'q"x', "", "read")] = float(round_ * 10**7)
            bodies = []
            for encoding in ("gzip", "identity"):
                request = urllib.request.Request(
                    url, headers={"Accept": accept, "Accept-Encoding": encoding}
                )
                with urllib.request.urlopen(request, timeout=30) as response:
                    body = response.read()
                    if response.headers.get("Content-Encoding") == "gzip":
                        body = gzip.decompress(body)
                bodies.append(body.split(b"\n# HELP process_")[0])
            assert bodies[0] == bodies[1]
            value = floatToGoString(float(round_ * 10**7))
            line = 'orb8_syscalls_total{cgroup="",container="q\\"x",namespace="ns",pod="p1",'
            assert f'{line}syscall="read"}} {value}\n'.encode() in bodies[0]
    finally:
        server.close()


# --- orb8_network_{bytes,packets}_total from kernel rows ---------------------------


def test_network_traffic_rows_follow_the_kernel_entries_and_render_as_prometheus_client(
    tmp_path,
):
    """Traffic rows: sums per (identity, direction, protocol, family) as the
    per-row collect made them (two cgroups of one identity add up, an
    out-of-range protocol is "other"), odd cgroup names escaped, and an entry
    gone from the kernel after retirement continues from its carried counts."""
    from tests.bpf_maps import InMemoryMaps
    from tests.unit.test_source_seams import GRACE, Clock, cgroup, network_source, value

    clock, maps = Clock(), InMemoryMaps()
    source = network_source(tmp_path, clock, maps)
    odd = cgroup(tmp_path, 'odd"name\\')
    plain_id = cgroup(tmp_path, "svc.service")
    renderer = Renderer()
    big = 2**53 + 1
    maps.set("network_traffic", [big, 3], cgroup_id=odd, direction=1, protocol=0, family=0)
    maps.set("network_traffic", [100, 1], cgroup_id=odd, direction=0, protocol=9, family=1)
    maps.set("network_traffic", [7, 1], cgroup_id=plain_id, direction=1, protocol=1, family=0)
    for step in range(3):
        families = source.collect()
        shown = [f for f in families if f.name.startswith("orb8_network_")]
        assert all(isinstance(f, RowFamily) for f in shown)
        for form in (TEXT, OPENMETRICS):
            assert rendered(renderer, shown, form) == expected([plain(f) for f in shown], form)
        egress = {"cgroup": '/odd"name\\', "direction": "egress", "protocol": "tcp"}
        assert value(families, "orb8_network_bytes_total", **egress) == float(big + step)
        other = {"cgroup": '/odd"name\\', "protocol": "other", "family": "ipv6"}
        assert value(families, "orb8_network_packets_total", **other) == 1.0
        for raw in list(maps.hashes["network_traffic"]):
            if maps.hashes["network_traffic"][raw][0] == big + step:
                maps.hashes["network_traffic"][raw][0] += 1
    # The service's cgroup goes: after its grace its entry is freed, and the
    # series keeps its count (carried) while nothing else has that identity.
    (tmp_path / "svc.service").rmdir()
    clock.now += 2
    source.collect()
    clock.now += GRACE
    source.collect()
    assert not any(
        k for k in maps.hashes["network_traffic"] if int.from_bytes(k[:8], "little") == plain_id
    )
    new_id = cgroup(tmp_path, "svc.service")
    maps.set("network_traffic", [5, 1], cgroup_id=new_id, direction=1, protocol=1, family=0)
    clock.now += 2
    families = source.collect()
    svc = {"cgroup": "/svc.service", "direction": "egress", "protocol": "udp"}
    assert value(families, "orb8_network_bytes_total", **svc) == 12.0
    shown = [f for f in families if f.name.startswith("orb8_network_")]
    assert rendered(renderer, shown, TEXT) == expected([plain(f) for f in shown], TEXT)


def test_concurrent_renders_and_collects_each_write_their_own_snapshot():
    """A text and an OpenMetrics scrape render outside the collect lock while
    the next collect makes a new layout from the old one: every render is
    exactly its own snapshot's text."""
    import threading

    table, renderer = RowTable(), Renderer()
    snapshots: list[tuple[RowFamily, bytes, bytes]] = []
    series = {("ns", f"p{i}", "app", "", "read"): float(i) for i in range(2 * CHUNK_ROWS)}
    for step in range(12):
        series = {k: v + step for k, v in series.items()}
        if step % 3 == 0:
            series[("ns", f"new{step}", "app", "", "read")] = 1.0
            del series[min(series)]
        family = row_family(table, dict(series))
        snapshots.append(
            (family, expected([plain(family)], TEXT), expected([plain(family)], OPENMETRICS))
        )
    errors: list[str] = []

    def scrape(form: str, order: list[int]) -> None:
        for i in order:
            family, text, openmetrics = snapshots[i]
            want = text if form == TEXT else openmetrics
            if rendered(renderer, [family], form) != want:
                errors.append(f"{form} {i}")

    order = list(range(len(snapshots)))
    threads = [
        threading.Thread(target=scrape, args=(TEXT, order * 3)),
        threading.Thread(target=scrape, args=(OPENMETRICS, order[::-1] * 3)),
        threading.Thread(target=scrape, args=(TEXT, order[::2] * 4)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


# --- orb8_dangerous_syscalls_total from kernel rows ----------------------------------


def dangerous_reference(identities, rows, carried, overflow, present, shown):
    """The former per-row collect: sum per (identity, key), then per name, hidden left out."""
    name = syscall_namer()
    series: dict[tuple[Identity, int], int] = defaultdict(int)
    for key, (value,) in carried.items(present):
        series[key] += value
    for cgroup_id, key, count in rows:
        series[(identities[cgroup_id], key)] += count
    series.update(overflow)
    named: dict[tuple[str, ...], float] = defaultdict(int)
    for (identity, key), value in series.items():
        if shown(identity):
            named[(*identity, name(key))] += value
    return {labels: float(value) for labels, value in named.items()}


def test_dangerous_rows_match_the_former_collect_through_relabels_carries_and_overflow():
    """Random dangerous_counts reads over 30 collects: identities relabelled,
    cgroups retired (counts carried), an overflow row, an i386 key named as
    its native call, allowlisted identities hidden; the rows' samples equal
    the former per-row collect's and each render is prometheus_client's."""
    from exporter.sources.syscalls.counts import NamedCounts

    rng = random.Random(11)
    counts, _ = counts_source(Clock(), {})
    dangerous = NamedCounts(
        "orb8_dangerous_syscalls_total", "Dangerous.", LABELS, counts.names, counts.name_of_key
    )
    overflow_identity = Identity(cgroup="<overflow>")
    hidden = Identity("kube-system", "allowed-0", "agent", "")
    who = [
        Identity(cgroup="/system.slice/a.service"),
        Identity("ns", "web-1", 'q"uote\\', ""),
        Identity("", "", "", "/\ud800odd"),
        hidden,
        UNRESOLVED,
    ]

    def shown(identity: Identity) -> bool:
        return identity != hidden

    keys = [NR["ptrace"], NR["unshare"], (1 << 16) | 26, KEY_UNKNOWN]
    renderer, carried = Renderer(), CarriedCounts()
    entries: dict[tuple[int, int], int] = {}
    identities: dict[int, Identity] = {}
    for step in range(30):
        for cgroup_id in range(1, 7):
            identities.setdefault(cgroup_id, rng.choice(who))
        if rng.random() < 0.3:
            identities[rng.randrange(1, 7)] = rng.choice(who)
        for _ in range(rng.randrange(0, 6)):
            key = (rng.randrange(1, 7), rng.choice(keys))
            entries[key] = entries.get(key, 0) + rng.choice([1, 3, 2**53 + 1])
        if rng.random() < 0.2:
            gone = rng.randrange(1, 7)
            for key in [k for k in entries if k[0] == gone]:
                carried.add((identities[gone], key[1]), entries.pop(key))
        overflow = {(overflow_identity, NR["ptrace"]): step} if step % 3 else {}
        now = {c: identities[c] for c, _ in entries}
        present = set(now.values())
        cgroup_ids, nrs, values = rows_of(entries)
        extra = [*((k, v) for k, (v,) in carried.items(present)), *overflow.items()]
        family = dangerous.update(now, cgroup_ids, nrs, values, extra, present, shown)
        want = dangerous_reference(
            now, [(c, k, v) for (c, k), v in entries.items()], carried, overflow, present, shown
        )
        assert dict(family.samples) == {
            tuple(map(_safe, labels)): value for labels, value in want.items()
        }, step
        for form in (TEXT, OPENMETRICS):
            assert rendered(renderer, [family], form) == expected([plain(family)], form), step
    assert any(labels[3] == "<overflow>" for labels, _ in family.samples)


def test_the_syscalls_source_exports_dangerous_calls_as_rows(tmp_path):
    from tests.bpf_maps import InMemoryMaps
    from tests.unit.test_source_seams import Clock as SeamClock
    from tests.unit.test_source_seams import cgroup, syscalls_source, value

    maps = InMemoryMaps()
    source = syscalls_source(tmp_path, SeamClock(), maps)
    service = cgroup(tmp_path, 'odd"name\\.service')
    maps.set("dangerous_counts", [2, 0], cgroup_id=service, nr=NR["ptrace"])
    maps.set("dangerous_overflow", [5, 2], index=NR["ptrace"])
    families = source.collect()
    (family,) = [f for f in families if f.name == "orb8_dangerous_syscalls_total"]
    assert isinstance(family, RowFamily)
    assert value(families, family.name, cgroup='/odd"name\\.service', syscall="ptrace") == 2
    assert value(families, family.name, cgroup="<overflow>", syscall="ptrace") == 5
    for form in (TEXT, OPENMETRICS):
        assert rendered(Renderer(), [family], form) == expected([plain(family)], form)


# --- orb8_flow_*_total and orb8_active_flows from the flow ledger -------------------


def flow_reference(series, active) -> list[MetricFamily]:
    """The former per-row flow families, from the ledger's sums."""
    from exporter.model import IDENTITY_LABELS
    from exporter.sources.network.source import DIRECTIONS, PEER_LABELS, PROTOCOLS, _name

    labels = (*IDENTITY_LABELS, "direction", "protocol", *PEER_LABELS)
    flow_bytes = MetricFamily("orb8_flow_bytes_total", "counter", "", labels)
    flow_packets = MetricFamily("orb8_flow_packets_total", "counter", "", labels)
    for (identity, (direction, protocol, peer)), (nbytes, npackets) in series.items():
        values = (
            *identity,
            _name(DIRECTIONS, direction),
            _name(PROTOCOLS, protocol),
            peer.namespace,
            peer.pod,
            peer.peer_class,
        )
        flow_bytes.add(values, nbytes)
        flow_packets.add(values, npackets)
    active_flows = MetricFamily("orb8_active_flows", "gauge", "", IDENTITY_LABELS)
    for identity, count in active.items():
        active_flows.add(identity, count)
    return [flow_bytes, flow_packets, active_flows]


def test_flow_rows_match_the_former_families_through_peers_evictions_and_relabels(tmp_path):
    """A random flow map over 30 collects (peers come and go, entries are
    evicted, cgroups relabelled, odd names): the flow families are rows
    whose samples equal the former per-row families' and whose renders are
    prometheus_client's, the renumbering of the interners included."""
    from tests.bpf_maps import InMemoryMaps
    from tests.unit.test_network_flows import World
    from tests.unit.test_source_seams import Clock as SeamClock
    from tests.unit.test_source_seams import network_source

    rng = random.Random(8)
    source = network_source(tmp_path, SeamClock(), InMemoryMaps())
    source._flow_rows.SLACK = 0
    world = World(peer_limit=2)
    world.pods = {f"198.18.0.{i}": ("ns", f"peer-{i}") for i in range(1, 5)}
    who = [
        Identity("shop", "web", "app", ""),
        Identity("shop", "db", 'q"uote\\', ""),
        Identity(cgroup="/system.slice/\ud800odd.service"),
        UNRESOLVED,
    ]
    renderer = Renderer()
    for step in range(30):
        world.identities = {c: world.identities.get(c) or rng.choice(who) for c in range(1, 5)}
        if rng.random() < 0.3:
            world.identities[rng.randrange(1, 5)] = rng.choice(who)
        for _ in range(rng.randrange(1, 6)):
            address = rng.choice([*world.pods, "203.0.113.9", "127.0.0.1"])
            world.kernel.add(rng.randrange(1, 5), address, rng.randrange(1, 10**6))
        if rng.random() < 0.3 and world.kernel.entries:  # the LRU evicts one
            del world.kernel.entries[rng.choice(sorted(world.kernel.entries))]
        if step % 7 == 6:  # a peer pod goes, another comes
            world.pods.pop(rng.choice(sorted(world.pods)), None)
            world.pods[f"198.18.1.{step}"] = ("ns", f"new-{step}")
        world.collect()
        source._ledger = world.ledger
        renumbered = step % 5 == 4
        if renumbered:  # as when many identities or peers are gone: new numbers
            source._flow_rows.prune(0, 0)
            assert len(source._flow_rows.keys) == 0
        families = source._flow_families(world.identities)
        assert all(isinstance(f, RowFamily) for f in families)
        reference = flow_reference(*world.ledger.series(world.identities))
        for family, want in zip(families, reference, strict=True):
            assert family.name == want.name
            assert sorted(family.samples) == sorted(want.samples), (step, family.name)
        for form in (TEXT, OPENMETRICS):
            assert rendered(renderer, families, form) == expected(
                [plain(f) for f in families], form
            ), step
    assert len(source._flow_rows.keys) > 0


def test_a_rendered_layout_keeps_a_few_bytes_per_row():
    """What a render leaves in the layout for the next scrape is the bits of
    each value and the deflated chunks: not each row's text (as str or
    bytes, ~300 bytes a row at 1,000 containers x 50 syscalls: ~17 MiB)."""
    import gc
    import tracemalloc

    table = RowTable()
    series = {
        ("", "", "", f"/kubepods.slice/pod-{i // 50:04d}.slice/cri-{i:064d}.scope", "read"): float(
            i * 1009
        )
        for i in range(20_000)
    }
    family = row_family(table, series)
    renderer = Renderer()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        body = rendered(renderer, [family], TEXT)
        assert body == expected([plain(family)], TEXT)
        del body
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept / len(series) < 40


@pytest.mark.parametrize("form", [TEXT, OPENMETRICS])
def test_every_value_moving_scrape_after_scrape_renders_as_prometheus_client(form):
    """Chunks whose every row changed are rewritten from their kept prefixes
    (made the first time): every counter moves in most scrapes, a few in
    others, odd labels and special values included."""
    table, renderer = RowTable(), Renderer()
    series = {
        (ODD_LABELS[i % len(ODD_LABELS)], f"p{i}", "app", "", "read"): float(i)
        for i in range(2 * CHUNK_ROWS + 37)
    }
    for step in range(6):
        if step == 3:  # only a few move
            for labels in sorted(series)[::97]:
                series[labels] += 1
        else:
            series = {labels: v * 3 + VALUES[step % len(VALUES)] for labels, v in series.items()}
        family = row_family(table, series)
        assert rendered(renderer, [family], form) == expected([plain(family)], form), step


def test_a_deflated_piece_chains_the_crc_of_the_whole_text():
    import zlib

    from exporter.outputs.gzipped import Deflated

    rng = random.Random(4)
    crc, text = 0, b""
    for size in (0, 1, 100, 65536, 65537, 300_000):
        piece = bytes(rng.randrange(256) for _ in range(size))
        deflated = Deflated(piece)
        assert deflated.text() == piece
        crc = deflated.chain(crc)
        text += piece
        assert crc == zlib.crc32(text)


def test_a_layout_after_one_never_rendered_still_takes_the_rendered_text():
    """Collects that nobody renders (housekeeping, OTLP off, prometheus_client's
    encoder) make layouts in between: the next render still takes its kept
    rows' text from the last rendered layout, not from the labels again."""
    table, renderer = RowTable(), Renderer()
    series = {("ns", f"p{i}", "app", "", "read"): float(i) for i in range(3 * CHUNK_ROWS)}
    first = row_family(table, series)
    rendered(renderer, [first], TEXT)
    series[("ns", "new", "app", "", "read")] = 1.0
    between = row_family(table, series)  # not rendered
    del series[("ns", "p7", "app", "", "read")]
    series[("ns", "p9", "app", "", "read")] = 99.0
    last = row_family(table, series)
    assert between.layout is not first.layout and last.layout is not between.layout
    assert last.layout.previous((("bits", last.name), ("chunks", last.name))) is not None
    assert rendered(renderer, [last], TEXT) == expected([plain(last)], TEXT)
    assert rendered(renderer, [between], TEXT) == expected([plain(between)], TEXT)


def test_rows_that_come_change_only_the_chunks_around_them():
    """Chunk boundaries follow the rows' codes: a new cgroup's 50 rows in the
    middle of 20,000 change the chunk(s) they land in; every other chunk is
    the same deflated piece as before (gzip splices it as it is)."""

    def family(codes: list[int]) -> RowFamily:
        layout = table.update(
            np.array(codes, dtype=np.int64),
            lambda new: [
                ("ns", f"p{c // 5000:05d}", "app", "", f"s{c % 5000}") for c in new.tolist()
            ],
        )
        values = np.array(codes, dtype=np.float64)
        return RowFamily("orb8_syscalls_total", "counter", "h", LABELS, layout, values)

    table, renderer = RowTable(), Renderer()
    codes = [100 * i for i in range(20_000)]
    before = renderer.pieces([family(codes)], TEXT)
    codes = sorted([*codes, *(100 * 10_000 + k for k in range(1, 51))])
    second = family(codes)
    after = renderer.pieces([second], TEXT)
    assert rendered(renderer, [second], TEXT) == expected([plain(second)], TEXT)
    kept = {id(piece) for piece in before}
    new = [piece for piece in after[1:-1] if id(piece) not in kept]
    assert 1 <= len(new) <= 2 < len(after) - 2
