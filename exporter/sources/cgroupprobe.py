"""What the BPF sources whose programs hang on the cgroup v2 root (dns,
network) share, written once: compile and attach in start(), detach and free
in close(), the kernel maps or the unit tests' in-memory stand-in
(use_maps()), and the agent-wide settings their factories pass on. The
attaching itself is the kernel layer's (exporter/kernel/attach.py,
CgroupAttachments: BPF links, or BPF_PROG_ATTACH where links are missing).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from exporter import kernel
from exporter.kernel import maps
from exporter.kernel.attach import Attachment, CgroupAttachments
from exporter.kernel.maps import KernelMaps, loaded
from exporter.model import MetricFamily
from exporter.sources.mapstats import MapStats, map_families, memory_family

if TYPE_CHECKING:
    import numpy as np

    from exporter.identity import Resolver
    from exporter.kernel.headers import KernelHeaders
    from exporter.sources import Context


class AgentOptions(TypedDict):
    """The constructor arguments of a cgroup probe's source that come from
    agent-wide settings, not the probe's own."""

    deleted_grace: float
    deleted_pod_grace: float | None
    headers: KernelHeaders | None
    bpf_dir: Path | None
    cgroup_root: Path | None


def agent_options(context: Context) -> AgentOptions:
    settings = context.settings
    return AgentOptions(
        deleted_grace=settings.deleted_cgroup_grace,
        deleted_pod_grace=settings.deleted_pod_grace,
        headers=context.headers,
        bpf_dir=settings.bpf_dir,
        cgroup_root=settings.cgroup_root,
    )


def check_capacities(**capacities: int) -> None:
    """Refuse a map capacity under 1, naming it."""
    for label, value in capacities.items():
        if value < 1:
            raise ValueError(f"{label} must be at least 1, got {value}")


class CgroupProbeSource(ABC):
    """A source whose programs are attached to the cgroup v2 root (or
    `cgroup_root`). A subclass sets `name`, `resolver` and `cgroup_root`,
    compiles its probe (_compile) and names the programs to attach
    (_programs); start() and close() are here."""

    name: str
    resolver: Resolver
    cgroup_root: Path | None

    def __init__(self, attach: str) -> None:
        """attach: "auto" | "link" | "prog_attach" (CgroupAttachments)."""
        self._cgroup = CgroupAttachments(attach)
        self._bpf: Any = None
        # The kernel maps (maps.BpfMaps once started); unit tests hand in an
        # in-memory stand-in through use_maps().
        self._maps: KernelMaps | None = None

    @abstractmethod
    def _reset_state(self) -> None:
        """Forget what the maps held: they start empty (start(), use_maps())."""

    @abstractmethod
    def _compile(self) -> Any:
        """The compiled probe (BCC's BPF object); raises kernel.ProbeError,
        which start() passes on as it is."""

    @abstractmethod
    def _programs(self, bpf: Any) -> list[tuple[Any, int]]:
        """(program, bpf_attach_type) to attach, loaded from `bpf`; a failure
        here is reported as a failure to attach."""

    @abstractmethod
    def summary(self) -> str: ...

    @property
    def attach_mode(self) -> str:
        return self._cgroup.mode

    @property
    def _attachments(self) -> list[Attachment]:
        return self._cgroup.attachments

    @property
    def _cgroup_fd(self) -> int | None:
        return self._cgroup.fd

    def use_maps(self, maps: KernelMaps) -> None:
        """Collect from `maps` (anything with maps.BpfMaps' methods) instead
        of a loaded probe: the unit tests' seam."""
        self._reset_state()
        self._maps = maps

    @property
    def _loaded_maps(self) -> KernelMaps:
        return loaded(self._maps, self.name)

    def start(self) -> None:
        if self._bpf is not None:
            return
        self._reset_state()  # fresh kernel maps: counters restart from zero
        root = self.cgroup_root or self.resolver.tree.root
        self._bpf = self._compile()
        try:
            programs = self._programs(self._bpf)
            self._cgroup.open(root)
            for fn, attach_type in programs:
                self._cgroup.attach(fn, attach_type)
        except Exception as e:
            self.close()
            raise kernel.ProbeError(f"attaching {self.name} probe to {root} failed: {e}") from e
        self._maps = maps.BpfMaps(self._bpf)
        # Under the source's own logger, as its other lines.
        logging.getLogger(type(self).__module__).info(
            "%s probe attached to %s: %s", self.name, root, self.summary()
        )

    def close(self) -> None:
        """Detach and free everything; safe to call twice."""
        self._cgroup.close()
        self._maps = None
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None

    # --- shared by collect() and retirement ---------------------------------

    def _bpf_map_families(self, stats: list[MapStats]) -> list[MetricFamily]:
        """orb8_bpf_map_* of the probe's bounded maps, and the kernel memory
        of all its maps."""
        return [*map_families(stats), memory_family(self._loaded_maps.memory())]

    def _take_retiring(
        self,
        map_name: str,
        keys: np.ndarray,
        values: np.ndarray,
        retiring: set[int],
        width: int,
    ) -> Iterator[tuple[np.void, int, list[int]]]:
        """(key, cgroup id, final counts) of each entry of `map_name` (read as
        keys/values by this collect) whose cgroup is retiring, deleted: read
        and deleted in one step, so what the kernel counted after the read is
        not lost; the read values if the kernel cannot do it in one step or
        the entry was already gone."""
        for row, read in zip(keys, values.tolist(), strict=True):
            cgroup_id = int(row["cgroup_id"])
            if cgroup_id in retiring:
                yield row, cgroup_id, self._loaded_maps.take(map_name, row.tobytes(), width) or read
