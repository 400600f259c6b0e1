"""benchmarks/bench_scale.py's table: one block in RESULTS.md, rewritten in place, keeping
the rows of steps that did not run (the optional soak) with the date they were measured."""

from __future__ import annotations

import sys

import pytest

from tests.helpers import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_scale

MiB = 1 << 20
HOOK = {
    "cycles": 150,
    "ns_per_syscall": {"none": 120.0, "floor": 150.0, "orb8": 153.0},
    "ratios": {"naive": 1.9, "orb8": 1.1},
    "orb8_interval": [1.0, 1.2],
}
SOAK = {
    "minutes": 30,
    "warmup_minutes": 5,
    "pods_added": 3600,
    "rate": 2.0,
    "lifetime_s": 60.0,
    "rss_anon_mib_per_hour": 0.4,
    "vmrss_mib_per_hour": 0.5,
    "rss_file_mib_per_hour": 0.0,
    "memory_start": {"RssAnon": 110.0},
    "memory_warm": {"RssAnon": 130.0},
    "memory_end": {"RssAnon": 130.2},
    "scrape_p50_ms": 60.0,
    "scrape_max_ms": 200.0,
    "gauges_start": {"tables": {"identity": 1.0}},
    "gauges_end": {"tables": {"identity": 300.0}},
}


def results_md(block: str) -> str:
    return f"# Benchmark results\n\nintro\n\n{block}\n\n## History\n\nold rows stay\n"


def test_a_run_without_the_soak_keeps_its_row_and_date_and_replaces_the_rest() -> None:
    soak = bench_scale.soak_step(30)
    first = bench_scale.new_block(
        {
            "hook": bench_scale.hook_rows(HOOK, bench_scale.STEPS[2].command() + " v1"),
            "soak": bench_scale.soak_rows(SOAK, soak.command()),
        },
        {},
        {"hook": "2026-12-04 23:00 UTC", "soak": "2026-12-04 23:40 UTC"},
        [],
    )
    text = results_md(first)
    kept, runs = bench_scale.old_block(text)
    assert set(kept) == {"hook", "soak"} and runs["soak"] == "2026-12-04 23:40 UTC"

    hook = bench_scale.STEPS[2]
    faster = dict(HOOK, ratios={"orb8": 1.05})
    second = bench_scale.new_block(
        {"hook": bench_scale.hook_rows(faster, hook.command())},
        kept,
        dict(runs, hook="2026-12-05 00:30 UTC"),
        ["note"],
    )
    rewritten = bench_scale.replace_block(text, second)
    assert rewritten.startswith("# Benchmark results\n\nintro\n\n")
    assert rewritten.endswith("\n\n## History\n\nold rows stay\n")
    table = [line for line in rewritten.splitlines() if line.startswith("| ")]
    assert table[0] == bench_scale.HEADER.splitlines()[0]
    assert "**1.050**" in table[1] and " v1" not in rewritten  # the hook row is the new one
    assert table[2] == kept["soak"][0]  # the soak row, untouched, after it
    assert "+0.40 MiB/h" in table[2] and "soak 2026-12-04 23:40 UTC" in rewritten
    assert bench_scale.old_block(rewritten)[1]["hook"] == "2026-12-05 00:30 UTC"


def test_rows_following_a_step_belong_to_it() -> None:
    rows = bench_scale.footprint_rows(
        {
            "live": {
                "series": 57000,
                "syscall_series": 50000,
                "network_series": 4000,
                "flow_series": 2000,
                "scrape_p50_ms": 80.0,
                "scrape_fast_p50_ms": 90.0,
                "scrape_baseline_p50_ms": 900.0,
                "collect_p50_ms": 60.0,
                "loaded_memory": {"RssAnon": 120 * MiB, "VmRSS": 220 * MiB, "RssFile": 100 * MiB},
                "idle_memory": {"RssAnon": 90 * MiB, "VmRSS": 190 * MiB, "RssFile": 100 * MiB},
            }
        },
        bench_scale.STEPS[0].command(),
    )
    kept, _ = bench_scale.old_block(
        results_md(bench_scale.new_block({"footprint": rows}, {}, {}, []))
    )
    assert kept == {"footprint": rows} and len(rows) == 3
    assert "must met, goal **not met**" in rows[0] and "ratio 0.10** (met)" in rows[1]
    assert "**120.0 MiB** (220.0 MiB, 100.0 MiB): **not met**" in rows[2]


def test_no_markers_fails_before_any_benchmark_runs() -> None:
    with pytest.raises(SystemExit, match="bench-scale:begin"):
        bench_scale.old_block("# Benchmark results\n")
