// dns.c: DNS queries, answers by response code, timeouts and latency per
// cgroup, counted in the kernel.
//
// cgroup_skb ingress/egress programs of their own on the cgroup v2 root
// (like bpf/network.c's), so they see every socket of every cgroup in every
// network namespace, attributed with bpf_skb_cgroup_id() (the socket's
// cgroup, right in both directions). Only UDP and TCP packets with port 53
// on either side are parsed; every other packet costs an IP header read, a
// 4-byte port read and a compare. Nothing is copied to user space: the
// 12-byte header and the question's type are read and counted here.
//
// Roles: the socket that sends a query (QR=0 on egress) or receives an
// answer (QR=1 on ingress) is the client; the one that receives a query or
// sends an answer is the server (CoreDNS). A message that cannot be parsed
// counts as malformed under the role its local port implies (53: server).
//
// Parsing bytes a pod chose: every read is bounds-checked by the helper
// (bpf_skb_load_bytes) or the verifier (direct reads), the question name is
// walked with a bounded loop (at most 128 labels, 255 bytes), and a
// compression pointer or reserved label type in the question is malformed
// (a question never needs one, and refusing it makes a pointer loop
// impossible). A query with no question, a header or question cut short, a
// name over 255 bytes: malformed.
//
// TCP: a message is a 2-byte length and the message. Socket storage keeps,
// per direction, the sequence number where the next message starts (after
// the last one parsed): a segment that lies inside a message already seen
// (the rest of an answer larger than a segment, a retransmission) is not
// parsed, and one in which the next message starts at an offset is parsed
// from there. Without a record (the first data of a connection, or a
// segment beyond the expected start: one not seen, or a second message in
// the same segment, which is not parsed) the segment's payload is taken to
// start a message. One message is parsed per segment (or GSO/GRO
// super-packet): pipelined queries sent in one write count once. Segments
// with less than 14 bytes from the message start on are skipped (a length
// sent in a segment of its own: that message is not counted).
//
// Timeouts and latency: a query inserts (socket cookie, peer address and
// port, id, role) -> (time, cgroup) into an LRU hash; its answer on the same
// socket from that peer deletes it (one delete wins: a duplicate answer
// matches nothing) and counts its latency in log2 buckets, or a timeout if
// it came later than TIMEOUT_NS. Entries nobody answers are swept by user
// space after TIMEOUT_NS and counted there as timeouts (the delete decides
// which side counts, so each query is a timeout at most once). A
// retransmitted query with the same id keeps the first one's time.
//
// Only stable interfaces: __sk_buff, packet bytes and helpers. Every program
// returns 1: orb8 observes, it never drops or changes anything.

#include "orb8.h"
#include "dns.h"
#include "packet.h"

#ifndef COUNT_CAPACITY
#define COUNT_CAPACITY 16384
#endif
#ifndef PENDING_CAPACITY
#define PENDING_CAPACITY 16384
#endif
#ifndef TIMEOUT_NS
#define TIMEOUT_NS 5000000000ULL
#endif

#define DNS_PORT 53
#define DNS_HEADER 12
#define MAX_LABELS 128
#define MAX_NAME 255

BPF_F_TABLE("percpu_hash", struct dns_count_key, u64, dns_counts, COUNT_CAPACITY,
            BPF_F_NO_PREALLOC);
BPF_TABLE("lru_hash", struct dns_pending_key, struct dns_pending_value, dns_pending,
          PENDING_CAPACITY);
BPF_PERCPU_ARRAY(dns_stats, u64, DNS_STAT_COUNT);
BPF_F_TABLE("sk_storage", int, struct dns_stream, dns_streams, 0, BPF_F_NO_PREALLOC);

struct dns_message {
    u16 id;
    u8 qr;
    u8 rcode;
    u16 ancount;
    u16 qtype;
};

static __always_inline void bump_stat(u32 index)
{
    u64 *value = dns_stats.lookup(&index);
    if (value)
        *value += 1;
}

static __always_inline void count(u64 cgroup_id, u8 role, u8 kind, u8 code, u64 n)
{
    struct dns_count_key key = {.cgroup_id = cgroup_id, .role = role, .kind = kind, .code = code};
    u64 *value = dns_counts.lookup(&key);
    if (!value) {
        u64 zero = 0;
        // Fails when full (or when another CPU inserted it first: look again).
        dns_counts.insert(&key, &zero);
        value = dns_counts.lookup(&key);
        if (!value) {
            bump_stat(DNS_STAT_COUNT_FAILURES);
            return;
        }
    }
    *value += n;
}

static __always_inline u8 qtype_code(u16 qtype)
{
    switch (qtype) {
    case 1:
        return QTYPE_A;
    case 28:
        return QTYPE_AAAA;
    case 33:
        return QTYPE_SRV;
    case 12:
        return QTYPE_PTR;
    case 16:
        return QTYPE_TXT;
    default:
        return QTYPE_OTHER;
    }
}

static __always_inline u8 rcode_code(u8 rcode, u16 ancount)
{
    switch (rcode) {
    case 0:
        return ancount ? RCODE_NOERROR : RCODE_NODATA;
    case 3:
        return RCODE_NXDOMAIN;
    case 2:
        return RCODE_SERVFAIL;
    case 5:
        return RCODE_REFUSED;
    default:
        return RCODE_OTHER;
    }
}

// The header and the first question's type of the message at [offset, end).
// 0: parsed; -1: malformed.
static __always_inline int parse(struct __sk_buff *skb, u32 offset, u32 end,
                                 struct dns_message *msg)
{
    u8 header[DNS_HEADER];
    if (offset + DNS_HEADER > end || bpf_skb_load_bytes(skb, offset, header, DNS_HEADER) != 0)
        return -1;
    msg->id = ((u16)header[0] << 8) | header[1];
    msg->qr = header[2] >> 7;
    msg->rcode = header[3] & 0x0f;
    msg->ancount = ((u16)header[6] << 8) | header[7];
    msg->qtype = 0;
    u16 qdcount = ((u16)header[4] << 8) | header[5];
    if (qdcount == 0)
        return msg->qr ? 0 : -1;  // an answer may omit it (FORMERR); a query may not

    u32 pos = offset + DNS_HEADER;
    u32 name = 0;  // wire length of the name so far
    int done = 0;
    for (int i = 0; i < MAX_LABELS; i++) {
        u8 len;
        if (pos >= end || bpf_skb_load_bytes(skb, pos & 0xffff, &len, 1) != 0)
            return -1;
        if (len == 0) {
            pos += 1;
            done = 1;
            break;
        }
        if (len & 0xc0)  // compression pointer (0xc0) or reserved label type
            return -1;
        name += (u32)len + 1;
        if (name >= MAX_NAME)  // + the root byte: over 255
            return -1;
        pos += (u32)len + 1;
    }
    if (!done)
        return -1;
    u8 question[2];
    if (pos + 4 > end || bpf_skb_load_bytes(skb, pos & 0xffff, question, 2) != 0)
        return -1;
    msg->qtype = ((u16)question[0] << 8) | question[1];
    return 0;
}

static __always_inline u8 latency_bucket(u64 ns)
{
#pragma unroll
    for (int i = 0; i < DNS_BUCKETS - 1; i++) {
        if (ns <= (1000ULL << (i + DNS_BUCKET_MIN_SHIFT)))
            return i;
    }
    return DNS_BUCKETS - 1;
}

static __always_inline void query_sent(struct dns_pending_key *key, u64 cgroup_id)
{
    struct dns_pending_value value = {.start_ns = bpf_ktime_get_ns(), .cgroup_id = cgroup_id};
    if (dns_pending.insert(key, &value) == 0) {
        // A new entry; an LRU makes room by evicting: user space derives
        // evictions from inserts, matches, sweeps and entries.
        bump_stat(DNS_STAT_PENDING_INSERTS);
        return;
    }
    // Already there: a retransmission keeps the first query's time.
    if (!dns_pending.lookup(key))
        bump_stat(DNS_STAT_PENDING_FAILURES);
}

static __always_inline void answer_received(struct dns_pending_key *key)
{
    struct dns_pending_value *found = dns_pending.lookup(key);
    if (!found)
        return;
    struct dns_pending_value value = *found;
    // Only the delete that removed it counts (another CPU's duplicate
    // answer, or user space's timeout sweep, may race for it).
    if (dns_pending.delete(key) != 0)
        return;
    bump_stat(DNS_STAT_PENDING_MATCHED);
    u64 now = bpf_ktime_get_ns();
    u64 ns = now > value.start_ns ? now - value.start_ns : 0;
    if (ns > TIMEOUT_NS) {
        count(value.cgroup_id, key->role, DNS_TIMEOUT, 0, 1);
        return;
    }
    count(value.cgroup_id, key->role, DNS_LATENCY, latency_bucket(ns), 1);
    count(value.cgroup_id, key->role, DNS_LATENCY_SUM, 0, ns);
}

static __always_inline void handle(struct __sk_buff *skb, u8 egress)
{
    union ip_header ip;
    struct dns_pending_key key = {};
    u32 l4;
    u8 proto;

    // IPv6 extension headers are walked as bpf/network.c does, up to a
    // bound, except AH: a DNS packet behind one is not parsed.
    u8 version = parse_ip(skb, &ip, &proto, &l4, false);
    // Not IP, no L4 header (IP options garbage, a later fragment), not UDP or TCP.
    if (version == 0 || l4 == 0 || (proto != 17 && proto != 6))
        return;
    key.family = version;
    copy_peer(&ip, version, egress, key.peer);

    u16 ports[2];
    if (load_packet(skb, l4, ports, sizeof(ports)) != 0)
        return;
    u16 sport = ORB8_NTOHS(ports[0]), dport = ORB8_NTOHS(ports[1]);
    if (sport != DNS_PORT && dport != DNS_PORT)
        return;

    u32 len = skb->len;
    u32 offset, end;
    struct dns_stream *stream = 0;
    if (proto == 17) {
        u16 udp_len;
        if (load_packet(skb, l4 + 4, &udp_len, sizeof(udp_len)) != 0)
            return;
        offset = l4 + 8;
        end = l4 + ORB8_NTOHS(udp_len);
        if (end > len)
            end = len;
    } else {
        u8 tcp[10];  // from the sequence number to the data offset
        if (load_packet(skb, l4 + 4, tcp, sizeof(tcp)) != 0)
            return;
        u32 seq = ((u32)tcp[0] << 24) | ((u32)tcp[1] << 16) | ((u32)tcp[2] << 8) | tcp[3];
        u32 payload = l4 + (tcp[8] >> 4) * 4;
        if (payload >= len)
            return;  // ACKs, FIN: nothing to parse
        u32 skip = 0;
        struct bpf_sock *sk = skb->sk;
        if (sk)
            sk = bpf_sk_fullsock(sk);
        if (sk)
            stream = dns_streams.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
        if (stream && stream->known[egress & 1]) {
            s32 ahead = (s32)(stream->next_seq[egress & 1] - seq);
            if (ahead >= (s32)(len - payload))
                return;  // inside a message already parsed, or a retransmission
            if (ahead > 0)
                skip = ahead;  // the next message starts inside this segment
        }
        payload += skip;
        if (payload + 2 + DNS_HEADER > len)
            return;  // a lone length or a short tail: nothing to parse
        u16 prefix;
        if (bpf_skb_load_bytes(skb, payload, &prefix, sizeof(prefix)) != 0)
            return;
        offset = payload + 2;
        end = offset + ORB8_NTOHS(prefix);
        if (stream) {
            stream->next_seq[egress & 1] = seq + skip + 2 + ORB8_NTOHS(prefix);
            stream->known[egress & 1] = 1;
        }
        if (end > len)
            end = len;  // the rest follows in later segments
    }

    u64 cgroup_id = bpf_skb_cgroup_id(skb);
    u16 local = egress ? sport : dport;
    struct dns_message msg;
    if (parse(skb, offset, end, &msg) != 0) {
        count(cgroup_id, local == DNS_PORT ? DNS_SERVER : DNS_CLIENT, DNS_MALFORMED, 0, 1);
        return;
    }

    // Egress query or ingress answer: client. Ingress query or egress answer: server.
    u8 role = (msg.qr ^ egress) ? DNS_CLIENT : DNS_SERVER;
    key.cookie = bpf_get_socket_cookie(skb);
    key.peer_port = egress ? dport : sport;
    key.id = msg.id;
    key.role = role;
    if (msg.qr) {
        count(cgroup_id, role, DNS_RESPONSE, rcode_code(msg.rcode, msg.ancount), 1);
        answer_received(&key);
    } else {
        count(cgroup_id, role, DNS_QUERY, qtype_code(msg.qtype), 1);
        query_sent(&key, cgroup_id);
    }
}

int dns_ingress(struct __sk_buff *skb)
{
    handle(skb, 0);
    return 1;
}

int dns_egress(struct __sk_buff *skb)
{
    handle(skb, 1);
    return 1;
}
