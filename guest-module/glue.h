/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Shared between the C glue files. The Rust side mirrors these structs in
 * guest-module/ffi.rs (#[repr(C)]).
 */
#ifndef VMDEDUP_GLUE_H
#define VMDEDUP_GLUE_H

#include <linux/types.h>

struct file;
struct iov_iter;
struct address_space;

/* The lower inode's identity, sent in a hint. */
struct vmdedup_ident {
	u64 size;
	s64 mtime_ns;
	s64 ctime_ns;
	u64 ino;
};

/* One read in progress: opaque to Rust, passed back to the helpers in fs.c. */
struct vmdedup_io {
	struct file *lower;
	struct iov_iter *iter;
};

/* The kind of a mapping, as vmdedup_mmap() tells Rust (ffi.rs `MapKind`). */
#define VMDEDUP_MAP_POOL_OK 1u /* may map pool frames: private, or shared and never writable */
#define VMDEDUP_MAP_PRIVATE 2u /* MAP_PRIVATE: writes copy the page first */
#define VMDEDUP_MAP_EXEC 4u /* VM_EXEC: code */

const void *vmdedup_glue_ctx(void);
int vmdedup_fs_init(void);
void vmdedup_fs_exit(void);

/* Called from Rust (declared in ffi.rs). */
ssize_t vmdedup_glue_read_lower(struct vmdedup_io *io, loff_t pos, size_t len);
ssize_t vmdedup_glue_read_lower_buf(struct vmdedup_io *io, loff_t pos, void *buf, size_t len);
size_t vmdedup_glue_copy_out(struct vmdedup_io *io, const void *src, size_t len);
void vmdedup_glue_unmap_all(struct address_space *mapping);
unsigned int vmdedup_glue_param(int which);

#endif
