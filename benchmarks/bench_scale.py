"""Every figure of the scale issue (20) in one go, written as ONE table into RESULTS.md.

`make bench-scale` runs this. Each figure comes from the benchmark that
measures it, run as its own process through a fixed command line with
`--json FILE` (so the scripts can change inside while this runner and the
table stay the same):

  footprint   benchmarks/footprint.py: a live `orb8 run` (default dangerous
              set) at 1,000 cgroups x 50 syscalls, each cgroup also sending
              itself UDP datagrams (network series both ways and a loopback
              flow); /metrics scraped as Prometheus does (its Accept header,
              gzip), p50 of 20, then alternating with generate_latest of the
              same series in the same process (the same-run baseline);
              VmRSS / RssAnon / RssFile after the 20 scrapes;
  otlp        benchmarks/otlp_export.py: CPU per OTLP push of 55k points,
              orb8's writer against the SDK path in the same run;
  hook        benchmarks/syscall_overhead.py: the syscall hook's ratio
              (orb8 - none) / (floor - none), floor = an empty raw tracepoint;
  soak        benchmarks/churn_soak.py (only with --soak MINUTES): RssAnon
              growth per hour under pod churn.

The steps run one after the other (they would disturb each other), each
under a time limit; without the soak the whole run takes under 10 minutes.
The table between the bench-scale markers in RESULTS.md is replaced; rows of
steps not run this time (the soak, or those left out by --only) are kept from
the table there, with the date they were measured. A failed step fails the
run and leaves RESULTS.md alone (--force writes the table anyway).

Usage (root): .venv/bin/python benchmarks/bench_scale.py [--soak 30] [--only footprint,hook]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import machine  # benchmarks/machine.py, beside this script

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "RESULTS.md"
BEGIN, END = "<!-- bench-scale:begin -->", "<!-- bench-scale:end -->"
RUNS = re.compile(r"<!-- bench-scale:runs (\{.*?\}) -->")
MiB = 1 << 20
HEADER = "| figure | goal | measured | same-run baseline | command |\n|---|---|---|---|---|"


@dataclass(frozen=True)
class Step:
    name: str
    script: str
    args: tuple[str, ...]
    limit_s: float  # the step fails past this

    def command(self) -> str:
        return " ".join((".venv/bin/python", f"benchmarks/{self.script}", *self.args))


STEPS = (
    Step(
        "footprint",
        "footprint.py",
        ("--idle", "5", "--interval", "1", "--no-trim", "--slots", "262144", "--traffic", "10"),
        300,
    ),
    Step("otlp", "otlp_export.py", ("--exports", "4"), 240),
    Step("hook", "syscall_overhead.py", ("--cycles", "150"), 240),
)


def soak_step(minutes: float) -> Step:
    return Step("soak", "churn_soak.py", ("--minutes", f"{minutes:g}"), minutes * 60 + 300)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


def mib(value: float) -> str:
    return f"{value / MiB:.1f} MiB"


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def footprint_rows(r: dict, command: str) -> list[str]:
    live = r["live"]
    loaded, idle = live["loaded_memory"], live["idle_memory"]
    series = (
        f"{live['series']:,} series: {live['syscall_series']:,} orb8_syscalls_total, "
        f"{live['network_series']:,} orb8_network_bytes_total, "
        f"{live['flow_series']:,} orb8_flow_bytes_total"
    )
    p50, fast = live["scrape_p50_ms"], live["scrape_fast_p50_ms"]
    base = live["scrape_baseline_p50_ms"]
    return [
        f"| live `/metrics` of `orb8 run` (default dangerous set) at 1,000 cgroups x 50 syscalls "
        f"+ network + flows ({series}), scraped as Prometheus does (its Accept header: "
        f"OpenMetrics; gzip), p50 of 20 | must <= 100 ms; goal <= 50 ms | **{p50:.0f} ms** "
        f"(collect {live['collect_p50_ms']:.0f} ms): must {verdict(p50 <= 100)}, goal "
        f"{verdict(p50 <= 50)} | generate_latest of the same series + gzip, same process: "
        f"{base:.0f} ms | `{command}` |",
        f"| the same, alternating with the generate_latest scrape, p50 of 7 each | <= 1/3 of "
        f"generate_latest | **{fast:.0f} ms: ratio {fast / base:.2f}** "
        f"({verdict(fast <= base / 3)}) | {base:.0f} ms | same |",
        f"| RssAnon after those 20 scrapes (VmRSS, RssFile: LLVM's file-backed pages apart) | "
        f"<= 100 MiB | **{mib(loaded['RssAnon'])}** ({mib(loaded['VmRSS'])}, "
        f"{mib(loaded['RssFile'])}): {verdict(loaded['RssAnon'] <= 100 * MiB)} | idle, before "
        f"the cgroups: {mib(idle['RssAnon'])} ({mib(idle['VmRSS'])}, {mib(idle['RssFile'])}) "
        f"| same |",
    ]


def otlp_rows(r: dict, command: str) -> list[str]:
    out = r["results"]
    protocols = [name for name in out if "SDK" not in name]
    mine = " / ".join(f"{ms(out[p]['cpu_median'])} ({p})" for p in protocols)
    sdk = " / ".join(f"{ms(out[p + ' (SDK path)']['cpu_median'])}" for p in protocols)
    worst = max(out[p]["cpu_median"] for p in protocols)
    points = out[protocols[0]]["points"]
    scrape = " / ".join(
        f"{out[p]['scrape_busy'] / out[p]['scrape_idle']:.2f} ({p}; SDK path "
        f"{out[p + ' (SDK path)']['scrape_busy'] / out[p + ' (SDK path)']['scrape_idle']:.2f})"
        for p in protocols
    )
    return [
        f"| OTLP push of {points:,} points, CPU of the pushing thread per push (collect "
        f"included), median of {r['exports']} | <= 150 ms | **{mine}**: "
        f"{verdict(worst <= 0.150)} | SDK path, same run, same agent: {sdk} | `{command}` |",
        f"| OTLP: scrape latency while pushing back to back / without pushes | | {scrape} | "
        f"| same |",
    ]


def hook_rows(r: dict, command: str) -> list[str]:
    """One row per syscall measured: getpid (not ABI-sensitive: the tp_btf
    shortcut) first, then the others (getppid, i386 iopl: the flag is read)."""
    per_syscall = r.get("syscalls") or {"getpid": r}
    rows = []
    for name, figures in per_syscall.items():
        ratios, ns = figures["ratios"], figures["ns_per_syscall"]
        low, high = figures["orb8_interval"]
        others = ", ".join(f"{mode} {v:.2f}" for mode, v in ratios.items() if mode != "orb8")
        rows.append(
            f"| syscall hook: (orb8 - none) / (floor - none), {name} loop, i386 ABI check on, "
            f"medians of {r['cycles']} shuffled bursts | <= 1.15 | **{ratios['orb8']:.3f}** (90% "
            f"interval {low:.2f}-{high:.2f}): {verdict(ratios['orb8'] <= 1.15)}; other modes: "
            f"{others} | floor (empty raw tracepoint) {ns['floor']:.1f} ns, none "
            f"{ns['none']:.1f} ns, orb8 {ns['orb8']:.1f} ns per syscall | `{command}` |"
        )
    return rows


def soak_rows(r: dict, command: str) -> list[str]:
    slopes = ("rss_anon_mib_per_hour", "vmrss_mib_per_hour", "rss_file_mib_per_hour")
    r = {**r, **{k: float("nan") for k in slopes if r[k] is None}}  # too short for a slope
    growth = r["rss_anon_mib_per_hour"]
    start, end = r["gauges_start"], r["gauges_end"]
    return [
        f"| churn soak: RssAnon growth after the first {r['warmup_minutes']:g} min of "
        f"{r['minutes']:g} min of pod churn ({r['pods_added']:,} pods added and deleted "
        f"through the test API server, {r['rate']:g}/s, {r['lifetime_s']:g} s each, each "
        f"pod's process making 10-30 syscalls and {r.get('traffic', 0)} UDP datagrams), "
        f"least-squares slope | < 1 MiB/h | **{growth:+.2f} MiB/h** ({verdict(growth < 1)}); VmRSS "
        f"{r['vmrss_mib_per_hour']:+.2f}, RssFile {r['rss_file_mib_per_hour']:+.2f} MiB/h; "
        f"RssAnon over the last third alone {r.get('rss_anon_last_third_mib_per_hour')} MiB/h; "
        f"RssAnon {r['memory_start']['RssAnon']} -> {r['memory_warm']['RssAnon']} -> "
        f"{r['memory_end']['RssAnon']} MiB; scrapes every 15 s p50 {r['scrape_p50_ms']:.0f} ms, "
        f"max {r['scrape_max_ms']:.0f} ms; orb8_table_entries start {start['tables']}, end "
        f"{end['tables']} | | `{command}` |",
    ]


RENDER: dict[str, Callable[[dict, str], list[str]]] = {
    "footprint": footprint_rows,
    "otlp": otlp_rows,
    "hook": hook_rows,
    "soak": soak_rows,
}
ORDER = ("footprint", "otlp", "hook", "soak")
SCRIPTS = {"footprint": "footprint.py", "otlp": "otlp_export.py"}
SCRIPTS |= {"hook": "syscall_overhead.py", "soak": "churn_soak.py"}


def old_block(text: str) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The rows of the current table by step (a row belongs to the step whose script its
    command names; "same" rows follow theirs), and when each step last ran."""
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{RESULTS} has no {BEGIN} ... {END} block to replace")
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    runs = json.loads(m.group(1)) if (m := RUNS.search(block)) else {}
    rows: dict[str, list[str]] = {}
    current = None
    for line in block.splitlines():
        if not line.startswith("| ") or line.startswith("| figure |"):
            continue
        for step, script in SCRIPTS.items():
            if f"benchmarks/{script}" in line.rsplit("|", 2)[-2]:
                current = step
        if current is not None:
            rows.setdefault(current, []).append(line)
    return rows, runs


def new_block(
    fresh: dict[str, list[str]],
    kept: dict[str, list[str]],
    runs: dict[str, str],
    notes: list[str],
) -> str:
    rows = []
    for step in ORDER:
        rows += fresh.get(step) or kept.get(step) or []
    when = ", ".join(f"{step} {runs[step]}" for step in ORDER if step in runs)
    return "\n".join(
        [
            BEGIN,
            f"<!-- bench-scale:runs {json.dumps(runs)} -->",
            "",
            "Written by `make bench-scale` (benchmarks/bench_scale.py); do not edit by hand. "
            f"Measured: {when}.",
            *notes,
            "",
            HEADER,
            *rows,
            END,
        ]
    )


def replace_block(text: str, block: str) -> str:
    head, rest = text.split(BEGIN, 1)
    return head + block + rest.split(END, 1)[1]


def run_step(step: Step, work: Path) -> tuple[dict | None, str]:
    """(its JSON figures or None, a line about the run)."""
    out = work / f"{step.name}.json"
    log = work / f"{step.name}.log"
    load = os.getloadavg()[0]
    started = time.monotonic()
    print(f"== {step.name}: {step.command()}", flush=True)
    with log.open("w") as f:
        try:
            proc = subprocess.run(
                [sys.executable, str(HERE / step.script), *step.args, "--json", str(out)],
                cwd=ROOT,
                stdout=f,
                stderr=subprocess.STDOUT,
                timeout=step.limit_s,
                check=False,
            )
            rc: int | str = proc.returncode
        except subprocess.TimeoutExpired:
            rc = f"killed after {step.limit_s:.0f} s"
    took = time.monotonic() - started
    line = f"{step.name}: {took:.0f} s, load average {load:.1f} -> {os.getloadavg()[0]:.1f}"
    if rc != 0 or not out.exists():
        tail = log.read_text().strip().splitlines()[-5:]
        print(f"   FAILED ({rc}); {log}:\n   " + "\n   ".join(tail), flush=True)
        return None, f"{line}, FAILED ({rc})"
    print(f"   {line}", flush=True)
    return json.loads(out.read_text()), line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--soak", type=float, default=0, help="also the churn soak, minutes")
    parser.add_argument("--only", help="comma-separated steps (footprint, otlp, hook, soak)")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench-scale")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--force", action="store_true", help="write the table despite failures")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmarks load BPF and make cgroups")
    steps = [*STEPS, *((soak_step(args.soak),) if args.soak else ())]
    if args.only:
        wanted = set(args.only.split(","))
        steps = [s for s in steps if s.name in wanted]
    text = args.results.read_text()
    kept, runs = old_block(text)  # fails early, not after 10 minutes, if the markers are gone
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    fresh: dict[str, list[str]] = {}
    lines, failed = [], []
    for step in steps:
        figures, line = run_step(step, args.work)
        lines.append(line)
        if figures is None:
            failed.append(step.name)
            continue
        fresh[step.name] = RENDER[step.name](figures, step.command())
        runs[step.name] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    total = time.monotonic() - started
    notes = [
        "",
        f"Machine: {machine.describe()}. This run ({', '.join(s.name for s in steps)}) took "
        f"{total / 60:.1f} min; per step: {'; '.join(lines)} (load average over 1 minute, at "
        "the step's start and end: the machine is shared, absolute times move with it; the "
        "ratios are same-run).",
    ]
    block = new_block(fresh, kept, runs, notes)
    print(block)
    if failed and not args.force:
        sys.exit(f"failed: {', '.join(failed)}; {args.results} left as it was (--force writes)")
    args.results.write_text(replace_block(text, block))
    print(f"wrote the table into {args.results} ({total / 60:.1f} min)")
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
