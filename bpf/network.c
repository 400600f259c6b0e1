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
#include "packet.h"

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

#define TCP_FLAG_RST 0x04
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

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
    u8 proto;       // IP protocol number of the payload, ORB8_PROTO_UNKNOWN = unknown
    u32 l4_offset;  // 0: no L4 header in this packet

    tkey.protocol = NET_OTHER;
    tkey.family = skb->protocol == ORB8_NTOHS(0x86DD) ? NET_IPV6 : NET_IPV4;

    // AH is stepped over: the traffic behind it is still TCP or UDP.
    u8 version = parse_ip(skb, &ip, &proto, &l4_offset, true);
    if (version == 0) {
        count_traffic(&tkey, len, 1);
        return 1;
    }
    tkey.family = version == 4 ? NET_IPV4 : NET_IPV6;
    copy_peer(&ip, version, direction == NET_EGRESS, fkey.addr);

    u32 l4_header = 0;  // length of the L4 header every GSO segment repeats
    if (proto == 6) {
        tkey.protocol = NET_TCP;
        u8 tcp[2];  // data offset, flags
        if (l4_offset && load_packet(skb, l4_offset + 12, tcp, sizeof(tcp)) == 0) {
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
