// syscalls.c: exact syscall counts per (cgroup v2 id, syscall number).
//
// This program runs on every syscall of every process on the node, so the
// per-event cost is what matters. Measured on the dev VM (benchmarks/), a
// hash lookup per event costs about as much as the tracepoint itself, and
// even bpf_get_current_cgroup_id() costs a third of it. So the hot path
// makes no hash lookup, and no helper call except the one that tells an
// i386 syscall from a native one (syscall_is_compat; skipped on kernels that
// cannot run i386 syscalls, and for most calls where tp_btf loads):
//
//  - The current task's cgroup id is cached per CPU. sched_switch
//    invalidates it (a different task runs), and cgroup_attach_task bumps a
//    global epoch (a task changed cgroup, possibly while running), so the
//    cache is only used while it is certainly right.
//  - Counts live in a per-CPU array indexed by a "slot"; a per-CPU
//    direct-mapped cache remembers which slot belongs to (cgroup, nr).
//
// A hit is three array lookups the verifier inlines. A miss (first use of a
// syscall by a cgroup on this CPU, or a collision) consults the shared slot
// hash; a new pair pops a free slot from a stack that user space fills
// before attaching and refills when it retires the pairs of removed cgroups.
//
// Cache entries are tagged with the cgroup id, and cgroup ids are never reused
// by the kernel, so an entry can never send a live cgroup's events to a slot
// that was recycled: only pairs of removed cgroups are retired.
//
// Dangerous syscalls (ptrace, mount, bpf, init_module, ...) are flagged in the
// cache entry itself (top bit of the slot), so recognising them costs nothing
// on the hot path. A flagged call is also counted exactly in its own map,
// except when the caller is orb8 itself, and may emit one evidence record
// into a ring buffer. Every call is accounted for: a record written, dropped
// (buffer full, or sampled away while the buffer is over 90% full), or
// suppressed by its cgroup's evidence limit.
//
// dangerous_counts holds one entry per (cgroup, dangerous syscall name):
// the key is the name's native number whatever ABI the call entered through,
// so a cgroup takes at most one entry per name. When the map is full, the
// call is counted per name in dangerous_overflow (an array: nothing can fill
// it), exported as cgroup="<overflow>", and its record names the cgroup.
//
// Evidence is rate-limited per cgroup in the kernel (GCRA: a "theoretical
// arrival time" per cgroup, advanced by one interval per record, refusing a
// record that would put it more than `burst` intervals ahead), so a flooding
// cgroup sheds only its own records and user space decodes at most
// (cgroups x rate) records a second. The limits live in an LRU hash: it can
// never refuse a cgroup, and a cgroup it forgot starts with a full burst,
// so a quiet cgroup's record always gets through the limit.
//
// Syscalls are keyed by the ABI they entered through (see syscall_key): a
// 64-bit process may use `int $0x80`, and the i386 numbers mean other calls
// (i386 26 is ptrace, x86_64 26 is msync). Numbers outside every table share
// one "unknown" key per cgroup, so one cgroup can take at most
// (table entries + 1) slots however many invalid numbers it tries.
//
// Only stable interfaces are used: the sys_enter raw tracepoint arguments
// (args[1] = syscall number), the classic tracepoint's `id` field (its offset
// is checked against tracefs by the loader), helpers. One exception, on
// x86_64: the compat flag in thread_info.status, read at an offset the loader
// took from the running kernel's BTF (never from the headers); without BTF
// ABI_STATUS_OFFSET is not defined and compat calls are counted under the
// native table (the loader reports that, see orb8_syscall_abi_detected).
//
// Reading that flag takes a helper call (bpf_get_current_task_btf), which
// this kernel does not inline: 6-26 ns on the VMs we measured, as much as
// the rest of the probe or more (benchmarks/RESULTS.md). So where the kernel
// lets us, the counter runs as a BTF-typed raw tracepoint (tp_btf/sys_enter,
// syscalls_enter_btf), whose pt_regs argument is read with plain loads, and
// the helper is called only when the answer can matter (see count_syscall).
// The loader falls back to the raw tracepoint, which reads the flag on every
// syscall.

#include "orb8.h"
#include "syscalls.h"

#ifndef SLOT_CAPACITY
#define SLOT_CAPACITY 65536
#endif

// Power of two; syscall numbers are dense below ~470 on x86_64 and arm64.
#define CACHE_WAYS 512
// Every ABI's syscall numbers are below this (x86_64, i386, x32 and arm64
// all stay under 600); anything else is an invalid number.
#define NR_TABLE 1024
#define DANGER_BIT 0x80000000u

// Key = (ABI << ABI_SHIFT) | number. ABI 0 is the native one.
#define ABI_SHIFT 16
#define ABI_I386 1
#define ABI_X32 2
#define ABI_TABLES 3
#define X32_SYSCALL_BIT 0x40000000ul
// Out of range for its ABI (before the table check in the slow path).
#define NR_INVALID 0xffffu
// The one key under which a cgroup's calls of numbers no table names count.
#define KEY_UNKNOWN 0xffffffffu
// syscall_flags bits, per (ABI, number), filled by user space; a dangerous
// entry also holds its name's native number from bit NATIVE_SHIFT.
// FLAG_ABI_SENSITIVE (native entries only, known or not): the i386 call of
// this number is dangerous under another name than the native one, so a
// call of it is never named without reading the compat flag.
#define FLAG_KNOWN 1
#define FLAG_DANGEROUS 2
#define FLAG_ABI_SENSITIVE 4
#define NATIVE_SHIFT 16
// In a cache entry's slot, next to DANGER_BIT: FLAG_ABI_SENSITIVE of its key.
#define SENSITIVE_BIT 0x40000000u
#define SLOT_MASK (~(DANGER_BIT | SENSITIVE_BIT))

#ifndef DANGEROUS_CAPACITY
#define DANGEROUS_CAPACITY 4096
#endif
#ifndef EXCLUDED_CAPACITY
#define EXCLUDED_CAPACITY 64
#endif
#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 256
#endif
#ifndef RINGBUF_SAMPLE_EVERY
#define RINGBUF_SAMPLE_EVERY 10
#endif
// Evidence limit per cgroup: one record per EVIDENCE_INTERVAL_NS on average,
// bursts of EVIDENCE_BURST.
#ifndef EVIDENCE_INTERVAL_NS
#define EVIDENCE_INTERVAL_NS 200000000ull
#endif
#ifndef EVIDENCE_BURST
#define EVIDENCE_BURST 20
#endif
#ifndef EVIDENCE_BUCKETS
#define EVIDENCE_BUCKETS DANGEROUS_CAPACITY
#endif
#define RINGBUF_BYTES (RINGBUF_PAGES * 4096ull)

struct cache_entry {
    u64 cgroup_id;
    u32 nr;
    u32 slot;
};

struct cpu_cache {
    u64 cgroup_id;      // of the task running on this CPU...
    u64 cgroup_epoch;   // ...valid while equal to syscall_epoch[0]
    struct cache_entry way[CACHE_WAYS];
};

// Bytes a record takes in the ring buffer: 8-byte header, 8-byte aligned.
#define RINGBUF_RECORD ((sizeof(struct dangerous_event) + 8 + 7) & ~7ull)

// Layout of raw_syscalls:sys_enter in tracefs: 8 bytes of common fields, then
// `long id`. The loader verifies the offset before choosing this variant.
struct sys_enter_args {
    u64 common;
    long id;
};

BPF_HASH(syscall_slots, struct syscall_pair, u32, SLOT_CAPACITY);
BPF_PERCPU_ARRAY(syscall_counts, u64, SLOT_CAPACITY);
BPF_STACK(syscall_free_slots, u32, SLOT_CAPACITY);
BPF_PERCPU_ARRAY(syscall_cache, struct cpu_cache, 1);
// Bumped whenever any task changes cgroup; starts at 1 (0 = invalid).
BPF_ARRAY(syscall_epoch, u64, 1);
// Events that could not be counted because every slot was taken.
BPF_PERCPU_ARRAY(syscall_update_failures, u64, 1);

// FLAG_* per ABI_TABLES * NR_TABLE (ABI, number): which numbers name a
// syscall of that ABI, and which of those user space marked dangerous.
BPF_ARRAY(syscall_flags, u32, ABI_TABLES * NR_TABLE);
// orb8 loads BPF, and so does a second orb8 beside it (a DaemonSet rollout,
// `orb8 check` in the agent's container): their dangerous calls are not
// counted. Excluded by cgroup id: orb8's own, and those of other instances of
// orb8's own workload (user space adds them). Unlike a pid or a comm, a cgroup
// cannot be taken over by a workload without the privilege to move itself
// into it. An orb8 in the root cgroup (a plain host, tests) excludes only
// its own process: [0] = its tgid.
BPF_HASH(dangerous_excluded, u64, u8, EXCLUDED_CAPACITY);
BPF_ARRAY(dangerous_config, u64, 1);
// Shared, not per-CPU: an entry costs the same on a 2- or a 256-CPU node, so
// the map can be sized for every cgroup a node runs.
BPF_HASH(dangerous_counts, struct syscall_pair, struct dangerous_value, DANGEROUS_CAPACITY);
// Per native number: the calls that found dangerous_counts full.
BPF_ARRAY(dangerous_overflow, struct dangerous_value, NR_TABLE);
BPF_PERCPU_ARRAY(dangerous_update_failures, u64, 1);
BPF_TABLE("lru_hash", u64, struct evidence_bucket, dangerous_buckets, EVIDENCE_BUCKETS);
BPF_RINGBUF_OUTPUT(dangerous_events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(ringbuf_stats, u64, RB_STATS);
// [0]: records written (all CPUs), [1]: records user space has consumed.
BPF_ARRAY(ringbuf_progress, u64, 2);

static __always_inline void count_failure(void)
{
    u32 zero = 0;
    u64 *failures = syscall_update_failures.lookup(&zero);
    if (failures)
        (*failures)++;
}

static __always_inline void ringbuf_stat_add(u32 stat, u64 value)
{
    u64 *counter = ringbuf_stats.lookup(&stat);
    if (counter)
        *counter += value;
}

// FLAG_* (and NATIVE_SHIFT) of a key; 0 for a key no table names.
static __always_inline u32 key_flags(u32 key)
{
    u32 nr = key & ((1u << ABI_SHIFT) - 1);
    u32 abi = key >> ABI_SHIFT;
    if (nr >= NR_TABLE || abi >= ABI_TABLES)
        return 0;
    u32 index = abi * NR_TABLE + nr;
    u32 *flags = syscall_flags.lookup(&index);
    return flags ? *flags : 0;
}

// Take one record's worth from a cgroup's evidence limit. Other CPUs may
// race on the same bucket: a lost compare-and-swap retries once, then the
// record is refused (and counted as suppressed), so the limit holds.
static __always_inline bool take_evidence_token(struct evidence_bucket *bucket, u64 now)
{
#pragma unroll
    for (int attempt = 0; attempt < 2; attempt++) {
        u64 tat = *(volatile u64 *)&bucket->tat;
        u64 next = (tat > now ? tat : now) + EVIDENCE_INTERVAL_NS;
        if (next - now > EVIDENCE_INTERVAL_NS * EVIDENCE_BURST)
            return false;
        if (__sync_val_compare_and_swap(&bucket->tat, tat, next) == tat)
            return true;
    }
    return false;
}

// Called for every flagged syscall: exact count, then evidence if allowed.
static __always_inline void count_dangerous(u64 cgroup_id, u32 key)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 zero = 0, one = 1;
    if (dangerous_excluded.lookup(&cgroup_id))
        return;
    u64 *self_tgid = dangerous_config.lookup(&zero);
    if (self_tgid && *self_tgid == (pid_tgid >> 32))
        return;

    u32 native = key_flags(key) >> NATIVE_SHIFT;
    struct syscall_pair pair = {.cgroup_id = cgroup_id, .nr = native};
    struct dangerous_value init = {};
    u32 event_flags = 0;
    struct dangerous_value *count = dangerous_counts.lookup_or_try_init(&pair, &init);
    if (!count) {
        u64 *failures = dangerous_update_failures.lookup(&zero);
        if (failures)
            (*failures)++;
        count = dangerous_overflow.lookup(&native);
        if (!count)
            return;  // unreachable: native < NR_TABLE
        event_flags = EVENT_OVERFLOW;
    }
    __sync_fetch_and_add(&count->calls, 1);

    u64 now = bpf_ktime_get_ns();
    u64 suppressed = 0, since = 0;
    struct evidence_bucket fresh = {};
    struct evidence_bucket *bucket = dangerous_buckets.lookup_or_try_init(&cgroup_id, &fresh);
    // No bucket (the LRU could not make room at this instant): the record
    // is allowed, a quiet cgroup's evidence is never lost to the limit.
    if (bucket) {
        if (!take_evidence_token(bucket, now)) {
            __sync_fetch_and_add(&count->suppressed, 1);
            __sync_fetch_and_add(&bucket->suppressed, 1);
            return;
        }
        u64 total = *(volatile u64 *)&bucket->suppressed;
        u64 reported = __sync_lock_test_and_set(&bucket->reported, total);
        suppressed = total > reported ? total - reported : 0;
        since = __sync_lock_test_and_set(&bucket->last_ns, now);
    }

    // Backlog estimate: records written minus records user space consumed.
    u64 *written = ringbuf_progress.lookup(&zero);
    u64 *consumed = ringbuf_progress.lookup(&one);
    if (!written || !consumed)
        return;
    u64 backlog = (*written - *consumed) * RINGBUF_RECORD;
    u32 peak_stat = RB_PEAK;
    u64 *peak = ringbuf_stats.lookup(&peak_stat);
    if (peak && backlog > *peak)
        *peak = backlog;
    if (backlog * 10 > RINGBUF_BYTES * 9) {
        // Over 90% full: keep 1 event in RINGBUF_SAMPLE_EVERY so evidence of
        // other workloads still gets through a flood.
        u32 tick_stat = RB_TICK;
        u64 *tick = ringbuf_stats.lookup(&tick_stat);
        if (tick && (*tick)++ % RINGBUF_SAMPLE_EVERY != 0) {
            ringbuf_stat_add(RB_SAMPLED, 1);
            ringbuf_stat_add(RB_DROPPED, 1);
            return;
        }
    }

    struct dangerous_event *event = dangerous_events.ringbuf_reserve(sizeof(*event));
    if (!event) {
        ringbuf_stat_add(RB_DROPPED, 1);
        return;
    }
    event->time_ns = now;
    event->cgroup_id = cgroup_id;
    event->pid = (u32)pid_tgid;
    event->tgid = (u32)(pid_tgid >> 32);
    event->uid = (u32)bpf_get_current_uid_gid();
    event->nr = key;
    bpf_get_current_comm(&event->comm, sizeof(event->comm));
    event->suppressed = suppressed;
    event->since_ns = since;
    event->flags = event_flags;
    event->pad = 0;
    dangerous_events.ringbuf_submit(event, 0);
    __sync_fetch_and_add(written, 1);
    ringbuf_stat_add(RB_WRITTEN, 1);
}

static __always_inline int count_slow(struct cache_entry *way, u64 cgroup_id, u32 key)
{
    u32 flags = key_flags(key);
    bool dangerous = flags & FLAG_DANGEROUS;
    bool sensitive = flags & FLAG_ABI_SENSITIVE;
    // Numbers that name no syscall share one slot per cgroup: an attacker
    // trying 40,000 numbers takes one slot, not 40,000.
    struct syscall_pair pair = {
        .cgroup_id = cgroup_id,
        .nr = flags & FLAG_KNOWN ? key : KEY_UNKNOWN,
    };
    u32 slot;
    u32 *found = syscall_slots.lookup(&pair);

    if (found) {
        slot = *found;
    } else {
        if (syscall_free_slots.pop(&slot) != 0) {
            // Map full: this call goes uncounted in syscall_counts, but a
            // dangerous one is still counted and evidenced on its own map.
            count_failure();
            if (dangerous)
                count_dangerous(cgroup_id, key);
            return 0;
        }
        if (syscall_slots.insert(&pair, &slot) != 0) {
            // Another CPU inserted the same pair first: give the slot back
            // and use the winner's.
            syscall_free_slots.push(&slot, 0);
            found = syscall_slots.lookup(&pair);
            if (!found) {
                count_failure();
                if (dangerous)
                    count_dangerous(cgroup_id, key);
                return 0;
            }
            slot = *found;
        }
    }

    way->cgroup_id = cgroup_id;
    way->nr = key;
    way->slot = slot | (dangerous ? DANGER_BIT : 0) | (sensitive ? SENSITIVE_BIT : 0);

    u64 *count = syscall_counts.lookup(&slot);
    if (count)
        (*count)++;
    if (dangerous)
        count_dangerous(cgroup_id, key);
    return 0;
}

// The key a syscall is counted under, before its ABI is known: its number
// (native or x32 table), or NR_INVALID.
static __always_inline u32 syscall_number_key(long id)
{
    if ((unsigned long)id < NR_TABLE)
        return (u32)id;
    // x32: a 64-bit syscall with the x32 bit set. Kernels without x32
    // support refuse it (ENOSYS); it is named by the x32 table anyway.
    if ((id & X32_SYSCALL_BIT) && (unsigned long)(id & ~X32_SYSCALL_BIT) < NR_TABLE)
        return (ABI_X32 << ABI_SHIFT) | (u32)(id & ~X32_SYSCALL_BIT);
    return NR_INVALID;
}

// Whether this syscall entered through an i386 entry point. TS_COMPAT: set
// by the kernel's i386 entry paths (int $0x80, sysenter, 32-bit syscall) for
// the duration of the call, whatever the process.
static __always_inline bool syscall_is_compat(void)
{
#ifdef ABI_STATUS_OFFSET
    void *task = (void *)bpf_get_current_task_btf();
    u32 status = *(volatile u32 *)((char *)task + ABI_STATUS_OFFSET);
    return status & ABI_COMPAT_FLAG;
#else
    return false;
#endif
}

// Whether pt_regs are as a 64-bit `syscall` instruction leaves them (see
// syscalls_enter_btf): btf_regs, a BTF-typed pointer (tp_btf), is read only
// when the answer is needed; else native_regs, worked out by the caller.
// Both NULL/false from the raw and classic tracepoints, which then read the
// compat flag on every call, as before.
static __always_inline bool regs_look_native(char *btf_regs, bool native_regs)
{
#ifdef REGS_CX_OFFSET
    if (btf_regs)
        return *(volatile u64 *)(btf_regs + REGS_CX_OFFSET) ==
               *(volatile u64 *)(btf_regs + REGS_IP_OFFSET);
#endif
    return native_regs;
}

static __always_inline int count_syscall(long id, char *btf_regs, bool native_regs)
{
    u32 nr = syscall_number_key(id);
    u32 zero = 0;
    struct cpu_cache *cache = syscall_cache.lookup(&zero);
    u64 *epoch = syscall_epoch.lookup(&zero);

    if (!cache || !epoch)
        return 0;
    u64 cgroup_id = cache->cgroup_id;
    if (cache->cgroup_epoch != *epoch) {
        // Read the epoch before the cgroup id: a migration that completes
        // in between bumps the epoch again and the next event refreshes.
        cache->cgroup_epoch = *epoch;
        cgroup_id = bpf_get_current_cgroup_id();
        cache->cgroup_id = cgroup_id;
    }
    struct cache_entry *way = &cache->way[nr & (CACHE_WAYS - 1)];
#ifdef ABI_STATUS_OFFSET
    // The compat flag is skipped only when the registers look like a 64-bit
    // `syscall` AND this CPU already counted this cgroup's native call of
    // this number AND that number is not ABI-sensitive. Registers can be
    // forged (`int $0x80` with rcx set by the caller, or a tracer
    // editing them), so a forged i386 call is then counted under the native
    // name of its number: only for numbers whose i386 name is not a
    // dangerous one, so no dangerous call can hide this way. x32 keys are
    // named by their bit, as before.
    // The registers are read last: not at all for sensitive numbers.
    if ((nr >> ABI_SHIFT) != ABI_X32 &&
        !(way->cgroup_id == cgroup_id && way->nr == nr && !(way->slot & SENSITIVE_BIT) &&
          regs_look_native(btf_regs, native_regs)) &&
        syscall_is_compat())
        nr |= ABI_I386 << ABI_SHIFT;
    // Same index: the ABI bits are above CACHE_WAYS.
#endif
    if (way->cgroup_id == cgroup_id && way->nr == nr) {
        u32 slot = way->slot;
        if (slot & DANGER_BIT)
            count_dangerous(cgroup_id, nr);
        slot &= SLOT_MASK;
        u64 *count = syscall_counts.lookup(&slot);
        if (count) {
            (*count)++;
            return 0;
        }
    }
    return count_slow(way, cgroup_id, nr);
}

// A different task runs on this CPU from now on: forget its cgroup id.
static __always_inline int invalidate_cpu(void)
{
    u32 zero = 0;
    struct cpu_cache *cache = syscall_cache.lookup(&zero);
    if (cache)
        cache->cgroup_epoch = 0;
    return 0;
}

// Some task moved to another cgroup, maybe while running on another CPU:
// every CPU re-reads its current cgroup id at its next syscall.
static __always_inline int bump_epoch(void)
{
    u32 zero = 0;
    u64 *epoch = syscall_epoch.lookup(&zero);
    if (epoch)
        __sync_fetch_and_add(epoch, 1);
    return 0;
}

int syscalls_switch_raw(void *ctx)
{
    return invalidate_cpu();
}

int syscalls_attach_raw(void *ctx)
{
    return bump_epoch();
}

int syscalls_switch_tp(void *ctx)
{
    return invalidate_cpu();
}

int syscalls_attach_tp(void *ctx)
{
    return bump_epoch();
}

#ifdef REGS_CX_OFFSET
// Preferred where the i386 check is on: tp_btf/sys_enter, a BPF_PROG_TYPE_TRACING
// program (loaded by exporter/kernel/attach.py: BCC has no loader for it).
// ctx[0] is a BTF-typed struct pt_regs *, so its fields are plain loads;
// offsets from the running kernel's BTF, like ABI_STATUS_OFFSET.
//
// A 64-bit `syscall` instruction saves the return address in RCX, and
// entry_SYSCALL_64 stores it in pt_regs both as ip and as cx: cx == ip. The
// i386 entries leave the caller's second argument in cx (ebp for a 32-bit
// `syscall`), which is not the return address unless the caller makes it
// so: then count_syscall's rule holds. Comparing more fields (r11 == flags,
// cs == __USER_CS) would not stop a forger either and costs a guarded load
// each (BTF pointer loads carry an address check), so only cx and ip are
// read. Kernels whose entry leaves other values here only lose the shortcut.
int syscalls_enter_btf(unsigned long long *ctx)
{
    return count_syscall((long)ctx[1], (char *)ctx[0], false);
}

#ifdef REGS_READ_START
// Measured, never attached by orb8 (benchmarks/syscall_overhead.py): the same
// shortcut from a plain raw tracepoint, whose pt_regs pointer can only be
// read through a helper (one bpf_probe_read_kernel of the span of the fields).
int syscalls_enter_raw_regs(struct bpf_raw_tracepoint_args *ctx)
{
    u64 copy[REGS_READ_LEN / 8];
    bool native_regs = false;
    if (bpf_probe_read_kernel(copy, sizeof(copy), (char *)ctx->args[0] + REGS_READ_START) == 0)
        native_regs = copy[(REGS_CX_OFFSET - REGS_READ_START) / 8] ==
                      copy[(REGS_IP_OFFSET - REGS_READ_START) / 8];
    return count_syscall((long)ctx->args[1], NULL, native_regs);
}
#endif
#endif

// Raw tracepoint, TP_PROTO(struct pt_regs *regs, long id): the fallback
// where tp_btf cannot load, and the only hook where no i386 check is needed.
int syscalls_enter_raw(struct bpf_raw_tracepoint_args *ctx)
{
    return count_syscall((long)ctx->args[1], NULL, false);
}

// Fallback for kernels without raw tracepoint support.
int syscalls_enter_tp(struct sys_enter_args *args)
{
    return count_syscall(args->id, NULL, false);
}
