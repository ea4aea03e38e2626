// SPDX-License-Identifier: GPL-2.0
/* bindwatch's fd scanner: one record per open file, in any process, that is a socket
 * whose inode user space put in `wanted` (the listening sockets whose holders it
 * looks for). The kernel walks every task's fd table (threads sharing their leader's
 * table are skipped), so the whole scan costs a few tens of nanoseconds per fd, where
 * reading /proc/PID/fd links costs microseconds per fd.
 *
 * The record is struct fdrec of records.h.
 */
#include "fdscan.h"
#include "records.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

/* include/uapi/linux/stat.h */
#define S_IFMT 00170000
#define S_IFSOCK 0140000

/* Socket inodes wanted: the value is unused. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FDSCAN_MAX_WANTED);
	__type(key, __u64);
	__type(value, __u8);
} wanted SEC(".maps");

SEC("iter/task_file")
int fdscan(struct bpf_iter__task_file *ctx)
{
	struct task_struct *task = ctx->task;
	struct file *file = ctx->file;
	struct inode *inode;
	struct fdrec r = {};
	__u64 ino;

	if (!task || !file)
		return 0;
	inode = BPF_CORE_READ(file, f_inode);
	if (!inode)
		return 0;
	if ((BPF_CORE_READ(inode, i_mode) & S_IFMT) != S_IFSOCK)
		return 0;
	ino = BPF_CORE_READ(inode, i_ino);
	if (!bpf_map_lookup_elem(&wanted, &ino))
		return 0;
	r.inode = ino;
	r.tgid = BPF_CORE_READ(task, tgid);
	r.fd = ctx->fd;
	bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
