// SPDX-License-Identifier: GPL-2.0
/* bindevents: failed bind()/listen() (EADDRINUSE, EACCES, EADDRNOTAVAIL), failed
 * connect() (EADDRNOTAVAIL), and successful binds on the ports user space put into
 * `ports`, as ring-buffer events.
 *
 * Syscall tracepoints, not kprobes (kernels without CONFIG_KPROBES have them). At
 * sys_enter the requested sockaddr is read from the user pointer and stashed per
 * thread: a failed bind never sets the socket's address, so reading it back later
 * would lose the port. At sys_exit the stash is taken and, only when the call is one
 * we report, the socket is read from the task's fd table (task->files->fdt->fd[fd]
 * ->private_data = struct socket -> sk) for its SO_REUSEADDR, SO_REUSEPORT,
 * IPV6_V6ONLY, bound device, protocol and network namespace. The fast path (a successful call) is a
 * user read of the sockaddr, one map update at enter and a lookup + delete (+ a
 * `ports` lookup for binds) at exit.
 *
 * An AF_UNIX bind() has its sun_path (at most 108 bytes, as many as its addrlen
 * says) read at sys_enter_bind into a per-thread map; a bind that fails with
 * EADDRINUSE is reported as a `struct unix_event` (the event plus the path). */
#include "bindevents_types.h"
#include "records.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#define AF_UNIX 1
#define AF_INET 2
#define AF_INET6 10
#define EACCES 13
#define EADDRINUSE 98
#define EADDRNOTAVAIL 99

char LICENSE[] SEC("license") = "GPL";

/* The tracepoint records of include/trace/events/syscalls.h: 8 bytes of common
 * fields, the syscall number, then the arguments (or the return value). */
struct sys_enter_ctx {
	__u64 common;
	__s32 nr;
	__u32 pad;
	__u64 args[6];
};

struct sys_exit_ctx {
	__u64 common;
	__s32 nr;
	__u32 pad;
	__s64 ret;
};

struct pending {
	__u32 fd;
	__u16 port; /* host order */
	__u8 kind;
	__u8 family;
	__u8 addr[16];
};

/* Calls in flight, by thread. LRU: a thread killed inside bind() never reaches
 * sys_exit, and its entry must not fill the map for good. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 10240);
	__type(key, __u64);
	__type(value, struct pending);
} pending SEC(".maps");

/* Ports of interest (host order): successful binds on these are reported too. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u16);
	__type(value, __u8);
} ports SEC(".maps");

/* AF_UNIX binds: the sun_path a thread in bind() asked for (its `pending` entry
 * says AF_UNIX). A failed bind leaves no name on the socket to read back later. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, struct unix_path);
} unix_paths SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

/* Events the ring buffer had no room for (reserve failures), one counter per CPU:
 * user space sums them into bindwatch_bind_events_lost_total, so a flood is counted,
 * never silently undercounted. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

static __always_inline void count_lost(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&lost, &zero);
	/* Atomic: a preempted program on this CPU may be adding too. */
	if (n)
		__sync_fetch_and_add(n, 1);
}

static __always_inline int stash_sockaddr(__u8 kind, __u64 fd, const void *uaddr, __u64 len)
{
	struct pending p = {};
	__u16 family = 0;

	if (!uaddr || len < 8)
		return 0;
	if (bpf_probe_read_user(&family, sizeof(family), uaddr))
		return 0;
	if (family == AF_INET) {
		/* sockaddr_in: family, port (network order), address */
		struct {
			__u16 family;
			__u16 port;
			__u8 addr[4];
		} sin;
		if (bpf_probe_read_user(&sin, sizeof(sin), uaddr))
			return 0;
		p.port = __builtin_bswap16(sin.port);
		__builtin_memcpy(p.addr, sin.addr, 4);
	} else if (family == AF_INET6) {
		/* sockaddr_in6: family, port, flowinfo, address */
		struct {
			__u16 family;
			__u16 port;
			__u32 flowinfo;
			__u8 addr[16];
		} sin6;
		if (len < sizeof(sin6))
			return 0;
		if (bpf_probe_read_user(&sin6, sizeof(sin6), uaddr))
			return 0;
		p.port = __builtin_bswap16(sin6.port);
		__builtin_memcpy(p.addr, sin6.addr, 16);
	} else if (family == AF_UNIX && kind == KIND_BIND) {
		/* Bounded: at most sun_path, read once into the per-thread map. */
		struct unix_path u = {};
		__u64 n = len - 2;
		if (n > SUN_PATH_MAX)
			n = SUN_PATH_MAX;
		if (n == 0)
			return 0; /* autobind: no name asked for */
		if (bpf_probe_read_user(u.path, n, (const char *)uaddr + 2))
			return 0;
		u.len = (__u32)n;
		__u64 uid = bpf_get_current_pid_tgid();
		bpf_map_update_elem(&unix_paths, &uid, &u, BPF_ANY);
	} else {
		return 0;
	}
	p.fd = (__u32)fd;
	p.kind = kind;
	p.family = (__u8)family;
	__u64 id = bpf_get_current_pid_tgid();
	bpf_map_update_elem(&pending, &id, &p, BPF_ANY);
	return 0;
}

/* Fills the socket's side of the event from the fd table. */
static __always_inline void read_socket(struct event *e, __u32 fd, __u8 kind)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct files_struct *files = BPF_CORE_READ(task, files);
	struct fdtable *fdt = BPF_CORE_READ(files, fdt);
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *file = 0;
	struct socket *sock;
	struct sock *sk;

	if (!fdt || fd >= BPF_CORE_READ(fdt, max_fds))
		return;
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) || !file)
		return;
	sock = BPF_CORE_READ(file, private_data);
	/* A socket's file points back at it: anything else is not a socket (or the fd
	 * was replaced by another thread meanwhile). */
	if (!sock || BPF_CORE_READ(sock, file) != file)
		return;
	sk = BPF_CORE_READ(sock, sk);
	if (!sk)
		return;
	struct sock_common *skc = &sk->__sk_common;
	__u8 flags = F_SOCKET_READ;
	if (BPF_CORE_READ_BITFIELD_PROBED(skc, skc_reuse))
		flags |= F_REUSEADDR;
	if (BPF_CORE_READ_BITFIELD_PROBED(skc, skc_reuseport))
		flags |= F_REUSEPORT;
	if (BPF_CORE_READ_BITFIELD_PROBED(skc, skc_ipv6only))
		flags |= F_V6ONLY;
	e->flags = flags;
	e->protocol = BPF_CORE_READ(sk, sk_protocol);
	e->ifindex = (__u32)BPF_CORE_READ(skc, skc_bound_dev_if);
	e->socktype = (__u16)BPF_CORE_READ(sock, type);
	e->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	if (kind == KIND_LISTEN) {
		/* listen() names no address: the socket's own bound address is it. */
		__u16 family = BPF_CORE_READ(skc, skc_family);
		e->family = (__u8)family;
		e->port = BPF_CORE_READ(skc, skc_num);
		if (family == AF_INET) {
			__be32 a = BPF_CORE_READ(skc, skc_rcv_saddr);
			__builtin_memcpy(e->addr, &a, 4);
		} else {
			bpf_core_read(e->addr, 16, &skc->skc_v6_rcv_saddr);
		}
	}
}

/* A bind on AF_UNIX: reported only when it failed with EADDRINUSE, with its path. */
static __always_inline int finish_unix(struct sys_exit_ctx *ctx, struct pending *p, __u64 id)
{
	struct unix_path *up = bpf_map_lookup_elem(&unix_paths, &id);
	struct unix_path u;

	if (!up)
		return 0;
	u = *up;
	bpf_map_delete_elem(&unix_paths, &id);
	if (ctx->ret != -EADDRINUSE)
		return 0;
	struct unix_event *ue = bpf_ringbuf_reserve(&events, sizeof(*ue), 0);
	if (!ue) {
		count_lost();
		return 0;
	}
	__builtin_memset(ue, 0, sizeof(*ue));
	ue->e.pid = (__u32)id;
	ue->e.tgid = (__u32)(id >> 32);
	ue->e.uid = (__u32)bpf_get_current_uid_gid();
	ue->e.ret = (__s32)ctx->ret;
	ue->e.kind = KIND_BIND;
	ue->e.family = AF_UNIX;
	bpf_get_current_comm(ue->e.comm, sizeof(ue->e.comm));
	read_socket(&ue->e, p->fd, KIND_BIND);
	ue->u = u;
	bpf_ringbuf_submit(ue, 0);
	return 0;
}

static __always_inline int finish(struct sys_exit_ctx *ctx, __u8 kind)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct pending *pp = bpf_map_lookup_elem(&pending, &id);
	struct pending p;
	__s64 ret = ctx->ret;

	if (!pp)
		return 0;
	p = *pp;
	bpf_map_delete_elem(&pending, &id);
	if (p.kind != kind)
		return 0;
	if (p.family == AF_UNIX)
		return finish_unix(ctx, &p, id);

	if (kind == KIND_CONNECT) {
		if (ret != -EADDRNOTAVAIL)
			return 0;
	} else if (ret == 0) {
		if (kind != KIND_BIND || !bpf_map_lookup_elem(&ports, &p.port))
			return 0;
	} else if (ret != -EADDRINUSE && ret != -EACCES && ret != -EADDRNOTAVAIL) {
		return 0;
	}

	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		return 0;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->pid = (__u32)id;
	e->tgid = (__u32)(id >> 32);
	e->uid = (__u32)bpf_get_current_uid_gid();
	e->ret = (__s32)ret;
	e->kind = kind;
	e->family = p.family;
	e->port = p.port;
	__builtin_memcpy(e->addr, p.addr, 16);
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	read_socket(e, p.fd, kind);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_bind")
int enter_bind(struct sys_enter_ctx *ctx)
{
	return stash_sockaddr(KIND_BIND, ctx->args[0], (const void *)ctx->args[1], ctx->args[2]);
}

SEC("tracepoint/syscalls/sys_exit_bind")
int exit_bind(struct sys_exit_ctx *ctx)
{
	return finish(ctx, KIND_BIND);
}

SEC("tracepoint/syscalls/sys_enter_connect")
int enter_connect(struct sys_enter_ctx *ctx)
{
	return stash_sockaddr(KIND_CONNECT, ctx->args[0], (const void *)ctx->args[1], ctx->args[2]);
}

SEC("tracepoint/syscalls/sys_exit_connect")
int exit_connect(struct sys_exit_ctx *ctx)
{
	return finish(ctx, KIND_CONNECT);
}

SEC("tracepoint/syscalls/sys_enter_listen")
int enter_listen(struct sys_enter_ctx *ctx)
{
	struct pending p = {};
	__u64 id = bpf_get_current_pid_tgid();

	p.fd = (__u32)ctx->args[0];
	p.kind = KIND_LISTEN;
	bpf_map_update_elem(&pending, &id, &p, BPF_ANY);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_listen")
int exit_listen(struct sys_exit_ctx *ctx)
{
	return finish(ctx, KIND_LISTEN);
}
