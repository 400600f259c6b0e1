// network.c: per-cgroup traffic, flows and TCP health, counted in the kernel.
//
// Traffic: cgroup_skb ingress/egress programs attached to the cgroup v2 root
// (so they run for every socket of every cgroup below it, in any network
// namespace). The kernel runs them with the *socket's* cgroup
// (sk->sk_cgrp_data, set when the socket was created), and
// bpf_skb_cgroup_id(skb) returns exactly that cgroup, in both directions.
// bpf_get_current_cgroup_id() would be wrong on ingress: receive processing
// runs in softirq on behalf of whatever task happens to be on the CPU (on a
// veth that is usually the *sender*).
//
// skb->len starts at the network header here, so bytes are IP-layer bytes.
// A GSO/GRO super-packet is one skb for many wire packets: it is counted as
// gso_segs packets and len + (gso_segs - 1) * (IP + extension + L4 header)
// bytes, i.e. what the wire packets carry at the IP layer. IP fragmentation
// happens after the egress hook and reassembly before the ingress hook, so a
// fragmented datagram is one packet of its full length on both sides.
//
// TCP health: RST segments are seen by the same programs (TCP flags byte).
// Connections opened and retransmits come from a sock_ops program (also on
// the root cgroup). sock_ops callbacks run in softirq/timer context and
// sock_ops has neither bpf_skb_cgroup_id nor bpf_sk_cgroup_id, so the
// owning cgroup is recorded per socket in socket storage by the cgroup_skb
// programs when a SYN passes: egress SYN = the connecting socket, ingress
// SYN = the listener. The storage map is BPF_F_CLONE, so a listener's
// record is copied to each socket it accepts. sock_ops then reads it.
//
// Flows: an LRU hash keyed by (cgroup, peer address, family, protocol,
// direction): best effort by design (a busy node can have more peers than
// any fixed map); exact totals live in network_traffic. Inserts are
// counted so user space can compute evictions exactly.
//
// Only stable interfaces: __sk_buff, bpf_sock_ops and bpf_sock UAPI fields,
// packet bytes (read directly, or with bpf_skb_load_bytes) and helpers.
// Every program returns 1: orb8 observes, it never drops or changes anything.

#include "orb8.h"
#include "network.h"

#ifndef TRAFFIC_CAPACITY
#define TRAFFIC_CAPACITY 16384
#endif
#ifndef TCP_CAPACITY
#define TCP_CAPACITY 8192
#endif
#ifndef FLOW_CAPACITY
#define FLOW_CAPACITY 16384
#endif
// 1: sock_ops + socket storage (connections, retransmits). 0: RSTs only.
#ifndef TCP_SOCK_OPS
#define TCP_SOCK_OPS 1
#endif

#define IPV6_MAX_EXTENSIONS 6
// Bound that lets the verifier check direct packet reads at a variable offset.
#define MAX_DIRECT_OFFSET 512

#define TCP_FLAG_RST 0x04
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define NET_NTOHS(x) __builtin_bswap16(x)
#else
#define NET_NTOHS(x) (x)
#endif

// Grown on demand (no prealloc): a few entries per cgroup that talks.
BPF_F_TABLE("percpu_hash", struct traffic_key, struct traffic_value, network_traffic,
            TRAFFIC_CAPACITY, BPF_F_NO_PREALLOC);
BPF_F_TABLE("percpu_hash", struct tcp_event_key, u64, network_tcp, TCP_CAPACITY,
            BPF_F_NO_PREALLOC);
BPF_TABLE("lru_hash", struct flow_key, struct flow_value, network_flows, FLOW_CAPACITY);
BPF_PERCPU_ARRAY(network_stats, u64, STAT_COUNT);
#if TCP_SOCK_OPS
BPF_F_TABLE("sk_storage", int, struct socket_owner, network_sockets, 0,
            BPF_F_NO_PREALLOC | BPF_F_CLONE);
#endif

struct ipv4_header {
    u8 version_ihl;
    u8 tos;
    u16 total_length;
    u16 id;
    u16 frag_off;
    u8 ttl;
    u8 protocol;
    u16 check;
    u8 saddr[4];
    u8 daddr[4];
};

struct ipv6_header {
    u8 version_class[4];
    u16 payload_length;
    u8 nexthdr;
    u8 hop_limit;
    u8 saddr[16];
    u8 daddr[16];
};

union ip_header {
    struct ipv4_header v4;
    struct ipv6_header v6;
};

// Copy packet bytes: straight from the linear part of the skb when they are
// there (headers nearly always are), else through bpf_skb_load_bytes(),
// which also handles paged data. The direct path saves a helper call per
// header on every packet.
static __always_inline int load(struct __sk_buff *skb, u32 offset, void *to, u32 len)
{
    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;
    if (offset <= MAX_DIRECT_OFFSET && data + offset + len <= data_end) {
        __builtin_memcpy(to, data + offset, len);
        return 0;
    }
    return bpf_skb_load_bytes(skb, offset, to, len);
}

static __always_inline void bump_stat(u32 index, u64 n)
{
    u64 *value = network_stats.lookup(&index);
    if (value)
        *value += n;
}

static __always_inline void count_tcp_event(u64 cgroup_id, u32 event, u64 n)
{
    struct tcp_event_key key = {.cgroup_id = cgroup_id, .event = event};
    u64 *value = network_tcp.lookup(&key);
    if (!value) {
        u64 zero = 0;
        // Fails when full (or when another CPU inserted it first: look again).
        network_tcp.insert(&key, &zero);
        value = network_tcp.lookup(&key);
        if (!value) {
            bump_stat(STAT_TCP_FAILURES, 1);
            return;
        }
    }
    *value += n;
}

static __always_inline void count_traffic(struct traffic_key *key, u64 bytes, u64 packets)
{
    struct traffic_value *value = network_traffic.lookup(key);
    if (!value) {
        struct traffic_value zero = {};
        network_traffic.insert(key, &zero);
        value = network_traffic.lookup(key);
        if (!value) {
            bump_stat(STAT_TRAFFIC_FAILURES, 1);
            return;
        }
    }
    value->bytes += bytes;
    value->packets += packets;
}

static __always_inline void count_flow(struct flow_key *key, u64 bytes, u64 packets)
{
    struct flow_value *value = network_flows.lookup(key);
    if (value) {
        __sync_fetch_and_add(&value->bytes, bytes);
        __sync_fetch_and_add(&value->packets, packets);
        return;
    }
    struct flow_value init = {.bytes = bytes, .packets = packets};
    if (network_flows.insert(key, &init) == 0) {
        // A new entry. An LRU makes room by evicting rather than failing;
        // user space derives the evictions from inserts and entries.
        bump_stat(STAT_FLOW_INSERTS, 1);
        return;
    }
    // Another CPU created it first.
    value = network_flows.lookup(key);
    if (value) {
        __sync_fetch_and_add(&value->bytes, bytes);
        __sync_fetch_and_add(&value->packets, packets);
        return;
    }
    bump_stat(STAT_FLOW_FAILURES, 1);
}

#if TCP_SOCK_OPS
// Remember which cgroup owns a TCP socket, for sock_ops callbacks.
static __always_inline void record_owner(struct __sk_buff *skb, u64 cgroup_id)
{
    struct bpf_sock *sk = skb->sk;
    if (!sk)
        return;
    sk = bpf_sk_fullsock(sk);
    if (!sk)
        return;
    struct socket_owner *owner =
        network_sockets.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
    if (owner)
        owner->cgroup_id = cgroup_id;
}
#endif

static __always_inline int count_packet(struct __sk_buff *skb, u8 direction)
{
    u64 cgroup_id = bpf_skb_cgroup_id(skb);
    u64 len = skb->len;
    union ip_header ip;
    struct traffic_key tkey = {.cgroup_id = cgroup_id, .direction = direction};
    struct flow_key fkey = {.cgroup_id = cgroup_id, .direction = direction};
    u8 proto = 255;      // IP protocol number of the payload, 255 = unknown
    u32 l4_offset = 0;   // 0: no L4 header in this packet
    u8 *peer;

    tkey.protocol = NET_OTHER;
    tkey.family = skb->protocol == NET_NTOHS(0x86DD) ? NET_IPV6 : NET_IPV4;

    if (load(skb, 0, &ip, sizeof(struct ipv4_header)) != 0) {
        count_traffic(&tkey, len, 1);
        return 1;
    }
    u8 version = ip.v4.version_ihl >> 4;
    if (version == 4) {
        u32 ihl = (ip.v4.version_ihl & 0x0f) * 4;
        tkey.family = NET_IPV4;
        if (ihl >= 20) {
            proto = ip.v4.protocol;
            // A non-first fragment carries no L4 header.
            if ((NET_NTOHS(ip.v4.frag_off) & 0x1fff) == 0)
                l4_offset = ihl;
        }
        peer = direction == NET_EGRESS ? ip.v4.daddr : ip.v4.saddr;
        __builtin_memcpy(fkey.addr, peer, 4);
    } else if (version == 6 &&
               load(skb, sizeof(struct ipv4_header), (u8 *)&ip + sizeof(struct ipv4_header),
                    sizeof(struct ipv6_header) - sizeof(struct ipv4_header)) == 0) {
        u8 nexthdr = ip.v6.nexthdr;
        u32 offset = sizeof(struct ipv6_header);
        bool has_l4 = true;
        tkey.family = NET_IPV6;
#pragma unroll
        for (int i = 0; i < IPV6_MAX_EXTENSIONS; i++) {
            u8 ext[4];
            if (nexthdr != 0 && nexthdr != 43 && nexthdr != 60 && nexthdr != 44 && nexthdr != 51)
                break;
            if (load(skb, offset, ext, sizeof(ext)) != 0) {
                nexthdr = 255;
                break;
            }
            if (nexthdr == 44) {  // fragment: fixed 8 bytes
                if (((ext[2] << 8) | ext[3]) & 0xfff8)
                    has_l4 = false;  // not the first fragment
                offset += 8;
            } else if (nexthdr == 51) {  // AH: length in 4-byte units minus 2
                offset += ((u32)ext[1] + 2) * 4;
            } else {  // hop-by-hop, routing, destination options
                offset += ((u32)ext[1] + 1) * 8;
            }
            nexthdr = ext[0];
        }
        // Still inside the extension chain after the bound: unparseable.
        if (nexthdr != 0 && nexthdr != 43 && nexthdr != 60 && nexthdr != 44 && nexthdr != 51) {
            proto = nexthdr;
            if (has_l4)
                l4_offset = offset;
        }
        peer = direction == NET_EGRESS ? ip.v6.daddr : ip.v6.saddr;
        __builtin_memcpy(fkey.addr, peer, 16);
    } else {
        count_traffic(&tkey, len, 1);
        return 1;
    }

    u32 l4_header = 0;  // length of the L4 header every GSO segment repeats
    if (proto == 6) {
        tkey.protocol = NET_TCP;
        u8 tcp[2];  // data offset, flags
        if (l4_offset && load(skb, l4_offset + 12, tcp, sizeof(tcp)) == 0) {
            l4_header = (tcp[0] >> 4) * 4;
            u8 flags = tcp[1];
            if (flags & TCP_FLAG_RST) {
                u32 event = direction == NET_EGRESS ? TCP_RST_SENT : TCP_RST_RECEIVED;
                count_tcp_event(cgroup_id, event, 1);
            }
#if TCP_SOCK_OPS
            // Egress SYN: a connecting socket. Ingress SYN: a listener,
            // whose record every accepted socket inherits (BPF_F_CLONE).
            if ((flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN)
                record_owner(skb, cgroup_id);
#endif
        }
    } else if (proto == 17) {
        tkey.protocol = NET_UDP;
        l4_header = 8;
    } else if ((proto == 1 && tkey.family == NET_IPV4) ||
               (proto == 58 && tkey.family == NET_IPV6)) {
        tkey.protocol = NET_ICMP;
    }

    u64 packets = 1;
    u64 bytes = len;
    u32 segs = skb->gso_segs;
    if (segs > 1) {
        packets = segs;
        if (l4_offset && l4_header)
            bytes += (u64)(segs - 1) * (l4_offset + l4_header);
    }

    count_traffic(&tkey, bytes, packets);
    fkey.family = tkey.family;
    fkey.protocol = tkey.protocol;
    count_flow(&fkey, bytes, packets);
    return 1;
}

int network_ingress(struct __sk_buff *skb)
{
    count_packet(skb, NET_INGRESS);
    return 1;
}

int network_egress(struct __sk_buff *skb)
{
    count_packet(skb, NET_EGRESS);
    return 1;
}

#if TCP_SOCK_OPS
static __always_inline void want_retransmits(struct bpf_sock_ops *ctx)
{
    u32 flags = ctx->bpf_sock_ops_cb_flags;
    // Keep flags other programs (or earlier callbacks) set.
    if (!(flags & BPF_SOCK_OPS_RETRANS_CB_FLAG))
        bpf_sock_ops_cb_flags_set(ctx, flags | BPF_SOCK_OPS_RETRANS_CB_FLAG);
}

int network_sockops(struct bpf_sock_ops *ctx)
{
    u32 event;
    u64 n = 1;

    switch (ctx->op) {
    case BPF_SOCK_OPS_TCP_CONNECT_CB:
        // Before the SYN: SYN retransmits are retransmits too.
        want_retransmits(ctx);
        return 1;
    case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
        want_retransmits(ctx);
        event = TCP_OPENED_CLIENT;
        break;
    case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
        want_retransmits(ctx);
        event = TCP_OPENED_SERVER;
        break;
    case BPF_SOCK_OPS_RETRANS_CB:
        // args[1]: segments, counted like TcpRetransSegs (also when the
        // transmit itself then failed, args[2] != 0).
        event = TCP_RETRANSMIT;
        n = ctx->args[1];
        break;
    default:
        return 1;
    }

    struct bpf_sock *sk = ctx->sk;
    if (!sk)
        return 1;
    struct socket_owner *owner = network_sockets.sk_storage_get(sk, 0, 0);
    // 0 = no record (a socket whose SYN passed before orb8 attached); user
    // space folds it into cgroup="<unresolved>".
    count_tcp_event(owner ? owner->cgroup_id : 0, event, n);
    return 1;
}
#endif
