"""What orb8's start-up leaves resident (RssAnon), checked on the real kernel and BCC."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.kernel

HOOK_CHOICE = """
import json
import bcc
from exporter.kernel.attach import choose_sys_enter_hook
from exporter.memory import process_memory
before = process_memory()["RssAnon"]
hook = choose_sys_enter_hook()
print(json.dumps({
    "hook": hook,
    "grew": process_memory()["RssAnon"] - before,
    "symbol_caches": len(bcc.BPF._sym_caches),
}))
"""


def test_choosing_the_syscall_hook_keeps_no_kernel_symbol_cache():
    """BCC's support_raw_tracepoint() loads every kallsyms line into a symbol
    cache it keeps for good (~25 MiB here); the hook is chosen by name from
    /proc/kallsyms without it, and the answer is the raw tracepoint."""
    result = subprocess.run(
        [sys.executable, "-c", HOOK_CHOICE], cwd=ROOT, capture_output=True, text=True, check=True
    )
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["hook"] == "raw_tracepoint"
    assert out["symbol_caches"] == 0
    assert out["grew"] < 4 << 20
