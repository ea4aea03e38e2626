/* Minimal kernel type declarations for fdscan.bpf.c.
 *
 * Members carry preserve_access_index: CO-RE relocations, offsets from the running
 * kernel's BTF. struct bpf_iter__task_file is the iterator's context, whose layout the
 * verifier checks against the kernel's (kernel/bpf/task_iter.c).
 */
#ifndef BINDWATCH_FDSCAN_H
#define BINDWATCH_FDSCAN_H

#include "kerneltypes.h"

/* UAPI (include/uapi/linux/bpf.h): stable values. */
enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
};

struct task_struct {
	int tgid;
} CORE;

struct inode {
	unsigned short i_mode;
	unsigned long i_ino;
} CORE;

struct file {
	struct inode *f_inode;
} CORE;

struct bpf_iter_meta {
	void *seq;
	__u64 session_id;
	__u64 seq_num;
} CORE;

struct bpf_iter__task_file {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
	__u32 fd;
	struct file *file;
} CORE;

#endif
