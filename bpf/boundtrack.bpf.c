// SPDX-License-Identifier: GPL-2.0
/* bindwatch's bound-only change counter: counts every event that can change the set
 * of bound-only TCP sockets (TCP_CLOSE with a local port, in the bind hash only, which
 * the socket iterator never walks) or what sock_diag reports of one. While the count
 * stands still, user space may reuse its last sock_diag bound-only dump instead of
 * walking the bind and established hashes again.
 *
 * A socket becomes bound-only by a successful bind() with a port (the cgroup
 * post-bind hooks, which __inet_bind() runs once the port is taken, for every caller
 * of inet_bind in the cgroup tree they are attached to), or by a return to TCP_CLOSE
 * that keeps an explicitly bound port (SOCK_BINDPORT_LOCK; accepted children inherit
 * the listener's). It stops being one when it leaves TCP_CLOSE (listen, connect) or
 * when it is destroyed. sock:inet_sock_set_state reports every TCP state change;
 * tcp:tcp_destroy_sock every destruction, counted only for sockets marked `visible`
 * here (bound-only when last seen), so the teardown of ordinary connections does not
 * count. A bound device set on a socket (SO_BINDTODEVICE, SO_BINDTOIFINDEX) counts
 * too.
 *
 * The count is kept per network namespace (by its cookie), so a namespace's tables
 * are not made to dump by another's activity; events of namespaces `changes` has no
 * room for count in `overflow`, which every namespace's tables watch. Marks that could
 * not be created are counted in `lost`: user space then trusts no reuse.
 */
#include "boundtrack.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define TCP_CLOSE 7
/* include/net/sock.h */
#define SOCK_BINDPORT_LOCK 8
#define SOCK_DEAD 0
/* include/uapi/asm-generic/socket.h */
#define SOL_SOCKET 1
#define SO_BINDTODEVICE 25
#define SO_BINDTOIFINDEX 62

/* Events that may have changed the bound-only set, by network namespace cookie. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u64);
} changes SEC(".maps");

/* [0]: events of a namespace `changes` had no room for: they count for every one. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} overflow SEC(".maps");

/* [0]: marks that could not be created. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

/* 1 while the socket may be a bound-only socket a dump can see. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u8);
} visible SEC(".maps");

static __always_inline void count(void *map)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(map, &zero);

	if (n)
		__sync_fetch_and_add(n, 1);
}

static __always_inline void changed(__u64 netns)
{
	__u64 one = 1;
	__u64 *n;

	if (!bpf_map_update_elem(&changes, &netns, &one, BPF_NOEXIST))
		return;
	n = bpf_map_lookup_elem(&changes, &netns);
	if (n)
		__sync_fetch_and_add(n, 1);
	else
		count(&overflow);
}

static __always_inline __u64 netns_of(struct sock *sk)
{
	return BPF_CORE_READ(sk, __sk_common.skc_net.net, net_cookie);
}

static __always_inline unsigned long flags_of(struct sock *sk)
{
	struct sock___old *old = (void *)sk;

	if (bpf_core_field_exists(sk->__sk_common.skc_flags))
		return BPF_CORE_READ(sk, __sk_common.skc_flags);
	return BPF_CORE_READ(old, sk_flags);
}

static __always_inline int is_inet_tcp(struct sock *sk)
{
	__u16 family = sk->__sk_common.skc_family;

	return (family == AF_INET || family == AF_INET6) && sk->sk_protocol == IPPROTO_TCP;
}

/* Port taken (inet_num set, in the bind hash); the socket is in TCP_CLOSE. */
static __always_inline int post_bind(struct bpf_sock *ctx)
{
	__u8 *v;

	if (ctx->protocol != IPPROTO_TCP || !ctx->src_port)
		return 1;
	v = bpf_sk_storage_get(&visible, ctx, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (v)
		*v = 1;
	else
		count(&lost);
	changed(bpf_get_netns_cookie(ctx));
	/* 1: the bind goes on. */
	return 1;
}

SEC("cgroup/post_bind4")
int boundtrack_post_bind4(struct bpf_sock *ctx)
{
	return post_bind(ctx);
}

SEC("cgroup/post_bind6")
int boundtrack_post_bind6(struct bpf_sock *ctx)
{
	return post_bind(ctx);
}

/* TP_PROTO(const struct sock *sk, const int oldstate, const int newstate): fired
 * before the change (and before tcp_set_state() releases the port). */
SEC("tp_btf/inet_sock_set_state")
int boundtrack_state(__u64 *ctx)
{
	struct sock *sk = (struct sock *)ctx[0];
	int oldstate = (int)ctx[1];
	int newstate = (int)ctx[2];
	__u8 *v;

	if (!sk || !is_inet_tcp(sk) || !sk->__sk_common.skc_num)
		return 0;
	if (oldstate == TCP_CLOSE) {
		/* Bound-only until now: listen, connect, or closed again. */
		changed(netns_of(sk));
		if (newstate != TCP_CLOSE) {
			v = bpf_sk_storage_get(&visible, sk, 0, 0);
			if (v)
				*v = 0;
		}
		return 0;
	}
	/* Back to TCP_CLOSE with its port kept; a dead socket is destroyed at once. */
	if (newstate == TCP_CLOSE &&
	    (BPF_CORE_READ_BITFIELD(sk, sk_userlocks) & SOCK_BINDPORT_LOCK) &&
	    !(flags_of(sk) & (1UL << SOCK_DEAD))) {
		v = bpf_sk_storage_get(&visible, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (v)
			*v = 1;
		else
			count(&lost);
		changed(netns_of(sk));
	}
	return 0;
}

/* TP_PROTO(struct sock *sk): fired before the port is released. */
SEC("tp_btf/tcp_destroy_sock")
int boundtrack_destroy(__u64 *ctx)
{
	struct sock *sk = (struct sock *)ctx[0];
	__u8 *v;

	if (!sk)
		return 0;
	v = bpf_sk_storage_get(&visible, sk, 0, 0);
	if (v && *v)
		changed(netns_of(sk));
	return 0;
}

/* A bound device changes what a dump reports of a bound-only socket. */
SEC("cgroup/setsockopt")
int boundtrack_setsockopt(struct bpf_sockopt *ctx)
{
	struct bpf_sock *sk = ctx->sk;

	if (ctx->level == SOL_SOCKET &&
	    (ctx->optname == SO_BINDTODEVICE || ctx->optname == SO_BINDTOIFINDEX) && sk &&
	    sk->protocol == IPPROTO_TCP)
		changed(bpf_get_netns_cookie(ctx));
	/* 1: the kernel handles the option as usual. */
	return 1;
}

char LICENSE[] SEC("license") = "GPL";
