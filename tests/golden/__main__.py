"""Rewrite tests/golden/*.txt from the fixed node (python -m tests.golden)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from tests.golden import HERE, scrape_fixed_node

with tempfile.TemporaryDirectory() as root:
    for name, body in scrape_fixed_node(Path(root)).items():
        (HERE / name).write_text(body)
        print(f"wrote {HERE / name} ({body.count(chr(10))} lines)")
