"""A dcgm-exporter over real HTTP and a kubelet pod-resources server over real
gRPC on a unix socket, both serving what the tests set.

The exposition text is built from dcgm-exporter's shipped counter lists
(tests/fixtures/dcgm/*.csv): every enabled field, one row per GPU, labelled
the way dcgm-exporter labels them (with or without its pod mapping)."""

from __future__ import annotations

import threading
import time
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc

from exporter.sources.dcgm.podresources import (
    SERVICE,
    ListPodResourcesRequest,
    ListPodResourcesResponse,
)
from tests.helpers import ROOT

COUNTER_LISTS = sorted((ROOT / "tests" / "fixtures" / "dcgm").glob("*.csv"))


def shipped_fields() -> dict[str, tuple[str, str]]:
    """{field: (prometheus type, help)} enabled in the shipped lists."""
    fields = {}
    for path in COUNTER_LISTS:
        for line in path.read_text().splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name, kind, help_text = (part.strip() for part in line.split(",", 2))
            if kind != "label":
                fields[name] = (kind, help_text)
    return fields


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    pods: tuple[tuple[str, str, str], ...] = ()  # (namespace, pod, container) as DCGM maps them


def value_of(field: str, gpu: Gpu) -> float:
    """A distinct, exactly representable value per field and GPU."""
    return float(sum(map(ord, field)) % 997 + 1000 * gpu.index)


def dcgm_text(gpus: list[Gpu], model: str = "NVIDIA H200") -> str:
    lines = []
    for field, (kind, help_text) in shipped_fields().items():
        lines.append(f"# HELP {field} {help_text}")
        lines.append(f"# TYPE {field} {kind}")
        for gpu in gpus:
            base = (
                f'gpu="{gpu.index}",UUID="{gpu.uuid}",pci_bus_id="00000000:00:0{gpu.index}.0",'
                f'device="nvidia{gpu.index}",modelName="{model}",Hostname="node-a",'
                'DCGM_FI_DRIVER_VERSION="580.159.04"'
            )
            # dcgm-exporter repeats a shared GPU's row once per pod, same value.
            for ns, pod, container in gpu.pods or (("", "", ""),):
                labels = base
                if pod:
                    labels += f',container="{container}",namespace="{ns}",pod="{pod}"'
                lines.append(f"{field}{{{labels}}} {value_of(field, gpu):g}")
    return "\n".join(lines) + "\n"


class DcgmServer:
    """dcgm-exporter's /metrics; body, status and delay can change at any time."""

    def __init__(self, body: str = "") -> None:
        self.body, self.status, self.delay = body, 200, 0.0
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                time.sleep(server.delay)
                data = server.body.encode()
                self.send_response(server.status)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/metrics"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class PodResourcesServer:
    """v1.PodResourcesLister/List on a unix socket, answering `allocations`:
    [(namespace, pod, container, resource name, [device ids])]."""

    def __init__(self, socket_path: Path) -> None:
        self.socket = socket_path
        self.allocations: list[tuple[str, str, str, str, list[str]]] = []
        self.calls = 0

        def list_pods(request, context):
            self.calls += 1
            response = ListPodResourcesResponse()
            for ns, pod, container, resource, devices in self.allocations:
                entry = response.pod_resources.add(name=pod, namespace=ns)
                c = entry.containers.add(name=container)
                c.devices.add(resource_name=resource, device_ids=devices)
            return response

        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "List": grpc.unary_unary_rpc_method_handler(
                    list_pods,
                    request_deserializer=ListPodResourcesRequest.FromString,
                    response_serializer=ListPodResourcesResponse.SerializeToString,
                )
            },
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self.server.add_generic_rpc_handlers((handler,))
        self.server.add_insecure_port(f"unix://{socket_path}")
        self.server.start()

    def stop(self) -> None:
        self.server.stop(grace=None)
