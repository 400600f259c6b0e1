"""Per-cgroup GPU attribution: orb8's view next to nvidia-smi's, and what a scrape costs.

Two load processes run in two fresh cgroups; orb8's GPU source (the same
code `orb8 run --probes gpu` uses) polls NVML and attributes memory and SM
share per cgroup.

  --real  on a GPU node (root, NVIDIA driver): the loads are CUDA processes
          (driver API through ctypes, no toolkit needed) that allocate memory
          and spin kernels; orb8's per-cgroup numbers are printed next to
          `nvidia-smi --query-compute-apps` and `nvidia-smi pmon`.
  --fake  anywhere (root): the loads are idle processes and NVML is the fake
          libnvidia-ml.so.1 replaying the real H200 capture with its pids
          rewritten to them (what the tests do).

Both also measure, in the same run, a full NVML poll (background thread)
against a collect (what a scrape does): the ratio shows a scrape never pays
for NVML. Appends a report to RESULTS.md.

Usage: .venv/bin/python benchmarks/gpu_attribution.py --fake | --real [--no-append]
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from exporter.identity import CgroupTree, Resolver, find_cgroup2_mount  # noqa: E402
from exporter.sources.gpu.source import GpuSource  # noqa: E402

CAPTURE = ROOT / "tests" / "fixtures" / "nvml-h200-two-cgroups.json"
# A kernel that spins: keeps SMs busy for a set number of iterations.
SPIN_PTX = b"""
.version 7.0
.target sm_70
.address_size 64
.visible .entry spin(.param .u64 iters)
{
    .reg .pred %p;
    .reg .b64 %rd<4>;
    ld.param.u64 %rd1, [iters];
    mov.u64 %rd2, 0;
LOOP:
    add.u64 %rd2, %rd2, 1;
    setp.lt.u64 %p, %rd2, %rd1;
    @%p bra LOOP;
    ret;
}
"""


def cuda_load(memory_mib: int, seconds: float) -> None:
    """Child process: hold memory_mib of GPU memory and spin kernels for `seconds`."""
    cuda = ctypes.CDLL("libcuda.so.1")

    def check(result: int, what: str) -> None:
        if result != 0:
            raise SystemExit(f"{what} failed: CUresult {result}")

    check(cuda.cuInit(0), "cuInit")
    device, context = ctypes.c_int(), ctypes.c_void_p()
    check(cuda.cuDeviceGet(ctypes.byref(device), 0), "cuDeviceGet")
    check(cuda.cuDevicePrimaryCtxRetain(ctypes.byref(context), device), "cuDevicePrimaryCtxRetain")
    check(cuda.cuCtxSetCurrent(context), "cuCtxSetCurrent")
    pointer = ctypes.c_uint64()
    check(
        cuda.cuMemAlloc_v2(ctypes.byref(pointer), ctypes.c_size_t(memory_mib << 20)), "cuMemAlloc"
    )
    module, function = ctypes.c_void_p(), ctypes.c_void_p()
    check(cuda.cuModuleLoadData(ctypes.byref(module), SPIN_PTX), "cuModuleLoadData")
    check(cuda.cuModuleGetFunction(ctypes.byref(function), module, b"spin"), "cuModuleGetFunction")
    iters = ctypes.c_uint64(1 << 20)
    params = (ctypes.c_void_p * 1)(ctypes.cast(ctypes.byref(iters), ctypes.c_void_p))
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        check(
            cuda.cuLaunchKernel(function, 1024, 1, 1, 256, 1, 1, 0, None, params, None),
            "cuLaunchKernel",
        )
        check(cuda.cuCtxSynchronize(), "cuCtxSynchronize")


def start_in_cgroup(cgroup: Path, argv: list[str]) -> subprocess.Popen:
    procs = str(cgroup / "cgroup.procs")

    def enter() -> None:
        with open(procs, "w") as f:
            f.write(str(os.getpid()))

    return subprocess.Popen(argv, preexec_fn=enter)


def measure(source: GpuSource, rounds: int = 20) -> tuple[float, float]:
    """Median seconds of a full NVML poll and of a collect, same run."""
    assert source.poller is not None
    polls, collects = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        source.snapshot = source.poller.poll()
        polls.append(time.perf_counter() - started)
        started = time.perf_counter()
        source.collect()
        collects.append(time.perf_counter() - started)
    return statistics.median(polls), statistics.median(collects)


def per_cgroup(source: GpuSource) -> dict[str, tuple[float, float]]:
    """{cgroup path: (memory bytes, SM %)} from orb8's own families."""
    view: dict[str, list[float]] = {}
    for family in source.collect():
        if family.name not in ("orb8_gpu_memory_used_bytes", "orb8_gpu_utilization"):
            continue
        for labels, value in family.samples:
            entry = view.setdefault(labels[3], [0.0, 0.0])
            entry[0 if family.name == "orb8_gpu_memory_used_bytes" else 1] += value
    return {path: (mem, sm) for path, (mem, sm) in view.items()}


def run_child(cgroups: list[str], interval: float) -> dict:
    """In the process that loads NVML: poll, attribute, time."""
    root = find_cgroup2_mount()
    source = GpuSource(Resolver(CgroupTree(root)), interval=3600)
    source.start()
    try:
        time.sleep(interval)  # let NVML gather process samples over a full interval
        source.snapshot = source.poller.poll() if source.poller else None
        view = per_cgroup(source)
        poll, collect = measure(source)
        driver = source.poller.driver if source.poller else ""
        models = [d.model for d in source.poller.devices] if source.poller else []
    finally:
        source.close()
    return {
        "cgroups": {c: view.get(c) for c in cgroups},
        "poll_s": poll,
        "collect_s": collect,
        "driver": driver,
        "models": models,
    }


def nvidia_smi() -> str:
    out = []
    for argv in (
        ["nvidia-smi", "-L"],
        ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv"],
        ["nvidia-smi", "pmon", "-c", "1", "-s", "um"],
    ):
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            out.append(f"$ {' '.join(argv)}\n{result.stdout}{result.stderr}")
        except (OSError, subprocess.TimeoutExpired) as e:
            out.append(f"$ {' '.join(argv)}\n{e}")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--fake", action="store_true")
    mode.add_argument("--real", action="store_true")
    mode.add_argument("--load", type=int, metavar="MIB", help=argparse.SUPPRESS)
    mode.add_argument("--child", metavar="JSON", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()

    if args.load is not None:
        cuda_load(args.load, args.seconds)
        return
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(run_child(spec["cgroups"], spec["interval"])))
        return

    root = find_cgroup2_mount()
    tag = uuid.uuid4().hex[:8]
    cgroups = [root / f"orb8-gpu-bench-{tag}-{name}" for name in ("a", "b")]
    procs: list[subprocess.Popen] = []
    env = dict(os.environ)
    try:
        for cgroup in cgroups:
            cgroup.mkdir()
        if args.real:
            for cgroup, mib in zip(cgroups, (4096, 7168), strict=True):
                load = [
                    sys.executable,
                    __file__,
                    "--load",
                    str(mib),
                    "--seconds",
                    str(args.seconds),
                ]
                procs.append(start_in_cgroup(cgroup, load))
            time.sleep(5)  # contexts created, kernels running
            interval = 3.0
        else:
            subprocess.run(["make", "-s", "fake-nvml"], cwd=ROOT, check=True)
            for cgroup in cgroups:
                procs.append(start_in_cgroup(cgroup, ["sleep", str(args.seconds)]))
            data = json.loads(CAPTURE.read_text())
            pids = {437: procs[0].pid, 438: procs[1].pid}
            for state in [data["idle"], *data["busy"], data["after"]]:
                for device in state["devices"]:
                    for key in ("compute_processes", "process_utilization"):
                        if isinstance(device.get(key), list):
                            for entry in device[key]:
                                entry["pid"] = pids.get(entry["pid"], entry["pid"])
            capture = Path(f"/tmp/orb8-gpu-bench-{tag}.json")
            capture.write_text(json.dumps(data))
            env.update(
                LD_LIBRARY_PATH=str(ROOT / "build" / "fake-nvml"),
                FAKE_NVML_CAPTURE=str(capture),
                FAKE_NVML_STATE="busy.0",
            )
            interval = 0.0
        rel = ["/" + str(c.relative_to(root)) for c in cgroups]
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                json.dumps({"cgroups": rel, "interval": interval}),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=True,
        )
        result = json.loads(child.stdout.strip().splitlines()[-1])
        smi = nvidia_smi() if args.real else ""
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        for cgroup in cgroups:
            if cgroup.exists():
                cgroup.rmdir()

    lines = [
        f"## gpu_attribution ({'real GPU' if args.real else 'fake NVML, H200 capture busy.0'}), "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {platform.node()}, {platform.machine()}, GPUs {', '.join(result['models'])}, "
        f"driver {result['driver']}",
        "",
        "| cgroup | orb8 memory (bytes) | orb8 SM % |",
        "|---|---|---|",
    ]
    for path, view in result["cgroups"].items():
        memory, sm = view if view else (0, 0)
        lines.append(f"| `{path}` | {memory:.0f} | {sm:.1f} |")
    ratio = result["collect_s"] / result["poll_s"] if result["poll_s"] else float("nan")
    lines += [
        "",
        f"Full NVML poll (background): {result['poll_s'] * 1e3:.2f} ms median; a collect "
        f"(inside a scrape): {result['collect_s'] * 1e3:.3f} ms; ratio collect/poll {ratio:.3f}.",
    ]
    if smi:
        lines += ["", "```", smi.rstrip(), "```"]
    report = "\n".join(lines) + "\n"
    print(report)
    if not args.no_append:
        with (HERE / "RESULTS.md").open("a") as f:
            f.write("\n" + report)


if __name__ == "__main__":
    main()
