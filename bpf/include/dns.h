// Layouts shared by bpf/dns.c and exporter/sources/dns/, which decodes map
// keys with numpy dtypes built from BCC's own table types; enum values are
// mirrored in exporter/sources/dns/source.py. Fixed-width fields with
// explicit padding, so the layout is the same on every ABI.
#ifndef ORB8_DNS_H
#define ORB8_DNS_H

enum dns_role {
    DNS_CLIENT = 0,  // the socket that sent the query / received the answer
    DNS_SERVER = 1,  // the socket that received the query / sent the answer
};

enum dns_kind {
    DNS_QUERY = 0,        // code: enum dns_qtype
    DNS_RESPONSE = 1,     // code: enum dns_rcode
    DNS_MALFORMED = 2,    // code 0
    DNS_LATENCY = 3,      // code: latency bucket (0..DNS_BUCKETS-1, last = +Inf)
    DNS_LATENCY_SUM = 4,  // code 0, value in nanoseconds
    DNS_TIMEOUT = 5,      // code 0: answered, but after the timeout window
};

enum dns_qtype {
    QTYPE_A = 0,
    QTYPE_AAAA = 1,
    QTYPE_SRV = 2,
    QTYPE_PTR = 3,
    QTYPE_TXT = 4,
    QTYPE_OTHER = 5,
};

enum dns_rcode {
    RCODE_NOERROR = 0,  // NOERROR with at least one answer record
    RCODE_NXDOMAIN = 1,
    RCODE_SERVFAIL = 2,
    RCODE_REFUSED = 3,
    RCODE_OTHER = 4,
    RCODE_NODATA = 5,  // NOERROR without answer records
};

// Latency buckets: upper bound of bucket i is 2^(i + DNS_BUCKET_MIN_SHIFT)
// microseconds, the last one is +Inf.
#define DNS_BUCKET_MIN_SHIFT 4
#define DNS_BUCKETS 20

// Indexes of the per-CPU dns_stats array.
enum dns_stat {
    DNS_STAT_COUNT_FAILURES = 0,    // dns_counts full: event not counted
    DNS_STAT_PENDING_INSERTS = 1,   // new entries created in dns_pending
    DNS_STAT_PENDING_MATCHED = 2,   // entries an answer deleted in the kernel
    DNS_STAT_PENDING_FAILURES = 3,  // dns_pending could not take a query
    DNS_STAT_COUNT = 4,
};

// dns_counts: exact per-cgroup counters (per-CPU hash, value u64).
struct dns_count_key {
    __u64 cgroup_id;
    __u8 role;
    __u8 kind;
    __u8 code;
    __u8 pad[5];
};

// dns_pending: queries waiting for their answer (LRU hash). One socket,
// one peer (address and port), one DNS id, one role.
struct dns_pending_key {
    __u64 cookie;
    __u8 peer[16];  // IPv4 in the first 4 bytes
    __u16 peer_port;
    __u16 id;
    __u8 role;
    __u8 family;
    __u8 pad[2];
};

struct dns_pending_value {
    __u64 start_ns;  // bpf_ktime_get_ns() of the query (CLOCK_MONOTONIC)
    __u64 cgroup_id;
};

// dns_streams: per TCP socket (socket storage), where the next message
// starts in each direction (0 ingress, 1 egress), so that segments in the
// middle of a message and retransmissions are not parsed as messages.
struct dns_stream {
    __u32 next_seq[2];
    __u8 known[2];
    __u8 pad[6];
};

#endif
