"""/healthz and /readyz of a real `orb8 run`: ready only once the pod watch
has synced, alive all along."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import pytest

from tests.helpers import free_port
from tests.k8s_apiserver import ApiServer, write_kubeconfig

pytestmark = pytest.mark.kernel


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_ready_only_after_the_pod_watch_synced(start_exporter, tmp_path):
    api = ApiServer(port=free_port())  # not listening yet: the watch cannot sync
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url)
    exporter = start_exporter("--kubeconfig", str(kubeconfig), "--node-name", "node-a")
    base = exporter.url.removesuffix("/metrics")
    try:
        assert get(f"{base}/healthz") == (200, "ok\n")
        code, body = get(f"{base}/readyz")
        assert code == 503, body
        assert "pod watch has not synced yet" in body
        assert "probe syscalls: attached" in body and "probe network: attached" in body

        api.start()
        deadline = time.monotonic() + 60
        while (answer := get(f"{base}/readyz"))[0] != 200:
            assert time.monotonic() < deadline, answer
            time.sleep(0.5)
        assert "pod watch: synced" in answer[1]
    finally:
        api.stop()
