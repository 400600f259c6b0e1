"""cgroup id -> identity (namespace, pod, container, cgroup).

The kernel hands probes a cgroup v2 id (the inode number of the cgroup's
directory). cgroupfs.py turns ids into paths; this package turns paths into
the identity labels every per-workload series carries.
"""

from exporter.identity.cgroupfs import CgroupTree, find_cgroup2_mount
from exporter.identity.resolver import Resolution, Resolver

__all__ = ["CgroupTree", "Resolution", "Resolver", "find_cgroup2_mount"]
