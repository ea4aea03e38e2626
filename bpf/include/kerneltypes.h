/* The kernel's fixed-width integer types (include/uapi/linux/types.h), shared by the
 * minimal type headers of each program. */
#ifndef BINDWATCH_KERNELTYPES_H
#define BINDWATCH_KERNELTYPES_H

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed char __s8;
typedef short __s16;
typedef int __s32;
typedef long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;

#define CORE __attribute__((preserve_access_index))

#endif
