// Layouts shared by bpf/network.c and exporter/sources/network/, which
// decodes map keys with numpy dtypes built from BCC's own table types
// (exporter/probes.py key_dtype); enum values are mirrored in source.py.
// Only fixed-width fields with explicit padding, so the layout is the same on
// every ABI.
#ifndef ORB8_NETWORK_H
#define ORB8_NETWORK_H

enum net_direction {
    NET_INGRESS = 0,
    NET_EGRESS = 1,
};

enum net_protocol {
    NET_TCP = 0,
    NET_UDP = 1,
    NET_ICMP = 2,
    NET_OTHER = 3,
};

enum net_family {
    NET_IPV4 = 0,
    NET_IPV6 = 1,
};

enum net_tcp_event {
    TCP_OPENED_CLIENT = 0,  // active open reached ESTABLISHED
    TCP_OPENED_SERVER = 1,  // passive open reached ESTABLISHED
    TCP_RST_SENT = 2,       // segment with RST left a socket of the cgroup
    TCP_RST_RECEIVED = 3,   // segment with RST reached a socket of the cgroup
    TCP_RETRANSMIT = 4,     // segments retransmitted (as TcpRetransSegs counts them)
};

// Indexes of the per-CPU network_stats array.
enum net_stat {
    STAT_TRAFFIC_FAILURES = 0,  // network_traffic full: packet not counted there
    STAT_TCP_FAILURES = 1,      // network_tcp full: event not counted
    STAT_FLOW_INSERTS = 2,      // new entries created in network_flows
    STAT_FLOW_FAILURES = 3,     // network_flows could not take a new entry
    STAT_COUNT = 4,
};

// network_traffic: exact per-cgroup counters (per-CPU hash).
struct traffic_key {
    __u64 cgroup_id;
    __u8 direction;
    __u8 protocol;
    __u8 family;
    __u8 pad[5];
};

struct traffic_value {
    __u64 bytes;
    __u64 packets;
};

// network_tcp: TCP health events per cgroup (per-CPU hash, value u64).
struct tcp_event_key {
    __u64 cgroup_id;
    __u32 event;
    __u32 pad;
};

// network_flows: per (cgroup, peer address) counters, best effort (LRU).
// IPv4 addresses use the first 4 bytes of addr, the rest stays zero.
struct flow_key {
    __u64 cgroup_id;
    __u8 addr[16];
    __u8 family;
    __u8 protocol;
    __u8 direction;
    __u8 pad[5];
};

struct flow_value {
    __u64 bytes;
    __u64 packets;
};

// network_sockets: per-socket storage, the cgroup that owns a TCP socket,
// for sock_ops callbacks that run where the current task is unrelated.
struct socket_owner {
    __u64 cgroup_id;
};

#endif
