"""Generate deploy/seccomp/orb8.json: a runtime default seccomp profile that
also lets orb8's two capabilities do what they are for.

Container runtimes' default profiles (here containers-common's, as used by
podman and CRI-O) allow bpf() and perf_event_open() only to CAP_SYS_ADMIN,
which orb8 does not get. This keeps every other rule and adds: bpf() with
CAP_BPF, perf_event_open() with CAP_PERFMON. tests/kernel/test_container.py
runs the image under the result with the DaemonSet's capabilities.

Usage: python tools/gen_seccomp_profile.py [RUNTIME_DEFAULT_JSON]
       (default /usr/share/containers/seccomp.json, from golang-github-containers-common)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "deploy" / "seccomp" / "orb8.json"
GRANTS = {"bpf": "CAP_BPF", "perf_event_open": "CAP_PERFMON"}


def orb8_profile(default: dict) -> dict:
    """Take bpf/perf_event_open out of the default's CAP_SYS_ADMIN rules and
    give each its own three: allowed with CAP_SYS_ADMIN, allowed with its
    own capability, EPERM otherwise (as the default answers)."""
    rules = []
    for rule in default["syscalls"]:
        names = [n for n in rule["names"] if n not in GRANTS]
        if names:
            rules.append({**rule, "names": names})
    for syscall, cap in GRANTS.items():
        comment = f"orb8: {syscall} also with {cap}, not only CAP_SYS_ADMIN"
        rules += [
            {"names": [syscall], "action": "SCMP_ACT_ALLOW", "args": [], "comment": comment,
             "includes": {"caps": ["CAP_SYS_ADMIN"]}, "excludes": {}},
            {"names": [syscall], "action": "SCMP_ACT_ALLOW", "args": [], "comment": comment,
             "includes": {"caps": [cap]}, "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": [syscall], "action": "SCMP_ACT_ERRNO", "args": [], "comment": comment,
             "includes": {}, "excludes": {"caps": ["CAP_SYS_ADMIN", cap]},
             "errnoRet": 1, "errno": "EPERM"},
        ]  # fmt: skip
    return {**default, "syscalls": rules}


def main(argv: list[str]) -> int:
    source = Path(argv[1]) if len(argv) > 1 else Path("/usr/share/containers/seccomp.json")
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(orb8_profile(json.loads(source.read_text())), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
