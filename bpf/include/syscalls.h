// Layouts shared by bpf/syscalls.c and user space (exporter/sources/syscalls/),
// which decodes them with the types BCC derives from these structs: map keys
// as numpy records (exporter/probes.py key_dtype), evidence records through
// probes.record_reader. Fixed-width fields, explicit padding. dangerous_event
// uses BCC's u64/u32: its ring buffer record decoder knows those names, not
// the UAPI __u64.
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
    u64 time_ns;  // CLOCK_MONOTONIC
    u64 cgroup_id;
    u32 pid;      // thread id
    u32 tgid;     // process id
    u32 uid;
    u32 nr;
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
