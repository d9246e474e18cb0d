/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The C <-> Rust contract, in one place: every function either side calls,
 * the structs they share and the parameter enumeration. glue.c and fs.c
 * include it, so a definition that does not match its prototype fails the
 * build. The Rust side mirrors the structs and the enumeration in
 * guest-module/ffi.rs (#[repr(C)]) and asserts the same sizes, offsets and
 * values as below; the vmdedup_rs_* functions are in guest-module/entry.rs.
 */
#ifndef VMDEDUP_GLUE_H
#define VMDEDUP_GLUE_H

#include <linux/build_bug.h>
#include <linux/mm_types.h>
#include <linux/stddef.h>
#include <linux/types.h>

struct address_space;
struct file;
struct iov_iter;
struct vm_fault;

/*
 * The extended attribute of a lower file that holds its content fingerprint
 * as hex text (FINGERPRINT_XATTR and FINGERPRINT_TEXT_LEN in
 * protocol/src/abi.rs), written when the image is built (`vmdedup stamp`).
 */
#define VMDEDUP_FP_XATTR "user.vmdedup.b3"
#define VMDEDUP_FP_TEXT_LEN 48

/*
 * The lower inode's identity, sent in a hint (ffi.rs `IdentC`): `fp_len` is
 * VMDEDUP_FP_TEXT_LEN when `fp_text` holds the fingerprint attribute's
 * value (Rust decodes it), else 0.
 */
struct vmdedup_ident {
	u64 size;
	s64 mtime_ns;
	s64 ctime_ns;
	u64 ino;
	u8 fp_text[VMDEDUP_FP_TEXT_LEN];
	u32 fp_len;
	u32 reserved;
};
static_assert(sizeof(struct vmdedup_ident) == 88);
static_assert(offsetof(struct vmdedup_ident, fp_text) == 32);
static_assert(offsetof(struct vmdedup_ident, fp_len) == 80);
static_assert(offsetof(struct vmdedup_ident, size) == 0);
static_assert(offsetof(struct vmdedup_ident, mtime_ns) == 8);
static_assert(offsetof(struct vmdedup_ident, ctime_ns) == 16);
static_assert(offsetof(struct vmdedup_ident, ino) == 24);

/*
 * One read in progress: opaque to Rust, passed back to the helpers in fs.c.
 * `lower` is NULL until a helper needs the lower file (opened then if the
 * open of `file` left it for later).
 */
struct vmdedup_io {
	struct file *file;
	struct file *lower;
	struct iov_iter *iter;
};

/*
 * What vmdedup_mmap() does to a mapping Rust let map pool frames
 * (ffi.rs `MmapPlan`): Rust decides from the mapping's vm_flags.
 */
struct vmdedup_mmap_plan {
	u64 map_id; /* the file map it was checked against: vm_private_data */
	vm_flags_t set_flags; /* VM_* flags to set */
};
static_assert(sizeof(vm_flags_t) == 8);
static_assert(sizeof(struct vmdedup_mmap_plan) == 16);
static_assert(offsetof(struct vmdedup_mmap_plan, map_id) == 0);
static_assert(offsetof(struct vmdedup_mmap_plan, set_flags) == 8);

/* Module parameters Rust reads through vmdedup_glue_param() (ffi.rs `Param`). */
enum vmdedup_param {
	VMDEDUP_PARAM_POLL_US = 0,
	VMDEDUP_PARAM_REHINT_MS = 1,
	VMDEDUP_PARAM_DEFAULT_VERIFY = 2,
	VMDEDUP_PARAM_FAULT_NO_ACK = 3,
	VMDEDUP_PARAM_FAULT_HOLD_ANSWERS = 4,
	VMDEDUP_PARAM_COUNT = 5,
};

/* glue.c, called from Rust (ffi.rs). */
int vmdedup_glue_init(const void *ctx);
void vmdedup_glue_exit(void);
unsigned int vmdedup_glue_param(enum vmdedup_param which);
int vmdedup_glue_pool_read_lock(void);
void vmdedup_glue_pool_read_unlock(int idx);
void vmdedup_glue_pool_sync(void);
void vmdedup_glue_doorbell(void *reg, u32 value);
void vmdedup_glue_tick_soon(void);
void vmdedup_glue_sweep_soon(void);

/* glue.c, called from fs.c. */
const void *vmdedup_glue_ctx(void);

/* fs.c, called from Rust (ffi.rs). */
ssize_t vmdedup_glue_read_lower(struct vmdedup_io *io, loff_t pos, size_t len);
ssize_t vmdedup_glue_read_lower_buf(struct vmdedup_io *io, loff_t pos, void *buf, size_t len);
size_t vmdedup_glue_copy_pool(struct vmdedup_io *io, const void *src, size_t len);
bool vmdedup_glue_pool_equal(const void *pool, const void *buf, size_t len);
void vmdedup_glue_revert(struct vmdedup_io *io, size_t len);
size_t vmdedup_glue_fault_in(struct vmdedup_io *io, size_t len);
void vmdedup_glue_unmap_all(struct address_space *mapping);
unsigned long vmdedup_glue_drop_lower_cache(struct address_space *mapping);
unsigned long vmdedup_glue_drop_lower_pages(struct vmdedup_io *io, loff_t start, loff_t end);
u32 vmdedup_glue_random_below(u32 ceil);
vm_fault_t vmdedup_glue_insert_pfn(struct vm_fault *vmf, unsigned long pfn);
vm_fault_t vmdedup_glue_insert_pfn_at(struct vm_fault *vmf, unsigned long pgoff, unsigned long pfn);

/* fs.c, called from glue.c. */
int vmdedup_fs_init(void);
void vmdedup_fs_exit(void);

/* Rust (entry.rs), called from glue.c. */
/*
 * `doorbell`: the Doorbell register of an ivshmem-doorbell device (BAR0 +
 * 12), mapped until vmdedup_rs_region_detach() has returned; NULL for an
 * ivshmem-plain device (no MSI-X: nothing would deliver a doorbell).
 * `ivposition`: what that device's IVPosition register (BAR0 + 8) read at
 * probe (its peer id), or -1 without a doorbell.
 * `irq`: the device's ring vector is wired to vmdedup_rs_irq() and the event
 * work (so the module may sleep without its timer).
 */
int vmdedup_rs_region_attach(const void *ctx, void *base, u64 len, u64 phys, const char *dev_name,
			     void *doorbell, s64 ivposition, bool irq);
void vmdedup_rs_region_detach(const void *ctx, int slot);
long vmdedup_rs_sysfs_show(const void *ctx, const char *dir, const char *attr, char *buf, size_t len);
int vmdedup_rs_stat_name(int index, char *buf, size_t len);
bool vmdedup_rs_tick(const void *ctx);
void vmdedup_rs_irq(void);

/* Rust (entry.rs), called from fs.c. */
int vmdedup_rs_mount_new(const void *ctx, const char *data, char *lower, size_t lower_len, void **out);
void vmdedup_rs_mount_free(void *mnt);
long vmdedup_rs_mount_show(void *mnt, char *buf, size_t len);
void *vmdedup_rs_inode_new(struct address_space *mapping);
void vmdedup_rs_inode_free(void *ist);
void vmdedup_rs_open(void *mnt, void *ist, const struct vmdedup_ident *id, const char *path, size_t len);
int vmdedup_rs_open_settled(void *mnt, void *ist, const struct vmdedup_ident *id);
ssize_t vmdedup_rs_read_iter(void *mnt, void *ist, struct vmdedup_io *io, loff_t pos, size_t count);
int vmdedup_rs_mmap(void *mnt, void *ist, struct vmdedup_io *io, vm_flags_t vm_flags, unsigned long pgoff,
		    unsigned long npages, struct vmdedup_mmap_plan *plan);
int vmdedup_rs_fault(void *mnt, void *ist, struct vm_fault *vmf, u64 map_id, unsigned long pgoff,
		     unsigned long around_first, unsigned long around_end, vm_flags_t vm_flags,
		     vm_fault_t *ret);
void vmdedup_rs_fault_lower_done(vm_fault_t ret);

#endif
