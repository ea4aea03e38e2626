/* Minimal kernel type declarations for boundtrack.bpf.c.
 *
 * The struct sock members carry preserve_access_index: CO-RE relocations, offsets
 * from the running kernel's BTF. struct bpf_sock and struct bpf_sockopt are program
 * contexts of UAPI layout (include/uapi/linux/bpf.h), which the verifier rewrites:
 * no CO-RE for them.
 */
#ifndef BINDWATCH_BOUNDTRACK_H
#define BINDWATCH_BOUNDTRACK_H

#include "kerneltypes.h"


/* UAPI (include/uapi/linux/bpf.h): stable values. */
enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_SK_STORAGE = 24,
};

#define BPF_NOEXIST 1
#define BPF_F_NO_PREALLOC 1
#define BPF_SK_STORAGE_GET_F_CREATE 1

/* The network namespace's cookie (a u64 since Linux 5.14). */
struct net {
	__u64 net_cookie;
} CORE;

typedef struct {
	struct net *net;
} possible_net_t;

struct sock_common {
	possible_net_t skc_net;
	__u16 skc_num;
	unsigned short skc_family;
	volatile unsigned char skc_state;
	/* Linux 6.10 moved sk_flags here (sk_flags is a name for it now). */
	unsigned long skc_flags;
} CORE;

struct socket;
struct inet_bind_bucket;

struct sock {
	struct sock_common __sk_common;
	__u16 sk_protocol;
	/* A bitfield in some kernels, a u8 in others: read with BPF_CORE_READ_BITFIELD. */
	unsigned char sk_userlocks : 4;
} CORE;

/* Before Linux 6.10. */
struct sock___old {
	unsigned long sk_flags;
} CORE;

struct bpf_sock {
	__u32 bound_dev_if;
	__u32 family;
	__u32 type;
	__u32 protocol;
	__u32 mark;
	__u32 priority;
	__u32 src_ip4;
	__u32 src_ip6[4];
	__u32 src_port;
};

struct bpf_sockopt {
	union {
		struct bpf_sock *sk;
		__u64 :64;
	};
	union {
		void *optval;
		__u64 :64;
	};
	union {
		void *optval_end;
		__u64 :64;
	};
	__s32 level;
	__s32 optname;
	__s32 optlen;
	__s32 retval;
};

#endif
