"""The kubelet pod-resources API (v1): which pod and container hold which device.

The kubelet serves `v1.PodResourcesLister` over gRPC on a unix socket
(/var/lib/kubelet/pod-resources/kubelet.sock). orb8 needs only `List`, and of
its answer only pod and container names and their devices, so the v1
messages are declared here from the upstream proto
(k8s.io/kubelet/pkg/apis/podresources/v1/api.proto, same field numbers)
instead of generated: protobuf skips the fields we leave out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SERVICE = "v1.PodResourcesLister"
LIST_METHOD = f"/{SERVICE}/List"
# Device-plugin resources that are NVIDIA GPUs (whole, MIG slices, shared replicas).
GPU_RESOURCE = re.compile(r"^nvidia\.com/(gpu|mig-.*|gpu\.shared)$")


def _messages() -> dict[str, Any]:
    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="orb8/podresources_v1.proto", package="v1", syntax="proto3"
    )

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> None:
        msg = proto.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            added = msg.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                added.type_name = type_name

    one, many = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    message("ListPodResourcesRequest")
    message("ContainerDevices", ("resource_name", 1, F.TYPE_STRING, one, ""),
            ("device_ids", 2, F.TYPE_STRING, many, ""))  # fmt: skip
    message("ContainerResources", ("name", 1, F.TYPE_STRING, one, ""),
            ("devices", 2, F.TYPE_MESSAGE, many, ".v1.ContainerDevices"))  # fmt: skip
    message("PodResources", ("name", 1, F.TYPE_STRING, one, ""),
            ("namespace", 2, F.TYPE_STRING, one, ""),
            ("containers", 3, F.TYPE_MESSAGE, many, ".v1.ContainerResources"))  # fmt: skip
    message("ListPodResourcesResponse",
            ("pod_resources", 1, F.TYPE_MESSAGE, many, ".v1.PodResources"))  # fmt: skip
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {
        m.name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"v1.{m.name}"))
        for m in proto.message_type
    }


MESSAGES = _messages()
ListPodResourcesRequest = MESSAGES["ListPodResourcesRequest"]
ListPodResourcesResponse = MESSAGES["ListPodResourcesResponse"]


@dataclass(frozen=True)
class Owner:
    namespace: str
    pod: str
    container: str


def device_key(device_id: str) -> str:
    """A device id as DCGM's UUID label spells it: time-slicing replicas are
    `GPU-...::N` in the device plugin, the same GPU to DCGM."""
    return device_id.split("::", 1)[0]


def gpu_owners(response: Any) -> dict[str, list[Owner]]:
    """{GPU device id (UUID or index): containers holding it} from a List answer."""
    owners: dict[str, list[Owner]] = {}
    for pod in response.pod_resources:
        for container in pod.containers:
            for devices in container.devices:
                if not GPU_RESOURCE.match(devices.resource_name):
                    continue
                for device_id in devices.device_ids:
                    owner = Owner(pod.namespace, pod.name, container.name)
                    found = owners.setdefault(device_key(device_id), [])
                    if owner not in found:
                        found.append(owner)
    return owners


class PodResourcesClient:
    def __init__(self, socket: Path, timeout: float = 5.0) -> None:
        self.socket = socket
        self.timeout = timeout
        self._channel: Any = None
        self._list: Any = None

    def list_gpu_owners(self) -> Mapping[str, list[Owner]]:
        import grpc

        if self._channel is None:
            self._channel = grpc.insecure_channel(f"unix://{self.socket}")
            self._list = self._channel.unary_unary(
                LIST_METHOD,
                request_serializer=ListPodResourcesRequest.SerializeToString,
                response_deserializer=ListPodResourcesResponse.FromString,
            )
        response = self._list(ListPodResourcesRequest(), timeout=self.timeout)
        return gpu_owners(response)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
