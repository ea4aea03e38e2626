/* The records bindwatch's BPF programs share with user space: what the socket
 * iterator writes (struct sockrec) and reads (struct narrow), what the bind tracer
 * writes to its ring buffer (struct event, struct unix_event), and what the fd
 * scanner writes (struct fdrec). Each has one
 * Rust twin in src/source/records.rs, whose sizes, offsets and constants
 * tests/bpf_records.rs asserts against this file with the BPF target's compiler.
 *
 * Needs the __u8 ... __u64 and __be32 typedefs of the program's types header. */
#ifndef BINDWATCH_RECORDS_H
#define BINDWATCH_RECORDS_H

/* Bits of sockrec.flags. */
#define REC_REUSEADDR (1 << 0)
#define REC_REUSEPORT (1 << 1)
#define REC_V6ONLY (1 << 2)
/* The three flag bits above are the socket's own (not a request socket's). */
#define REC_FLAGS_KNOWN (1 << 3)
/* expires_ms holds a running timer. */
#define REC_TIMER (1 << 4)
/* A narrowed walk's record of a socket on a port of no interest: family, state and
 * local port only, plus the remote end where the local port is ephemeral (the
 * ephemeral tally's key). Nothing else is read, so the walk touches no more of such
 * a socket than the kernel's own walk already did. */
#define REC_LITE (1 << 5)

/* One socket, as the iterator writes it (72 bytes, no implicit padding). */
struct sockrec {
	__u8 family;
	__u8 state;
	__u8 flags;
	__u8 pad0;
	__u16 lport;
	__u16 rport;
	__u32 ifindex;
	__u32 uid;
	__u64 inode;
	__u32 expires_ms;
	__u32 pad1;
	__be32 laddr[4];
	__be32 raddr[4];
	/* The socket cookie, as sock_diag reports it (generated on first use, so
	 * both agree); a TIME_WAIT keeps its connection's. */
	__u64 cookie;
};

_Static_assert(sizeof(struct sockrec) == 72, "struct sockrec is 72 bytes");

/* Which TCP sockets get a full record, set by the reader before it walks on past the
 * listeners. With `narrow` 0 every socket gets one; otherwise listeners and sockets
 * whose local port has its bit in `wanted` do, and every other socket a REC_LITE
 * record. */
struct narrow {
	__u32 narrow;
	__u16 eph_lo;
	__u16 eph_hi;
	__u64 wanted[1024];
};

/* One fd of one process that refers to a wanted socket, as the fd scanner writes
 * it (16 bytes). `tgid` is the process id in the initial pid namespace. */
struct fdrec {
	__u64 inode;
	__u32 tgid;
	__u32 fd;
};

_Static_assert(sizeof(struct fdrec) == 16, "struct fdrec is 16 bytes");

/* How many socket inodes one fd scan looks for at most. */
#define FDSCAN_MAX_WANTED 65536

/* event.kind */
#define KIND_BIND 1
#define KIND_LISTEN 2
#define KIND_CONNECT 3

/* Bits of event.flags. */
#define F_REUSEADDR 1
#define F_REUSEPORT 2
#define F_V6ONLY 4
#define F_SOCKET_READ 8 /* the socket was found through the fd table */

/* One traced call (72 bytes, no implicit padding). */
struct event {
	__u32 pid;
	__u32 tgid;
	__u32 uid;
	__u32 netns;
	__s32 ret;
	__u32 ifindex;
	__u16 port;
	__u16 protocol;
	__u16 socktype;
	__u8 kind;
	__u8 family;
	__u8 flags;
	__u8 reserved[3];
	__u8 addr[16];
	char comm[16];
	__u32 reserved2;
};

#define SUN_PATH_MAX 108
struct unix_path {
	__u32 len; /* bytes of sun_path given (addrlen minus the family) */
	char path[SUN_PATH_MAX];
};

/* A failed AF_UNIX bind: the common event (family AF_UNIX, no address or port)
 * followed by the path (184 bytes). */
struct unix_event {
	struct event e;
	struct unix_path u;
};

#endif
