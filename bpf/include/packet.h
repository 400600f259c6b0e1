// Packet parsing shared by the cgroup_skb probes (bpf/network.c, bpf/dns.c):
// copying header bytes out of an skb and finding the L4 header behind an
// IPv4 or IPv6 header. Code, not layouts shared with user space: nothing
// here reaches a map. Only stable interfaces: __sk_buff fields, packet bytes
// and bpf_skb_load_bytes(). skb->data starts at the network header in
// cgroup_skb programs, so offset 0 is the IP header.
#ifndef ORB8_PACKET_H
#define ORB8_PACKET_H

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define ORB8_NTOHS(x) __builtin_bswap16(x)
#else
#define ORB8_NTOHS(x) (x)
#endif

// Extension headers walked before giving up on finding the L4 header.
#define IPV6_MAX_EXTENSIONS 6
// Bound that lets the verifier check direct packet reads at a variable offset.
#define MAX_DIRECT_OFFSET 512

#define ORB8_PROTO_UNKNOWN 255  // not an IANA protocol number in use

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
// header on every packet. 0 on success.
static __always_inline int load_packet(struct __sk_buff *skb, u32 offset, void *to, u32 len)
{
    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;
    if (offset <= MAX_DIRECT_OFFSET && data + offset + len <= data_end) {
        __builtin_memcpy(to, data + offset, len);
        return 0;
    }
    return bpf_skb_load_bytes(skb, offset, to, len);
}

// IPv6 extension headers the walk steps over: hop-by-hop (0), routing (43),
// destination options (60), fragment (44), and AH (51) when asked to.
static __always_inline bool ipv6_extension(u8 nexthdr, bool walk_ah)
{
    return nexthdr == 0 || nexthdr == 43 || nexthdr == 60 || nexthdr == 44 ||
           (walk_ah && nexthdr == 51);
}

// Read the IP header into *ip and find the L4 header behind it.
// Returns the IP version (4 or 6), or 0 when the packet is neither or its
// header cannot be read (*proto is then unknown and *l4 0).
// *proto: the IP protocol number of the payload; ORB8_PROTO_UNKNOWN when the
// header is not understood (an IPv4 header length under 20 bytes, an
// extension chain longer than IPV6_MAX_EXTENSIONS or cut short).
// *l4: the offset of the L4 header; 0 when the packet carries none (a later
// fragment: *proto is still the payload's protocol) or proto is unknown.
// walk_ah: step over IPv6 AH headers too (else AH ends the walk and the
// protocol is unknown).
static __always_inline u8 parse_ip(struct __sk_buff *skb, union ip_header *ip, u8 *proto,
                                   u32 *l4, bool walk_ah)
{
    *proto = ORB8_PROTO_UNKNOWN;
    *l4 = 0;
    if (load_packet(skb, 0, ip, sizeof(struct ipv4_header)) != 0)
        return 0;
    u8 version = ip->v4.version_ihl >> 4;
    if (version == 4) {
        u32 ihl = (ip->v4.version_ihl & 0x0f) * 4;
        if (ihl >= 20) {
            *proto = ip->v4.protocol;
            // A non-first fragment carries no L4 header.
            if ((ORB8_NTOHS(ip->v4.frag_off) & 0x1fff) == 0)
                *l4 = ihl;
        }
        return 4;
    }
    if (version != 6 ||
        load_packet(skb, sizeof(struct ipv4_header), (u8 *)ip + sizeof(struct ipv4_header),
                    sizeof(struct ipv6_header) - sizeof(struct ipv4_header)) != 0)
        return 0;
    u8 nexthdr = ip->v6.nexthdr;
    u32 offset = sizeof(struct ipv6_header);
    bool has_l4 = true;
#pragma unroll
    for (int i = 0; i < IPV6_MAX_EXTENSIONS; i++) {
        u8 ext[4];
        if (!ipv6_extension(nexthdr, walk_ah))
            break;
        if (load_packet(skb, offset, ext, sizeof(ext)) != 0)
            return 6;  // cut short: unknown
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
    // Still inside the extension chain after the bound: unknown.
    if (!ipv6_extension(nexthdr, true)) {
        *proto = nexthdr;
        if (has_l4)
            *l4 = offset;
    }
    return 6;
}

// The address of the other end: the destination of an egress packet, the
// source of an ingress one. IPv4 fills the first 4 bytes of `to`.
static __always_inline void copy_peer(union ip_header *ip, u8 version, bool egress, u8 *to)
{
    if (version == 4)
        __builtin_memcpy(to, egress ? ip->v4.daddr : ip->v4.saddr, 4);
    else
        __builtin_memcpy(to, egress ? ip->v6.daddr : ip->v6.saddr, 16);
}

#endif
