"""The image, run the way deploy/base/daemonset.yaml runs it, counts exactly.

The container gets exactly the DaemonSet's securityContext (capabilities,
no privilege escalation, read-only root, seccomp), its hostPath mounts
(read-only as declared), its emptyDir and its host namespaces, translated
to podman flags from the YAML itself, so the manifest cannot drift from
what is tested. Workloads run in test cgroups on the host; their exact
syscall and network counts are read from the container's /metrics.

Then the other direction: without any one of the added capabilities, or
under the runtime's default seccomp profile, `orb8 check` fails, so the set
is not more than needed. The image is built by scripts/build-image.sh (the
`make image` path; cached: seconds when nothing changed, ~3 min from a clean
machine, see docs/deploying.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import runpy
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from exporter.sources.syscalls import native_syscall_numbers
from tests.helpers import ROOT, free_port, run_workload, scrape, series
from tests.unit.test_lock import applicable

pytestmark = pytest.mark.kernel

PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
VERSION = __import__("exporter").__version__
# One tag per checkout: checkouts sharing a machine (and its image store)
# do not test each other's image.
IMAGE = f"localhost/orb8-test-{hashlib.sha1(str(ROOT).encode()).hexdigest()[:8]}:{VERSION}"
SIZE_GOAL = 350_000_000  # bytes unpacked; docs/deploying.md#the-image
DATAGRAMS, PAYLOAD, UDP_IPV4_HEADERS = 500, 100, 28


def daemonset_pod() -> dict:
    docs = yaml.safe_load_all((ROOT / "deploy" / "base" / "daemonset.yaml").read_text())
    (daemonset,) = [d for d in docs if d and d["kind"] == "DaemonSet"]
    return daemonset["spec"]["template"]["spec"]


def podman_flags(
    pod: dict,
    node_name: str,
    drop_cap: str = "",
    seccomp: str = "",
    host_dirs: dict[str, Path] | None = None,
) -> list[str]:
    """The pod spec as `podman run` flags: what a kubelet + runc would set up.
    `host_dirs` replaces a hostPath's node directory (a node without headers)."""
    (container,) = pod["containers"]
    security = container["securityContext"]
    flags = ["--user", str(security["runAsUser"])]
    assert security["privileged"] is False
    flags += [f"--cap-drop={c}" for c in security["capabilities"]["drop"]]
    flags += [f"--cap-add=CAP_{c}" for c in security["capabilities"]["add"] if c != drop_cap]
    if security["allowPrivilegeEscalation"] is False:
        flags += ["--security-opt", "no-new-privileges"]
    if security["readOnlyRootFilesystem"]:
        flags += ["--read-only", "--read-only-tmpfs=false"]
    profile = seccomp or security["seccompProfile"]["type"]
    if profile == "Unconfined":
        flags += ["--security-opt", "seccomp=unconfined"]
    elif profile == "Localhost":  # the profile orb8 ships, as a node would have it
        flags += ["--security-opt", f"seccomp={ROOT / 'deploy' / 'seccomp' / 'orb8.json'}"]
    else:
        assert profile == "RuntimeDefault"  # podman's default profile
    if pod.get("hostPID"):
        flags.append("--pid=host")
    if pod.get("hostNetwork"):
        flags.append("--network=host")
    # Kubernetes gives a pod a private cgroup namespace on cgroup v2 hosts.
    flags.append("--cgroupns=private")
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "hostPath" in volume:
            host = (host_dirs or {}).get(mount["mountPath"], Path(volume["hostPath"]["path"]))
            if volume["hostPath"].get("type") == "DirectoryOrCreate":
                host.mkdir(parents=True, exist_ok=True)  # what the kubelet does
            mode = "ro" if mount.get("readOnly") else "rw"
            flags += ["-v", f"{host}:{mount['mountPath']}:{mode}"]
        elif "emptyDir" in volume:
            size = volume["emptyDir"]["sizeLimit"].removesuffix("i").lower()  # 16Mi -> 16m
            flags += ["--tmpfs", f"{mount['mountPath']}:rw,size={size}"]
        else:
            raise AssertionError(f"volume kind not translated: {volume}")
    for env in container["env"]:
        if "value" in env:  # NVIDIA_*: no NVIDIA runtime here, plain variables
            flags += ["-e", f"{env['name']}={env['value']}"]
            continue
        assert env["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
        flags += ["-e", f"{env['name']}={node_name}"]
    return flags


@pytest.fixture(scope="module", autouse=True)
def kubelet_dirs() -> Iterator[None]:
    """hostPath DirectoryOrCreate dirs the translation makes; removed afterwards
    when this machine had none (no kubelet here)."""
    volumes = daemonset_pod()["volumes"]
    paths = [
        Path(v["hostPath"]["path"])
        for v in volumes
        if v.get("hostPath", {}).get("type") == "DirectoryOrCreate"
    ]
    missing = [p for path in paths for p in (path, *path.parents) if not p.exists()]
    yield
    for path in sorted(missing, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            path.rmdir()


@pytest.fixture(scope="module")
def image() -> str:
    build = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-image.sh")],
        capture_output=True,
        text=True,
        env={"IMAGE": IMAGE, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    assert build.returncode == 0, build.stdout + build.stderr
    return IMAGE


@contextlib.contextmanager
def daemonset_container(
    image: str, port: int, host_dirs: dict[str, Path] | None = None
) -> Iterator[str]:
    pod = daemonset_pod()
    name = f"orb8-test-{uuid.uuid4().hex[:10]}"
    (container,) = pod["containers"]
    args = [*container["args"], "--listen", f"127.0.0.1:{port}"]  # the last --listen wins
    subprocess.run(
        [
            *PODMAN,
            "run",
            "-d",
            "--name",
            name,
            *podman_flags(pod, "node-a", host_dirs=host_dirs),
            image,
            *args,
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield name
        # What the kubelet does on pod deletion; orb8 detaches every probe and
        # exits 0. (Sent with `podman kill`: this podman's `stop` does not
        # deliver the signal under --pid=host here.)
        subprocess.run([*PODMAN, "kill", "--signal", "TERM", name], check=True, capture_output=True)
        waited = subprocess.run([*PODMAN, "wait", name], capture_output=True, text=True, timeout=30)
        assert waited.stdout.strip() == "0", "orb8 did not exit cleanly on SIGTERM"
    finally:
        logs = subprocess.run([*PODMAN, "logs", name], capture_output=True, text=True)
        subprocess.run([*PODMAN, "rm", "-f", name], capture_output=True)
        sys.stderr.write(logs.stdout[-4000:] + logs.stderr[-4000:])


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_ready(base: str, name: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            if get(f"{base}/readyz")[0] == 200:
                return
        state = subprocess.run(
            [*PODMAN, "inspect", "-f", "{{.State.Running}}", name], capture_output=True, text=True
        ).stdout.strip()
        assert state == "true", f"container {name} exited"
        assert time.monotonic() < deadline, f"{base}/readyz never became ready"
        time.sleep(0.5)


def udp_in_cgroup(cgroup: Path, count: int) -> None:
    """One process in `cgroup` sends `count` datagrams to its own socket on loopback."""
    script = (
        "import os, socket, sys\n"
        "open(os.path.join(sys.argv[1], 'cgroup.procs'), 'w').write(str(os.getpid()))\n"
        "rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); rx.bind(('127.0.0.1', 0))\n"
        "tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for _ in range(int(sys.argv[2])):\n"
        f"    tx.sendto(b'x' * {PAYLOAD}, rx.getsockname()); rx.recv(4096)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(cgroup), str(count)], check=True)


def assert_exact_counts(base: str, cgroups, cgroup2_root: Path, workload: Path) -> None:
    syscalls_cgroup, network_cgroup = cgroups.make(), cgroups.make()
    getppid = native_syscall_numbers()["getppid"]
    run_workload(workload, syscalls_cgroup, f"{getppid}:4321")
    udp_in_cgroup(network_cgroup, DATAGRAMS)

    samples = scrape(f"{base}/metrics")
    label = "/" + syscalls_cgroup.relative_to(cgroup2_root).as_posix()
    assert series(samples, "orb8_syscalls_total", cgroup=label, syscall="getppid") == 4321
    net = {"cgroup": "/" + network_cgroup.relative_to(cgroup2_root).as_posix()}
    for direction in ("egress", "ingress"):
        labels = dict(net, direction=direction, protocol="udp", family="ipv4")
        assert series(samples, "orb8_network_packets_total", **labels) == DATAGRAMS
        assert series(samples, "orb8_network_bytes_total", **labels) == DATAGRAMS * (
            PAYLOAD + UDP_IPV4_HEADERS
        )
    assert series(samples, "orb8_probe_up", probe="syscalls") == 1
    assert series(samples, "orb8_probe_up", probe="network") == 1


def test_daemonset_container_counts_exactly(image, cgroups, cgroup2_root, workload):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with daemonset_container(image, port) as name:
        wait_ready(base, name)
        assert get(f"{base}/healthz") == (200, "ok\n")
        diagnose = subprocess.run(
            [*PODMAN, "exec", name, "orb8", "diagnose"], capture_output=True, text=True
        )
        assert "exactly the DaemonSet's set" in diagnose.stdout, diagnose.stdout
        assert_exact_counts(base, cgroups, cgroup2_root, workload)


def documented_podman_run() -> list[str]:
    """The `podman run` of docs/deploying.md's plain-host section, as argv."""
    text = (ROOT / "docs" / "deploying.md").read_text()
    match = re.search(r"```sh\n# one-off: podman run\n(.*?)```", text, re.S)
    assert match, "docs/deploying.md lost its one-off podman run block"
    return shlex.split(match.group(1).replace("\\\n", " "))


def documented_flags(node_name: str) -> list[str]:
    """Its flags between `podman run` and the image, less --rm and --name."""
    argv = documented_podman_run()
    assert argv[:2] == ["podman", "run"] and argv[-1] == "run", argv
    flags = argv[2:-2]
    assert argv[-2].startswith("ghcr.io/orb8/orb8:"), argv
    assert flags[:3] == ["--rm", "--name", "orb8"], flags
    return [f.replace("$(hostname)", node_name) for f in flags[3:]]


def pairs(flags: list[str]) -> set[tuple[str, ...]]:
    """Flags as a set of (flag,) or (flag, value): order does not matter to podman."""
    found, i = set(), 0
    while i < len(flags):
        if flags[i] in ("-v", "-e", "--tmpfs", "--security-opt", "--user"):
            found.add((flags[i], flags[i + 1]))
            i += 2
        else:
            found.add((flags[i],))
            i += 1
    return found


def test_documented_podman_run_is_the_daemonset_less_the_kubelet():
    """The plain-host command has every privilege, mount and limit of the
    DaemonSet's translation and nothing more, less what needs a kubelet or
    the NVIDIA runtime (the pod-resources socket, the NVIDIA_* variables)."""
    daemonset = pairs(podman_flags(daemonset_pod(), "node-a"))
    kubelet_only = {
        f
        for f in daemonset
        if (f[0] == "-v" and "pod-resources" in f[1]) or (f[0] == "-e" and "NVIDIA" in f[1])
    }
    assert len(kubelet_only) == 3, kubelet_only
    assert pairs(documented_flags("node-a")) == daemonset - kubelet_only


def test_documented_podman_run_counts_exactly(image, cgroups, cgroup2_root, workload):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    name = f"orb8-oneoff-{uuid.uuid4().hex[:10]}"
    subprocess.run(
        [
            *PODMAN,
            "run",
            "-d",
            "--name",
            name,
            *documented_flags("node-a"),
            image,
            "run",
            "--listen",
            f"127.0.0.1:{port}",
        ],
        check=True,
        capture_output=True,
    )
    try:
        wait_ready(base, name)
        assert_exact_counts(base, cgroups, cgroup2_root, workload)
    finally:
        subprocess.run([*PODMAN, "rm", "-f", name], capture_output=True)


def test_node_without_kernel_headers_uses_the_image_headers(
    image, cgroups, cgroup2_root, workload, tmp_path
):
    """GKE COS, Bottlerocket, Talos, Flatcar: /lib/modules and /usr/src hold no
    headers (and this kernel has no kheaders): orb8 compiles against the headers
    the image ships and counts exactly, under the same privileges."""
    assert not Path("/sys/kernel/kheaders.tar.xz").exists(), "this test needs a kernel without"
    empty = {"/lib/modules": tmp_path / "modules", "/usr/src": tmp_path / "src"}
    for directory in empty.values():
        directory.mkdir()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with daemonset_container(image, port, host_dirs=empty) as name:
        wait_ready(base, name)
        diagnose = subprocess.run(
            [*PODMAN, "exec", name, "orb8", "diagnose"], capture_output=True, text=True
        )
        assert "shipped in the image" in diagnose.stdout, diagnose.stdout
        assert_exact_counts(base, cgroups, cgroup2_root, workload)
        logs = subprocess.run([*PODMAN, "logs", name], capture_output=True, text=True)
        assert "kernel headers: /usr/lib/orb8/kernel-headers (shipped in the image" in (
            logs.stdout + logs.stderr
        )


def check_in_container(image: str, **change: str) -> subprocess.CompletedProcess:
    flags = podman_flags(daemonset_pod(), "node-a", **change)
    return subprocess.run(
        [*PODMAN, "run", "--rm", *flags, image, "check"], capture_output=True, text=True
    )


@pytest.mark.parametrize(
    ("cap", "failing"),
    [
        ("BPF", {"syscalls", "network"}),
        ("PERFMON", {"syscalls", "network"}),
        ("NET_ADMIN", {"network"}),
    ],
)
def test_each_added_capability_is_needed(image, cap, failing):
    assert cap in daemonset_pod()["containers"][0]["securityContext"]["capabilities"]["add"]
    result = check_in_container(image, drop_cap=cap)
    assert result.returncode == 1, result.stdout + result.stderr
    failed = {line.split()[1].rstrip(":") for line in result.stdout.splitlines() if "FAIL" in line}
    assert failed == failing, result.stdout


def runtime_default_allows(syscall: str, caps: set[str]) -> bool:
    """Whether podman's default seccomp profile lets a container with `caps` make
    `syscall`: the first rule naming it whose capability conditions hold decides."""
    path = Path("/usr/share/containers/seccomp.json")  # containers.conf's default
    profile = json.loads(path.read_text())
    for rule in profile["syscalls"]:
        includes = set((rule.get("includes") or {}).get("caps") or ())
        excludes = set((rule.get("excludes") or {}).get("caps") or ())
        if syscall in rule["names"] and includes <= caps and not excludes & caps:
            return rule["action"] == "SCMP_ACT_ALLOW"
    return profile["defaultAction"] == "SCMP_ACT_ALLOW"


def test_runtime_default_seccomp_blocks_bpf_but_the_shipped_profile_does_not(image):
    # containers-common releases differ: Debian 12's default profile allows bpf
    # and perf_event_open only with CAP_SYS_ADMIN, newer ones with CAP_BPF and
    # CAP_PERFMON too. The expectation follows the profile this podman uses.
    caps = daemonset_pod()["containers"][0]["securityContext"]["capabilities"]["add"]
    needed = ("bpf", "perf_event_open")
    allowed = all(runtime_default_allows(s, {f"CAP_{c}" for c in caps}) for s in needed)
    result = check_in_container(image, seccomp="RuntimeDefault")
    assert result.returncode == (0 if allowed else 1), result.stdout + result.stderr
    assert ("FAIL" in result.stdout) != allowed, result.stdout
    # deploy/seccomp/orb8.json = that default + bpf with CAP_BPF and
    # perf_event_open with CAP_PERFMON: the alternative to Unconfined.
    result = check_in_container(image, seccomp="Localhost")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK    syscalls" in result.stdout and "OK    network" in result.stdout


def test_the_image_is_small_in_privilege_and_labelled(image):
    inspect = subprocess.run(
        [
            *PODMAN,
            "image",
            "inspect",
            "-f",
            "{{json .Config.Labels}}|{{.Config.User}}|{{.Size}}",
            image,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    labels_json, user, size = inspect.split("|")
    labels = json.loads(labels_json)
    for key in ("title", "source", "licenses"):
        assert labels[f"org.opencontainers.image.{key}"]
    assert labels["org.opencontainers.image.version"] == VERSION
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert labels["org.opencontainers.image.revision"] in (head, f"{head}-dirty")
    assert user == "0:0"
    assert int(size) <= SIZE_GOAL, f"{int(size) / 1e6:.0f} MB"
    tools = subprocess.run(
        [
            *PODMAN,
            "run",
            "--rm",
            "--entrypoint",
            "sh",
            image,
            "-c",
            "for t in gcc cc clang ld as make; do command -v $t; done; orb8 --version",
        ],
        capture_output=True,
        text=True,
    )
    assert tools.stdout.strip() == f"orb8 {VERSION}", "no compiler toolchain"


def test_the_sbom_next_to_the_image_lists_what_is_in_it(image):
    """build/<image>.spdx.json (scripts/build-image.sh): every Debian package
    installed in the image and every Python distribution, at the versions of
    requirements.lock; the lock's packages the image prunes are all it lacks."""
    sbom = json.loads(
        (ROOT / "build" / f"{image.rsplit('/', 1)[1].replace(':', '-')}.spdx.json").read_text()
    )
    purls = [
        ref["referenceLocator"]
        for package in sbom["packages"]
        for ref in package.get("externalRefs", [])
        if ref["referenceType"] == "purl"
    ]
    pypi = dict(p.removeprefix("pkg:pypi/").split("@") for p in purls if p.startswith("pkg:pypi/"))
    deb = {
        p.removeprefix("pkg:deb/debian/").split("@")[0]: p.split("@")[1].split("?")[0]
        for p in purls
        if p.startswith("pkg:deb/")
    }
    assert pypi.pop("orb8") == VERSION
    locked = applicable((ROOT / "requirements.lock").read_text())
    assert {name: locked.get(name) for name in pypi} == pypi
    pruned = runpy.run_path(str(ROOT / "scripts" / "slim-image.py"))["UNUSED_DISTRIBUTIONS"]
    assert set(locked) - set(pypi) == {*pruned, "setuptools"}
    installed = subprocess.run(
        [
            *PODMAN,
            "run",
            "--rm",
            "--entrypoint",
            "dpkg-query",
            image,
            "-W",
            "-f",
            "${Package} ${Version}\\n",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert deb == dict(line.split() for line in installed.splitlines())
    assert "python3-bpfcc" in deb and "perl" not in deb
