// SPDX-License-Identifier: GPL-2.0
/* bindwatch's socket iterator: one fixed-size record per TCP or UDP socket of the
 * network namespace the iterator was created in (iter/tcp walks the listening and the
 * established hash, so TIME_WAIT and request sockets too; iter/udp walks the UDP
 * table). The record carries what sock_diag reports plus the three flags sock_diag
 * never does: SO_REUSEADDR, SO_REUSEPORT and IPV6_V6ONLY, also for sockets without a
 * file (TIME_WAIT copies them from the closed socket in inet_twsk_alloc()).
 *
 * The records it shares with user space are in records.h.
 */
#include "sockiter.h"
#include "records.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10

/* enum tcp_states (include/net/tcp_states.h): UAPI values, stable. */
#define TCP_ESTABLISHED 1
#define TCP_SYN_RECV 3
#define TCP_TIME_WAIT 6
#define TCP_LISTEN 10
#define TCP_NEW_SYN_RECV 12

/* icsk_pending (include/net/inet_connection_sock.h). */
#define ICSK_TIME_RETRANS 1
#define ICSK_TIME_PROBE0 3
#define ICSK_TIME_LOSS_PROBE 5
#define ICSK_TIME_REO_TIMEOUT 6

/* Set by the loader from the kernel's CONFIG_HZ; 0 when unknown (no timers then). */
const volatile __u32 hz = 0;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct narrow);
} narrowing SEC(".maps");

static __always_inline void set_timer(struct sockrec *r, unsigned long expires)
{
	long delta;

	if (!hz)
		return;
	delta = (long)(expires - bpf_jiffies64());
	if (delta < 0)
		delta = 0;
	/* Rounded up as jiffies_to_msecs() does for an HZ that does not divide 1000. */
	r->expires_ms = (__u32)(((__u64)delta * 1000 + hz - 1) / hz);
	r->flags |= REC_TIMER;
}

/* Both addresses and the remote port (r->family set). */
static __always_inline void fill_addrs(struct sockrec *r, struct sock_common *skc)
{
	r->rport = bpf_ntohs(skc->skc_dport);
	if (r->family == AF_INET6) {
		r->laddr[0] = skc->skc_v6_rcv_saddr.in6_u.u6_addr32[0];
		r->laddr[1] = skc->skc_v6_rcv_saddr.in6_u.u6_addr32[1];
		r->laddr[2] = skc->skc_v6_rcv_saddr.in6_u.u6_addr32[2];
		r->laddr[3] = skc->skc_v6_rcv_saddr.in6_u.u6_addr32[3];
		r->raddr[0] = skc->skc_v6_daddr.in6_u.u6_addr32[0];
		r->raddr[1] = skc->skc_v6_daddr.in6_u.u6_addr32[1];
		r->raddr[2] = skc->skc_v6_daddr.in6_u.u6_addr32[2];
		r->raddr[3] = skc->skc_v6_daddr.in6_u.u6_addr32[3];
	} else {
		r->laddr[0] = skc->skc_rcv_saddr;
		r->raddr[0] = skc->skc_daddr;
	}
}

/* What every kind of socket shares: addresses, ports, device, flags (sock_common). */
static __always_inline void fill_common(struct sockrec *r, struct sock_common *skc)
{
	r->family = (__u8)skc->skc_family;
	r->lport = skc->skc_num;
	r->ifindex = (__u32)skc->skc_bound_dev_if;
	r->cookie = bpf_get_socket_cookie(skc);
	fill_addrs(r, skc);
}

static __always_inline void fill_flags(struct sockrec *r, struct sock_common *skc)
{
	__u8 f = REC_FLAGS_KNOWN;

	if (BPF_CORE_READ_BITFIELD(skc, skc_reuse))
		f |= REC_REUSEADDR;
	if (BPF_CORE_READ_BITFIELD(skc, skc_reuseport))
		f |= REC_REUSEPORT;
	if (BPF_CORE_READ_BITFIELD(skc, skc_ipv6only))
		f |= REC_V6ONLY;
	r->flags |= f;
}

/* sock_i_ino(): 0 for a socket without a file (orphans, unaccepted children). */
static __always_inline __u64 inode_of(struct sock *sk)
{
	struct socket *so = BPF_CORE_READ(sk, sk_socket);
	struct socket_alloc *sa = (struct socket_alloc *)so;

	if (!so)
		return 0;
	return BPF_CORE_READ(sa, vfs_inode.i_ino);
}

/* The timer sock_diag reports for a full TCP socket (inet_sk_diag_fill()). */
static __always_inline void full_sock_timer(struct sockrec *r, struct sock *sk)
{
	struct inet_connection_sock *icsk = (struct inet_connection_sock *)sk;
	__u8 pending = BPF_CORE_READ(icsk, icsk_pending);

	if (pending == ICSK_TIME_RETRANS || pending == ICSK_TIME_PROBE0 ||
	    pending == ICSK_TIME_LOSS_PROBE || pending == ICSK_TIME_REO_TIMEOUT) {
		struct inet_connection_sock___old *old = (void *)sk;

		if (bpf_core_field_exists(old->icsk_timeout))
			set_timer(r, BPF_CORE_READ(old, icsk_timeout));
		else
			set_timer(r, BPF_CORE_READ(icsk, icsk_retransmit_timer.expires));
	} else if (BPF_CORE_READ(sk, sk_timer.entry.pprev)) {
		set_timer(r, BPF_CORE_READ(sk, sk_timer.expires));
	}
}

/* The lite record of a narrowed walk; 0 when the socket needs a full one. */
static __always_inline int lite(struct sockrec *r, struct sock_common *skc, __u8 state)
{
	__u32 zero = 0;
	struct narrow *n = bpf_map_lookup_elem(&narrowing, &zero);
	__u16 lport = skc->skc_num;

	if (!n || !n->narrow || state == TCP_LISTEN ||
	    (n->wanted[(lport >> 6) & 1023] & (1ULL << (lport & 63))))
		return 0;
	r->family = (__u8)skc->skc_family;
	r->lport = lport;
	r->flags = REC_LITE;
	r->state = state == TCP_TIME_WAIT ?
		BPF_CORE_READ((struct inet_timewait_sock *)skc, tw_substate) :
		state == TCP_NEW_SYN_RECV ? TCP_SYN_RECV : state;
	if (lport >= n->eph_lo && lport <= n->eph_hi)
		fill_addrs(r, skc);
	return 1;
}

SEC("iter/tcp")
int sockiter_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct sockrec r = {};
	__u8 state;

	if (!skc)
		return 0;
	state = skc->skc_state;
	if (lite(&r, skc, state)) {
		bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
		return 0;
	}
	fill_common(&r, skc);
	if (state == TCP_TIME_WAIT) {
		/* A struct inet_timewait_sock: sock_diag reports its substate
		 * (FIN_WAIT2 or TIME_WAIT), and so does this. */
		struct inet_timewait_sock *tw = (struct inet_timewait_sock *)skc;

		r.state = BPF_CORE_READ(tw, tw_substate);
		fill_flags(&r, skc);
		set_timer(&r, BPF_CORE_READ(tw, tw_timer.expires));
	} else if (state == TCP_NEW_SYN_RECV) {
		/* A struct request_sock: not a socket of its own yet, and its
		 * sock_common flags are not the listener's. sock_diag calls it
		 * SYN_RECV. */
		struct request_sock *req = (struct request_sock *)skc;

		r.state = TCP_SYN_RECV;
		set_timer(&r, BPF_CORE_READ(req, rsk_timer.expires));
	} else {
		struct sock *sk = (struct sock *)skc;

		r.state = state;
		r.uid = ctx->uid;
		r.inode = inode_of(sk);
		fill_flags(&r, skc);
		/* Timers of connections with a file are not read: nothing uses
		 * them, and they are most sockets. */
		if (state != TCP_LISTEN && (state != TCP_ESTABLISHED || !r.inode))
			full_sock_timer(&r, sk);
	}
	bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
	return 0;
}

SEC("iter/udp")
int sockiter_udp(struct bpf_iter__udp *ctx)
{
	struct sock_common *skc = (struct sock_common *)ctx->udp_sk;
	struct sockrec r = {};

	if (!skc)
		return 0;
	fill_common(&r, skc);
	r.state = skc->skc_state;
	r.uid = ctx->uid;
	r.inode = inode_of((struct sock *)skc);
	fill_flags(&r, skc);
	bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
