// Layouts shared by bpf/syscalls.c and user space (exporter/sources/syscalls/):
// the map keys are decoded with numpy dtypes built from BCC's own table types
// (exporter/probes.py key_dtype), the evidence record with the ctypes mirror
// in exporter/sources/syscalls/evidence.py (ring buffer records have no BCC
// table type; keep that one in step). Fixed-width fields, explicit padding.
#ifndef ORB8_SYSCALLS_H
#define ORB8_SYSCALLS_H

// syscall_slots and dangerous_counts: one key per (cgroup, syscall key).
struct syscall_pair {
    __u64 cgroup_id;
    __u32 nr;
    __u32 pad;
};

// One evidence record; user space turns it into a JSON log line.
struct dangerous_event {
    __u64 time_ns;  // CLOCK_MONOTONIC
    __u64 cgroup_id;
    __u32 pid;      // thread id
    __u32 tgid;     // process id
    __u32 uid;
    __u32 nr;
    char comm[16];
};

// Ring buffer accounting, per CPU: written + dropped = every flagged call.
enum ringbuf_stat {
    RB_WRITTEN,
    RB_DROPPED,   // not written for any reason (includes RB_SAMPLED)
    RB_SAMPLED,   // dropped on purpose while the buffer was over 90% full
    RB_PEAK,      // highest backlog seen, bytes (user space resets it)
    RB_TICK,      // sampling counter
    RB_STATS,
};

#endif
