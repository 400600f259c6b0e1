// Layouts shared by bpf/syscalls.c and user space (exporter/sources/syscalls/),
// which decodes them with the types BCC derives from these structs: map keys
// as numpy records (exporter/probes.py key_dtype), evidence records through
// probes.record_reader. Fixed-width fields, explicit padding. dangerous_event
// uses BCC's u64/u32: its ring buffer record decoder knows those names, not
// the UAPI __u64.
#ifndef ORB8_SYSCALLS_H
#define ORB8_SYSCALLS_H

// syscall_slots: one key per (cgroup, syscall key). dangerous_counts: one
// key per (cgroup, dangerous syscall), nr = the syscall's native number
// whatever ABI it entered through (the record says which).
struct syscall_pair {
    __u64 cgroup_id;
    __u32 nr;
    __u32 pad;
};

// dangerous_counts and dangerous_overflow values, updated atomically.
struct dangerous_value {
    __u64 calls;
    __u64 suppressed;  // calls given no evidence record by the cgroup's limit
};

// dangerous_buckets: a cgroup's evidence rate limit (GCRA, one CAS per record).
struct evidence_bucket {
    __u64 tat;         // theoretical arrival time of the next record, ns
    __u64 suppressed;  // calls refused a record, ever (while remembered)
    __u64 reported;    // `suppressed` as of the last record written
    __u64 last_ns;     // time of the last record written
};

// dangerous_event.flags
#define EVENT_OVERFLOW 1  // counted under cgroup="<overflow>": dangerous_counts was full

// One evidence record; user space turns it into a JSON log line.
struct dangerous_event {
    u64 time_ns;  // CLOCK_MONOTONIC
    u64 cgroup_id;
    u32 pid;      // thread id
    u32 tgid;     // process id
    u32 uid;
    u32 nr;       // syscall key: (ABI << 16) | number
    char comm[16];
    u64 suppressed;  // this cgroup's calls given no record since its previous record
    u64 since_ns;    // time of that previous record (0: none remembered)
    u32 flags;       // EVENT_*
    u32 pad;
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
