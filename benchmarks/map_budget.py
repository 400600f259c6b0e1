"""Kernel memory of orb8's maps for a node shape (exporter/mapmemory.py), as markdown.

Computed, not measured: the kernel's map_mem_usage formulas applied to the
definitions each probe declares (exporter/sources/*/maps.py;
tests/kernel/test_map_memory.py checks them against the live kernel).
Non-preallocated hashes are shown at the occupancy the given containers
produce and full.

Usage: .venv/bin/python benchmarks/map_budget.py [--containers 1000] [--syscalls 64]
           [--cpus 64] [--slots N] [--traffic-per-container 4] [--tcp-per-container 5]
"""

from __future__ import annotations

import argparse

from exporter.kernel.mapmemory import map_memory, slots_needed
from exporter.registry import kernel_maps, load_settings

MiB = 1 << 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--containers", type=int, default=1000)
    parser.add_argument("--syscalls", type=int, default=64)
    parser.add_argument("--cpus", type=int, default=64)
    parser.add_argument("--slots", type=int, default=0, help="default: just enough, x4096")
    parser.add_argument("--traffic", type=int, default=16384)
    parser.add_argument("--tcp", type=int, default=8192)
    parser.add_argument("--flows", type=int, default=16384)
    parser.add_argument("--traffic-per-container", type=int, default=4)
    parser.add_argument("--tcp-per-container", type=int, default=5)
    args = parser.parse_args()
    slots = args.slots or slots_needed(args.containers, args.syscalls)
    occupancy = {
        "network_traffic": args.containers * args.traffic_per_container,
        "network_tcp": args.containers * args.tcp_per_container,
    }
    print(
        f"{args.containers} containers x {args.syscalls} syscalls, {args.cpus} possible CPUs, "
        f"syscall_slots={slots}, traffic={args.traffic}, tcp={args.tcp}, flows={args.flows}\n"
    )
    print("| map | type | max_entries | at this occupancy | full |")
    print("|---|---|---|---|---|")
    used = full = 0
    settings = load_settings(
        {
            "syscall_slots": slots,
            "network_traffic_entries": args.traffic,
            "network_tcp_entries": args.tcp,
            "network_flow_entries": args.flows,
        },
        environ={},
    )
    for m in kernel_maps(settings):
        now = map_memory(m, args.cpus, occupancy.get(m.name))
        worst = map_memory(m, args.cpus)
        used, full = used + now, full + worst
        entries = f"{m.max_entries}" + (
            f" ({occupancy[m.name]} used)" if m.name in occupancy else ""
        )
        print(f"| {m.name} | {m.type} | {entries} | {now / MiB:.2f} MiB | {worst / MiB:.2f} MiB |")
    print(f"| **total** | | | **{used / MiB:.1f} MiB** | **{full / MiB:.1f} MiB** |")


if __name__ == "__main__":
    main()
