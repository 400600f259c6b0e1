"""The kernel layer: everything that touches BCC, libbcc or ctypes for BPF.

One module per job, so sources stay readable and `orb8 diagnose`/`check`
exercise exactly the code `orb8 run` uses:

  headers     kernel headers for BCC (node, kheaders, shipped), probe sources
  compiler    BCC, libbcc, compiling a probe
  attach      feature probes, tracepoints, cgroup programs through BPF links
  maps        batch reads, per-CPU sums, deletes, ring buffers, BpfMaps
  stats       the kernel's own figures on orb8's programs and maps (fdinfo)
  btf         struct sizes and offsets from the running kernel's BTF
  percpu      per-CPU value sums in place, possible CPUs
  mapmemory   a map's kernel memory from its definition (the budget)

Sources import what they use from here; nothing else in orb8 imports BCC.
"""

from __future__ import annotations


class ProbeError(RuntimeError):
    """A probe could not be compiled, loaded or attached; the message says why."""
