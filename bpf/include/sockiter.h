/* Minimal kernel type declarations for sockiter.bpf.c.
 *
 * Only the members the program reads are declared. Every struct carries
 * preserve_access_index, so clang records a CO-RE relocation for each access and the
 * loader rewrites the offsets (and bitfield positions) from the running kernel's BTF:
 * nothing here has to match a kernel's real layout or member order.
 */
#ifndef BINDWATCH_SOCKITER_H
#define BINDWATCH_SOCKITER_H

#include "kerneltypes.h"
typedef __u32 uid_t;


/* UAPI (include/uapi/linux/bpf.h): stable values. */
enum bpf_map_type {
	BPF_MAP_TYPE_ARRAY = 2,
};

struct in6_addr {
	union {
		__u8 u6_addr8[16];
		__be32 u6_addr32[4];
	} in6_u;
} CORE;

struct hlist_node {
	struct hlist_node *next;
	struct hlist_node **pprev;
} CORE;

struct timer_list {
	struct hlist_node entry;
	unsigned long expires;
} CORE;

struct sock_common {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	volatile unsigned char skc_state;
	unsigned char skc_reuse : 4;
	unsigned char skc_reuseport : 1;
	unsigned char skc_ipv6only : 1;
	int skc_bound_dev_if;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
} CORE;

struct inode {
	unsigned long i_ino;
} CORE;

struct socket {
	short type;
} CORE;

/* A socket's inode lives right after it (SOCK_INODE in include/net/sock.h). */
struct socket_alloc {
	struct socket socket;
	struct inode vfs_inode;
} CORE;

struct sock {
	struct sock_common __sk_common;
	struct socket *sk_socket;
	struct timer_list sk_timer;
} CORE;

struct inet_connection_sock {
	struct timer_list icsk_retransmit_timer;
	__u8 icsk_pending;
} CORE;

/* Before Linux 6.15 the retransmit/probe deadline had a member of its own. */
struct inet_connection_sock___old {
	unsigned long icsk_timeout;
} CORE;

struct inet_timewait_sock {
	struct sock_common __tw_common;
	unsigned char tw_substate;
	struct timer_list tw_timer;
} CORE;

struct request_sock {
	struct sock_common __req_common;
	struct timer_list rsk_timer;
} CORE;

struct seq_file;

struct bpf_iter_meta {
	struct seq_file *seq;
	__u64 session_id;
	__u64 seq_num;
} CORE;

struct udp_sock;

struct bpf_iter__tcp {
	struct bpf_iter_meta *meta;
	struct sock_common *sk_common;
	uid_t uid;
} CORE;

struct bpf_iter__udp {
	struct bpf_iter_meta *meta;
	struct udp_sock *udp_sk;
	uid_t uid;
} CORE;

#endif
