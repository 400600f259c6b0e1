"""orb8: per-cgroup eBPF metrics for Kubernetes nodes."""

__version__ = "0.1.0"
