"""`orb8 top` at 1,000 containers: its line parser vs prometheus_client's, same run.

The text is what orb8 serves at that scale, rendered by orb8's own renderer
from the series scrape_render.py builds (1,000 containers x 50 syscalls,
network, flows, map gauges), with counters advancing between rounds. Per
round it times:
  - baseline: prometheus_client.parser.text_string_to_metric_families over
    the whole text, keeping the families top shows (what a client would
    do without a parser of its own),
  - top: exporter.top.parse.LineParser (the label cache warm, as from the
    second scrape on),
  - then top's rates and rows (Tracker.update + select), and the live
    view's table fill (textual DataTable, headless) for the 1,000 rows.
Reports p50/p90 and the parse ratio; both parsers' samples are compared.

Usage: .venv/bin/python benchmarks/top_parse.py [--rounds 11] [--containers 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import time

import machine  # benchmarks/machine.py, beside this script
from prometheus_client.parser import text_string_to_metric_families
from scrape_render import bump, families, identities

from exporter.outputs.exposition import TEXT, Renderer
from exporter.top import model


def baseline(text: str) -> dict[str, set[tuple[tuple[tuple[str, str], ...], float]]]:
    out: dict[str, set[tuple[tuple[tuple[str, str], ...], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in model.WANTED:
                out.setdefault(sample.name, set()).add(
                    (tuple(sorted(sample.labels.items())), sample.value)
                )
    return out


async def table_fill(rows: list, rounds: int, cap: int) -> list[float]:
    """Seconds the live view's UI thread spends filling its table with `rows`,
    at most `cap` of them (the view's MAX_ROWS, or all for comparison)."""
    from exporter.top import app as app_module
    from exporter.top.app import TopApp
    from exporter.top.fetch import Endpoint, Source

    app_module.MAX_ROWS = cap

    app = TopApp(Source(Endpoint("127.0.0.1:9")), "bench", 3600, 60)
    timings = []
    async with app.run_test(size=(200, 50)):
        app._scraper.stop()  # nothing listens there: no scrapes in this measurement
        for _ in range(rounds):
            app._rows = rows
            t0 = time.perf_counter()
            app._render_table()
            timings.append(time.perf_counter() - t0)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--containers", type=int, default=1000)
    parser.add_argument("--syscalls", type=int, default=50)
    args = parser.parse_args()
    rng = random.Random(23)
    fams = families(identities(args.containers, rng), args.syscalls, rng)
    renderer = Renderer()
    top_parser = model.parser()
    tracker = model.Tracker()
    top_parser.parse(renderer.render(fams, TEXT))  # the label cache, as after one scrape
    timings: dict[str, list[float]] = {k: [] for k in ("baseline", "top", "rates")}
    size = 0
    rows: list = []
    for i in range(args.rounds):
        bump(fams, rng)
        text = renderer.render(fams, TEXT)
        size = len(text)
        t0 = time.perf_counter()
        expected = baseline(text)
        gc.disable()  # as fetch.Source.scrape does
        t1 = time.perf_counter()
        parsed = top_parser.parse(text)
        t2 = time.perf_counter()
        frame = tracker.update(model.Scrape(float(i * 2), parsed))
        rows = model.select(frame)
        t3 = time.perf_counter()
        gc.enable()
        got = {
            name: {(tuple(sorted(lb[0])), v) for lb, v in samples.values()}
            for name, samples in parsed.items()
            if samples
        }
        if got != expected:
            raise SystemExit("parsers disagree: top's parser is wrong")
        timings["baseline"].append(t1 - t0)
        timings["top"].append(t2 - t1)
        timings["rates"].append(t3 - t2)
    from exporter.top.app import MAX_ROWS

    timings["table"] = asyncio.run(table_fill(rows, args.rounds, len(rows)))
    timings["capped"] = asyncio.run(table_fill(rows, args.rounds, MAX_ROWS))
    p50 = {k: statistics.median(v) * 1000 for k, v in timings.items()}
    p90 = {k: sorted(v)[int(len(v) * 0.9)] * 1000 for k, v in timings.items()}
    print(f"machine: {machine.describe()}")
    print(
        f"text: {size / 1e6:.1f} MB, {sum(len(f.samples) for f in fams)} series, "
        f"{len(rows)} rows, rounds: {args.rounds}, both parsers agree every round"
    )
    print(
        f"parse: prometheus_client p50 {p50['baseline']:.0f} ms (p90 {p90['baseline']:.0f}); "
        f"top p50 {p50['top']:.0f} ms (p90 {p90['top']:.0f}); "
        f"ratio {p50['top'] / p50['baseline']:.2f}"
    )
    print(f"rates and rows: p50 {p50['rates']:.0f} ms (p90 {p90['rates']:.0f})")
    print(
        f"table fill (UI thread), all {len(rows)} rows: p50 {p50['table']:.0f} ms "
        f"(p90 {p90['table']:.0f}); capped at {MAX_ROWS} (the view): "
        f"p50 {p50['capped']:.0f} ms (p90 {p90['capped']:.0f})"
    )


if __name__ == "__main__":
    main()
