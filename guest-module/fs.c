// SPDX-License-Identifier: GPL-2.0
/*
 * vmdedupfs C glue: the VFS operation tables Linux 6.12 has no Rust
 * abstraction for. A read-only stacking view of a lower directory:
 *
 *  - every vmdedupfs inode wraps one lower inode (iget5 keyed on it), every
 *    positive dentry holds the lower path in d_fsdata;
 *  - lookup, readdir, getattr, readlink, xattr reads, statfs pass through;
 *  - the super block is SB_RDONLY, so the VFS answers every write, create,
 *    unlink, setattr ... with EROFS before it reaches us;
 *  - regular files: open opens the lower file as a backing file (the way
 *    overlayfs does) and hands the decision work to Rust (hint, answer);
 *    read_iter and mmap ask Rust what to serve from where; on a pool
 *    mapping (VM_MIXEDMAP) Rust inserts the pool frame under the file's lock,
 *    or, once the file map was revoked, the fault inserts the lower file's
 *    page-cache page.
 *
 * Every decision (options, hints, answers, pool bounds, verification,
 * which mappings may use the pool, counters) is in Rust: guest-module/fs.rs
 * and the layers below it, reached through the vmdedup_rs_* entry points
 * declared in glue.h (guest-module/entry.rs).
 */
#include <linux/backing-file.h>
#include <linux/cred.h>
#include <linux/dcache.h>
#include <linux/fadvise.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mount.h>
#include <linux/namei.h>
#include <linux/pagemap.h>
#include <linux/pfn_t.h>
#include <linux/random.h>
#include <linux/sched/mm.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/splice.h>
#include <linux/statfs.h>
#include <linux/uio.h>
#include <linux/xattr.h>

#include "glue.h"

#define VMDEDUPFS_MAGIC 0x766d6464 /* "vmdd" */
/* Pages a read fault on a pool mapping maps at once (fault-around). */
#define VMDEDUP_FAULT_AROUND 16

struct vmdedup_sb {
	struct path lower_root;
	const struct cred *cred;
	void *rs;
};

struct vmdedup_inode {
	struct inode vfs_inode;
	struct inode *lower;
	void *rs; /* Rust per-file state (regular files), or NULL */
};

static struct kmem_cache *vmdedup_inode_cache;

static inline struct vmdedup_sb *VSB(struct super_block *sb) { return sb->s_fs_info; }
static inline struct vmdedup_inode *VI(struct inode *inode)
{
	return container_of(inode, struct vmdedup_inode, vfs_inode);
}
static inline struct path *lower_path(const struct dentry *d) { return d->d_fsdata; }

static const struct inode_operations vmdedup_dir_iops, vmdedup_file_iops, vmdedup_link_iops, vmdedup_special_iops;
static const struct file_operations vmdedup_dir_fops, vmdedup_file_fops;

/* ---- inodes ------------------------------------------------------------- */

static void vmdedup_copy_attr(struct inode *inode, struct inode *lower)
{
	inode->i_mode = lower->i_mode;
	inode->i_uid = lower->i_uid;
	inode->i_gid = lower->i_gid;
	inode->i_rdev = lower->i_rdev;
	inode->i_ino = lower->i_ino;
	set_nlink(inode, lower->i_nlink);
	i_size_write(inode, i_size_read(lower));
	inode_set_atime_to_ts(inode, inode_get_atime(lower));
	inode_set_mtime_to_ts(inode, inode_get_mtime(lower));
	inode_set_ctime_to_ts(inode, inode_get_ctime(lower));
	inode->i_blkbits = lower->i_blkbits;
	inode->i_blocks = lower->i_blocks;
}

static int vmdedup_inode_test(struct inode *inode, void *lower) { return VI(inode)->lower == lower; }
static int vmdedup_inode_set(struct inode *inode, void *lower)
{
	VI(inode)->lower = igrab(lower);
	return VI(inode)->lower ? 0 : -ESTALE;
}

static struct inode *vmdedup_iget(struct super_block *sb, struct inode *lower)
{
	struct inode *inode = iget5_locked(sb, (unsigned long)lower, vmdedup_inode_test, vmdedup_inode_set, lower);

	if (!inode)
		return ERR_PTR(-ENOMEM);
	if (!(inode->i_state & I_NEW))
		return inode;
	vmdedup_copy_attr(inode, lower);
	inode->i_flags |= S_NOATIME | S_NOCMTIME;
	switch (inode->i_mode & S_IFMT) {
	case S_IFDIR:
		inode->i_op = &vmdedup_dir_iops;
		inode->i_fop = &vmdedup_dir_fops;
		break;
	case S_IFREG:
		inode->i_op = &vmdedup_file_iops;
		inode->i_fop = &vmdedup_file_fops;
		/* NULL on allocation failure: the file is then served from lower only. */
		VI(inode)->rs = vmdedup_rs_inode_new(inode->i_mapping);
		break;
	case S_IFLNK:
		inode->i_op = &vmdedup_link_iops;
		break;
	default:
		inode->i_op = &vmdedup_special_iops;
		init_special_inode(inode, inode->i_mode, lower->i_rdev);
		break;
	}
	unlock_new_inode(inode);
	return inode;
}

static struct inode *vmdedup_alloc_inode(struct super_block *sb)
{
	struct vmdedup_inode *vi = alloc_inode_sb(sb, vmdedup_inode_cache, GFP_KERNEL);

	if (!vi)
		return NULL;
	vi->lower = NULL;
	vi->rs = NULL;
	return &vi->vfs_inode;
}

static void vmdedup_free_inode(struct inode *inode)
{
	kmem_cache_free(vmdedup_inode_cache, VI(inode));
}

static void vmdedup_evict_inode(struct inode *inode)
{
	struct vmdedup_inode *vi = VI(inode);

	truncate_inode_pages_final(&inode->i_data);
	clear_inode(inode);
	if (vi->rs)
		vmdedup_rs_inode_free(vi->rs);
	vi->rs = NULL;
	iput(vi->lower);
	vi->lower = NULL;
}

static void vmdedup_inode_init_once(void *p)
{
	inode_init_once(&((struct vmdedup_inode *)p)->vfs_inode);
}

/* ---- dentries ----------------------------------------------------------- */

static int vmdedup_set_lower(struct dentry *dentry, struct vfsmount *mnt, struct dentry *lower)
{
	struct path *p = kmalloc(sizeof(*p), GFP_KERNEL);

	if (!p)
		return -ENOMEM;
	p->mnt = mntget(mnt);
	p->dentry = lower; /* reference passed in */
	dentry->d_fsdata = p;
	return 0;
}

static void vmdedup_d_release(struct dentry *dentry)
{
	struct path *p = dentry->d_fsdata;

	if (p) {
		path_put(p);
		kfree(p);
	}
}

static const struct dentry_operations vmdedup_dops = {
	.d_release = vmdedup_d_release,
};

static struct dentry *vmdedup_lookup(struct inode *dir, struct dentry *dentry, unsigned int flags)
{
	struct path *parent = lower_path(dentry->d_parent);
	struct dentry *lower;
	struct inode *inode;
	int err;

	if (!parent)
		return ERR_PTR(-ESTALE);
	lower = lookup_one_unlocked(mnt_idmap(parent->mnt), dentry->d_name.name, parent->dentry,
				    dentry->d_name.len);
	if (IS_ERR(lower))
		return ERR_CAST(lower);
	if (d_is_negative(lower)) {
		dput(lower);
		return d_splice_alias(NULL, dentry);
	}
	inode = vmdedup_iget(dir->i_sb, d_inode(lower));
	if (IS_ERR(inode)) {
		dput(lower);
		return ERR_CAST(inode);
	}
	err = vmdedup_set_lower(dentry, parent->mnt, lower);
	if (err) {
		dput(lower);
		iput(inode);
		return ERR_PTR(err);
	}
	return d_splice_alias(inode, dentry);
}

/* ---- attributes, links, xattrs ------------------------------------------ */

static int vmdedup_getattr(struct mnt_idmap *idmap, const struct path *path, struct kstat *stat,
			   u32 request_mask, unsigned int flags)
{
	struct path *lp = lower_path(path->dentry);
	int err;

	if (!lp)
		return -ESTALE;
	/* The VFS marks calls that already passed the security hooks (as ecryptfs does). */
	if (flags & AT_GETATTR_NOSEC)
		err = vfs_getattr_nosec(lp, stat, request_mask, flags);
	else
		err = vfs_getattr(lp, stat, request_mask, flags);
	if (!err)
		stat->dev = path->dentry->d_sb->s_dev;
	return err;
}

static const char *vmdedup_get_link(struct dentry *dentry, struct inode *inode, struct delayed_call *done)
{
	if (!dentry)
		return ERR_PTR(-ECHILD);
	if (!lower_path(dentry))
		return ERR_PTR(-ESTALE);
	return vfs_get_link(lower_path(dentry)->dentry, done);
}

static ssize_t vmdedup_listxattr(struct dentry *dentry, char *list, size_t size)
{
	if (!lower_path(dentry))
		return -ESTALE;
	return vfs_listxattr(lower_path(dentry)->dentry, list, size);
}

static int vmdedup_xattr_get(const struct xattr_handler *h, struct dentry *dentry, struct inode *inode,
			     const char *name, void *buffer, size_t size)
{
	struct path *lp = lower_path(dentry);

	if (!lp)
		return -ESTALE;
	return vfs_getxattr(mnt_idmap(lp->mnt), lp->dentry, name, buffer, size);
}

static int vmdedup_xattr_set(const struct xattr_handler *h, struct mnt_idmap *idmap, struct dentry *dentry,
			     struct inode *inode, const char *name, const void *value, size_t size, int flags)
{
	return -EROFS;
}

/* The empty prefix matches every name: all xattr reads go to the lower inode. */
static const struct xattr_handler vmdedup_xattr_handler = {
	.prefix = "",
	.get = vmdedup_xattr_get,
	.set = vmdedup_xattr_set,
};
static const struct xattr_handler * const vmdedup_xattr_handlers[] = { &vmdedup_xattr_handler, NULL };

static const struct inode_operations vmdedup_dir_iops = {
	.lookup = vmdedup_lookup,
	.getattr = vmdedup_getattr,
	.listxattr = vmdedup_listxattr,
};
static const struct inode_operations vmdedup_file_iops = {
	.getattr = vmdedup_getattr,
	.listxattr = vmdedup_listxattr,
};
static const struct inode_operations vmdedup_link_iops = {
	.get_link = vmdedup_get_link,
	.getattr = vmdedup_getattr,
	.listxattr = vmdedup_listxattr,
};
static const struct inode_operations vmdedup_special_iops = {
	.getattr = vmdedup_getattr,
	.listxattr = vmdedup_listxattr,
};

/* ---- directories -------------------------------------------------------- */

static int vmdedup_dir_open(struct inode *inode, struct file *file)
{
	struct path *lp = lower_path(file->f_path.dentry);
	struct file *lf;

	if (!lp)
		return -ESTALE;
	lf = dentry_open(lp, O_RDONLY | O_DIRECTORY | O_LARGEFILE, VSB(inode->i_sb)->cred);
	if (IS_ERR(lf))
		return PTR_ERR(lf);
	file->private_data = lf;
	return 0;
}

static int vmdedup_release(struct inode *inode, struct file *file)
{
	if (file->private_data)
		fput(file->private_data);
	return 0;
}

static int vmdedup_iterate(struct file *file, struct dir_context *ctx)
{
	struct file *lf = file->private_data;

	/* iterate_dir() takes the position from the lower file and returns it in ctx. */
	lf->f_pos = ctx->pos;
	return iterate_dir(lf, ctx);
}

static loff_t vmdedup_dir_llseek(struct file *file, loff_t offset, int whence)
{
	struct file *lf = file->private_data;
	loff_t pos;

	lf->f_pos = file->f_pos;
	pos = vfs_llseek(lf, offset, whence);
	if (pos >= 0)
		file->f_pos = pos;
	return pos;
}

static const struct file_operations vmdedup_dir_fops = {
	.open = vmdedup_dir_open,
	.release = vmdedup_release,
	.iterate_shared = vmdedup_iterate,
	.llseek = vmdedup_dir_llseek,
	.read = generic_read_dir,
};

/* ---- regular files ------------------------------------------------------ */

/*
 * The lower file's fingerprint attribute, read once per open. No permission
 * check: the opener could read the file's bytes, whose hash this is.
 */
static void vmdedup_read_fingerprint(struct dentry *lower, struct vmdedup_ident *id)
{
	ssize_t n = __vfs_getxattr(lower, d_inode(lower), VMDEDUP_FP_XATTR,
				   id->fp_text, sizeof(id->fp_text));

	id->fp_len = n == sizeof(id->fp_text) ? n : 0;
	id->reserved = 0;
}

/* Opens the lower file behind `file` (a regular file of ours). */
static struct file *vmdedup_open_lower(struct file *file)
{
	struct path *lp = lower_path(file->f_path.dentry);

	if (!lp)
		return ERR_PTR(-ESTALE);
	return backing_file_open(file, file->f_flags & ~(O_CREAT | O_EXCL | O_NOCTTY | O_TRUNC), lp,
				 VSB(file_inode(file)->i_sb)->cred);
}

/*
 * The lower file behind `file`, opened now if the open left it for later
 * (a settled file, see vmdedup_file_open()). Two callers may race to open
 * it: the first to publish wins, the other drops its copy. Once set,
 * file->private_data stays until release: faults and ->access of a mapping
 * read it without this (vmdedup_mmap() opens it before a mapping exists).
 */
static struct file *vmdedup_lower_file(struct file *file)
{
	struct file *lf = smp_load_acquire(&file->private_data), *old;

	if (lf)
		return lf;
	lf = vmdedup_open_lower(file);
	if (IS_ERR(lf))
		return lf;
	/* Full barrier: the opened file is visible before its pointer. */
	old = cmpxchg(&file->private_data, NULL, lf);
	if (old) {
		fput(lf);
		return old;
	}
	return lf;
}

static int vmdedup_file_open(struct inode *inode, struct file *file)
{
	struct vmdedup_sb *sbi = VSB(inode->i_sb);
	struct path *lp = lower_path(file->f_path.dentry);
	struct inode *lower = VI(inode)->lower;
	struct vmdedup_ident id = {};
	struct timespec64 mt, ct;
	struct file *lf;
	char *buf, *path;

	if (!lp)
		return -ESTALE;
	if (VI(inode)->rs) {
		mt = inode_get_mtime(lower);
		ct = inode_get_ctime(lower);
		id.size = i_size_read(lower);
		id.mtime_ns = timespec64_to_ns(&mt);
		id.ctime_ns = timespec64_to_ns(&ct);
		id.ino = lower->i_ino;
		/*
		 * A file whose answer is kept (or known missing) and whose
		 * lower inode did not change needs no hint: skip the path and
		 * the attribute, and leave the lower file to the first read,
		 * mapping or fault that needs it (a read the pool serves up to
		 * the end of the file never does). An earlier open of the same
		 * inode opened it successfully.
		 */
		if (vmdedup_rs_open_settled(sbi->rs, VI(inode)->rs, &id))
			return 0;
	}
	lf = vmdedup_open_lower(file);
	if (IS_ERR(lf))
		return PTR_ERR(lf);
	file->private_data = lf;
	if (!VI(inode)->rs)
		return 0;

	/* The hint: the path below the mount root (symlinks already resolved). */
	buf = __getname();
	if (!buf)
		return 0; /* no hint: served from lower */
	path = dentry_path_raw(file->f_path.dentry, buf, PATH_MAX);
	if (!IS_ERR(path)) {
		vmdedup_read_fingerprint(lp->dentry, &id);
		vmdedup_rs_open(sbi->rs, VI(inode)->rs, &id, path, strlen(path));
	}
	__putname(buf);
	return 0;
}

/* The lower file of the read or mapping `io` serves, opened if need be. */
static struct file *vmdedup_io_lower(struct vmdedup_io *io)
{
	if (!io->lower) {
		struct file *lf = vmdedup_lower_file(io->file);

		if (IS_ERR(lf))
			return lf;
		io->lower = lf;
	}
	return io->lower;
}

/* Helpers Rust calls while it serves one read (see ffi.rs). */
ssize_t vmdedup_glue_read_lower(struct vmdedup_io *io, loff_t pos, size_t len)
{
	struct file *lf = vmdedup_io_lower(io);
	size_t left = iov_iter_count(io->iter);
	ssize_t ret;

	if (IS_ERR(lf))
		return PTR_ERR(lf);
	if (len > left)
		len = left;
	iov_iter_truncate(io->iter, len);
	ret = vfs_iter_read(lf, io->iter, &pos, 0);
	iov_iter_reexpand(io->iter, left - (ret > 0 ? ret : 0));
	return ret;
}

ssize_t vmdedup_glue_read_lower_buf(struct vmdedup_io *io, loff_t pos, void *buf, size_t len)
{
	struct file *lf = vmdedup_io_lower(io);

	if (IS_ERR(lf))
		return PTR_ERR(lf);
	return kernel_read(lf, buf, len, &pos);
}

/*
 * Drops the lower file's clean, unmapped page cache pages in [start, end):
 * what was read to check pool pages, or read before the pool served the
 * file. Pages a process maps or that are dirty stay. Returns how many went.
 *
 * POSIX_FADV_DONTNEED rather than invalidate_mapping_pages() alone: a page
 * read a moment ago can still sit in a CPU's LRU batch, whose reference
 * makes invalidation skip it, and only the fadvise path (which drains the
 * local batch, and every CPU's when some pages stayed) can reach the
 * non-exported drains. The count is the mapping's page count before and
 * after, so it can include a page someone else dropped meanwhile: it is a
 * statistic, nothing depends on it.
 */
unsigned long vmdedup_glue_drop_lower_pages(struct vmdedup_io *io, loff_t start, loff_t end)
{
	struct file *lf = vmdedup_io_lower(io);
	struct address_space *mapping;
	unsigned long before, after;

	if (IS_ERR(lf) || start < 0 || end <= start)
		return 0;
	mapping = lf->f_mapping;
	before = READ_ONCE(mapping->nrpages);
	if (vfs_fadvise(lf, start, end - start, POSIX_FADV_DONTNEED))
		return invalidate_mapping_pages(mapping, start >> PAGE_SHIFT,
						(end - 1) >> PAGE_SHIFT);
	after = READ_ONCE(mapping->nrpages);
	return before > after ? before - after : 0;
}

/* A random number below `ceil` (0 for 0): the page verify=sample picks. */
u32 vmdedup_glue_random_below(u32 ceil)
{
	return ceil ? get_random_u32_below(ceil) : 0;
}

/*
 * Copies from a pool frame (the pool's kernel mapping) to the read's
 * destination inside a pool read section (glue.c): with page faults
 * disabled, so a fault on the user buffer cuts the copy short instead of
 * being handled in the section. Returns how many bytes went.
 */
size_t vmdedup_glue_copy_pool(struct vmdedup_io *io, const void *src, size_t len)
{
	size_t n;

	pagefault_disable();
	n = copy_to_iter(src, len, io->iter);
	pagefault_enable();
	return n;
}

/* verify=full: whether pool bytes equal the lower bytes read for them. */
bool vmdedup_glue_pool_equal(const void *pool, const void *buf, size_t len)
{
	return !memcmp(pool, buf, len);
}

/* Takes back the last `len` bytes copied to the destination. */
void vmdedup_glue_revert(struct vmdedup_io *io, size_t len)
{
	iov_iter_revert(io->iter, len);
}

/*
 * Faults in the next `len` bytes of the destination (outside any pool read
 * section); returns how many could not be.
 */
size_t vmdedup_glue_fault_in(struct vmdedup_io *io, size_t len)
{
	return fault_in_iov_iter_writeable(io->iter, len);
}

static ssize_t vmdedup_read_iter(struct kiocb *iocb, struct iov_iter *to)
{
	struct file *file = iocb->ki_filp;
	struct inode *inode = file_inode(file);
	struct vmdedup_io io = { .file = file, .lower = smp_load_acquire(&file->private_data), .iter = to };
	ssize_t ret;

	if (!iov_iter_count(to))
		return 0;
	if (iocb->ki_pos < 0)
		return -EINVAL;
	ret = vmdedup_rs_read_iter(VSB(inode->i_sb)->rs, VI(inode)->rs, &io, iocb->ki_pos, iov_iter_count(to));
	if (ret > 0)
		iocb->ki_pos += ret;
	return ret;
}

/*
 * A pool mapping whose file map was revoked (or replaced) serves the lower
 * file's page instead: the page-cache page of the lower file, inserted with
 * its own reference (the mapping is VM_MIXEDMAP, so the PTE is a normal one,
 * counted and dropped by zap like any file page). Beyond the lower file's
 * end, SIGBUS, as any file mapping does.
 */
static vm_fault_t vmdedup_fault_lower(struct vm_fault *vmf)
{
	struct vm_area_struct *vma = vmf->vma;
	struct file *lf = vma->vm_file->private_data;
	struct folio *folio;
	int err;

	if (!lf || vmf->pgoff >= DIV_ROUND_UP(i_size_read(file_inode(lf)), PAGE_SIZE))
		return VM_FAULT_SIGBUS;
	folio = read_mapping_folio(lf->f_mapping, vmf->pgoff, lf);
	if (IS_ERR(folio))
		return vmf_error(PTR_ERR(folio));
	err = vm_insert_page(vma, vmf->address, folio_file_page(folio, vmf->pgoff));
	folio_put(folio);
	/* -EBUSY: another thread mapped this address meanwhile. */
	if (err && err != -EBUSY)
		return vmf_error(err);
	return VM_FAULT_NOPAGE;
}

static vm_fault_t vmdedup_pool_fault(struct vm_fault *vmf)
{
	struct vm_area_struct *vma = vmf->vma;
	struct inode *inode = file_inode(vma->vm_file);
	unsigned long first = vmf->pgoff, end = vmf->pgoff + 1;
	unsigned int nofs;
	vm_fault_t ret;
	bool served;

	/*
	 * Fault-around, as filemap_map_pages() does for page cache pages: a read
	 * fault also maps the pool frames of the neighbouring pages, in the
	 * aligned block of VMDEDUP_FAULT_AROUND pages around the fault, clipped
	 * to the VMA (Rust clips it to the file and to the frames of the map the
	 * mapping was checked against). A write fault (copy-on-write of a
	 * private mapping) maps only its own page.
	 */
	if (!(vmf->flags & FAULT_FLAG_WRITE)) {
		unsigned long block = ALIGN_DOWN(vmf->pgoff, VMDEDUP_FAULT_AROUND);

		first = max(block, vma->vm_pgoff);
		end = min(block + VMDEDUP_FAULT_AROUND, vma->vm_pgoff + vma_pages(vma));
	}
	/*
	 * Rust inserts the pool frame under the file's lock, or says "lower".
	 * Memory reclaim takes that lock class too, when it evicts one of our
	 * inodes: no allocation under it may enter filesystem reclaim, so the
	 * page table vm_insert_mixed() may allocate is allocated NOFS (lockdep
	 * saw file lock -> fs_reclaim -> evict -> file lock).
	 * Either way the PTE is read-only (a private mapping's vm_page_prot has
	 * no write bit), so on a write fault to a private mapping the
	 * VM_FAULT_NOPAGE we return makes do_cow_fault() give up its copy, the
	 * access is retried, and do_wp_page() copies the page that is now
	 * mapped (a pool frame: from its user address) into an anonymous page.
	 * A pool frame is never written through a user mapping.
	 */
	nofs = memalloc_nofs_save();
	served = vmdedup_rs_fault(VSB(inode->i_sb)->rs, VI(inode)->rs, vmf,
				  (u64)(uintptr_t)vma->vm_private_data, vmf->pgoff, first, end,
				  vma->vm_flags, &ret);
	memalloc_nofs_restore(nofs);
	if (served)
		return ret;
	ret = vmdedup_fault_lower(vmf);
	vmdedup_rs_fault_lower_done(ret);
	return ret;
}

/* Called from Rust with the file's lock held (see fs.rs `fault`). */
vm_fault_t vmdedup_glue_insert_pfn(struct vm_fault *vmf, unsigned long pfn)
{
	return vmf_insert_mixed(vmf->vma, vmf->address, __pfn_to_pfn_t(pfn, PFN_DEV));
}

/*
 * Fault-around: maps pool frame `pfn` at file page `pgoff` of the faulting
 * VMA, read-only like the faulting page, unless something is mapped there
 * already (vmf_insert_mixed() leaves a present PTE alone: a page a private
 * mapping copied on write stays). Called from Rust with the file's lock held.
 * VM_FAULT_SIGBUS if `pgoff` is outside the VMA.
 */
vm_fault_t vmdedup_glue_insert_pfn_at(struct vm_fault *vmf, unsigned long pgoff, unsigned long pfn)
{
	struct vm_area_struct *vma = vmf->vma;
	unsigned long addr;

	if (pgoff < vma->vm_pgoff || pgoff - vma->vm_pgoff >= vma_pages(vma))
		return VM_FAULT_SIGBUS;
	addr = vma->vm_start + ((pgoff - vma->vm_pgoff) << PAGE_SHIFT);
	return vmf_insert_mixed(vma, addr, __pfn_to_pfn_t(pfn, PFN_DEV));
}

/*
 * access_remote_vm() (ptrace, /proc/PID/mem) cannot pin a pool frame (no
 * struct page), so it asks here: the bytes come from the lower file, which
 * the pool frame equals. Writes never get here for private mappings (GUP
 * breaks the copy-on-write first) and are refused for shared ones, which are
 * read-only.
 */
static int vmdedup_pool_access(struct vm_area_struct *vma, unsigned long addr, void *buf, int len, int write)
{
	struct file *lf = vma->vm_file->private_data;
	loff_t pos = ((loff_t)vma->vm_pgoff << PAGE_SHIFT) + (addr - vma->vm_start);
	ssize_t n;

	if (write || !lf)
		return -EINVAL;
	len = min_t(int, len, PAGE_SIZE - offset_in_page(addr));
	n = kernel_read(lf, buf, len, &pos);
	return (int)n;
}

static const struct vm_operations_struct vmdedup_pool_vm_ops = {
	.fault = vmdedup_pool_fault,
	.access = vmdedup_pool_access,
};

static int vmdedup_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct inode *inode = file_inode(file);
	struct backing_file_ctx ctx = { .cred = VSB(inode->i_sb)->cred, .user_file = file };
	struct file *lf = vmdedup_lower_file(file);
	struct vmdedup_io io = { .file = file, .lower = lf, .iter = NULL };
	struct vmdedup_mmap_plan plan = { 0 };

	/*
	 * The lower file first, whatever the mapping serves: a pool mapping
	 * falls back to it (faults after a revocation, ->access), and its
	 * faults find it in private_data without opening anything.
	 */
	if (IS_ERR(lf))
		return PTR_ERR(lf);

	/*
	 * Rust decides from the mapping's flags and the kept answer: pool
	 * frames or lower (fs.rs `MapKind`). A pool mapping gets the flags Rust
	 * chose (VM_MIXEDMAP: pool frames go in as special PTEs, and after a
	 * revocation the lower file's pages as normal ones) and remembers the
	 * file map it was checked against.
	 */
	if (vmdedup_rs_mmap(VSB(inode->i_sb)->rs, VI(inode)->rs, &io, vma->vm_flags, vma->vm_pgoff, vma_pages(vma),
			    &plan) > 0) {
		vm_flags_set(vma, plan.set_flags);
		vma->vm_private_data = (void *)(uintptr_t)plan.map_id;
		vma->vm_ops = &vmdedup_pool_vm_ops;
		file_accessed(file);
		return 0;
	}
	/* Everything else the way overlayfs does it: the lower file maps. */
	return backing_file_mmap(lf, vma, &ctx);
}

static const struct file_operations vmdedup_file_fops = {
	.open = vmdedup_file_open,
	.release = vmdedup_release,
	.read_iter = vmdedup_read_iter,
	.splice_read = copy_splice_read,
	.mmap = vmdedup_mmap,
	.llseek = generic_file_llseek,
};

/* ---- super block -------------------------------------------------------- */

static int vmdedup_statfs(struct dentry *dentry, struct kstatfs *buf)
{
	int err = vfs_statfs(&VSB(dentry->d_sb)->lower_root, buf);

	if (!err)
		buf->f_type = VMDEDUPFS_MAGIC;
	return err;
}

static int vmdedup_show_options(struct seq_file *m, struct dentry *root)
{
	char *buf = (char *)__get_free_page(GFP_KERNEL);
	long n;

	if (!buf)
		return -ENOMEM;
	n = vmdedup_rs_mount_show(VSB(root->d_sb)->rs, buf, PAGE_SIZE);
	if (n > 0) {
		seq_putc(m, ',');
		seq_write(m, buf, n);
	}
	free_page((unsigned long)buf);
	return 0;
}

static int vmdedup_remount(struct super_block *sb, int *flags, char *data)
{
	*flags |= SB_RDONLY; /* never writable */
	return 0;
}

static const struct super_operations vmdedup_sops = {
	.alloc_inode = vmdedup_alloc_inode,
	.free_inode = vmdedup_free_inode,
	.evict_inode = vmdedup_evict_inode,
	.drop_inode = generic_delete_inode,
	.statfs = vmdedup_statfs,
	.show_options = vmdedup_show_options,
	.remount_fs = vmdedup_remount,
};

static int vmdedup_fill_super(struct super_block *sb, void *data, int silent)
{
	struct vmdedup_sb *sbi;
	struct inode *root, *lower;
	char *lower_name;
	int err;

	sbi = kzalloc(sizeof(*sbi), GFP_KERNEL);
	if (!sbi)
		return -ENOMEM;
	sb->s_fs_info = sbi;
	lower_name = __getname();
	if (!lower_name)
		return -ENOMEM;
	err = vmdedup_rs_mount_new(vmdedup_glue_ctx(), data, lower_name, PATH_MAX, &sbi->rs);
	if (!err)
		err = kern_path(lower_name, LOOKUP_FOLLOW | LOOKUP_DIRECTORY, &sbi->lower_root);
	if (err && !silent)
		pr_err("vmdedup: vmdedupfs: cannot mount lower '%s': %d\n", lower_name, err);
	__putname(lower_name);
	if (err)
		return err;

	lower = d_inode(sbi->lower_root.dentry);
	sb->s_stack_depth = sbi->lower_root.mnt->mnt_sb->s_stack_depth + 1;
	if (sb->s_stack_depth > FILESYSTEM_MAX_STACK_DEPTH) {
		pr_err("vmdedup: vmdedupfs: maximum stacking depth exceeded\n");
		return -EINVAL;
	}
	sbi->cred = get_current_cred();
	sb->s_flags |= SB_RDONLY | SB_NOATIME | SB_NODIRATIME;
	sb->s_magic = VMDEDUPFS_MAGIC;
	sb->s_op = &vmdedup_sops;
	sb->s_d_op = &vmdedup_dops;
	sb->s_xattr = vmdedup_xattr_handlers;
	sb->s_maxbytes = sbi->lower_root.mnt->mnt_sb->s_maxbytes;
	sb->s_time_gran = sbi->lower_root.mnt->mnt_sb->s_time_gran;
	sb->s_blocksize = PAGE_SIZE;
	sb->s_blocksize_bits = PAGE_SHIFT;

	root = vmdedup_iget(sb, lower);
	if (IS_ERR(root))
		return PTR_ERR(root);
	sb->s_root = d_make_root(root);
	if (!sb->s_root)
		return -ENOMEM;
	err = vmdedup_set_lower(sb->s_root, sbi->lower_root.mnt, dget(sbi->lower_root.dentry));
	if (err)
		return err;
	return 0;
}

static struct dentry *vmdedup_mount(struct file_system_type *fs_type, int flags, const char *dev_name, void *data)
{
	return mount_nodev(fs_type, flags | SB_RDONLY, data, vmdedup_fill_super);
}

static void vmdedup_kill_sb(struct super_block *sb)
{
	struct vmdedup_sb *sbi = sb->s_fs_info;

	kill_anon_super(sb);
	if (!sbi)
		return;
	path_put(&sbi->lower_root);
	if (sbi->cred)
		put_cred(sbi->cred);
	if (sbi->rs)
		vmdedup_rs_mount_free(sbi->rs);
	kfree(sbi);
}

static struct file_system_type vmdedup_fs_type = {
	.owner = THIS_MODULE,
	.name = "vmdedupfs",
	.mount = vmdedup_mount,
	.kill_sb = vmdedup_kill_sb,
};
MODULE_ALIAS_FS("vmdedupfs");

int vmdedup_fs_init(void)
{
	int err;

	vmdedup_inode_cache = kmem_cache_create("vmdedup_inode", sizeof(struct vmdedup_inode), 0,
						SLAB_RECLAIM_ACCOUNT | SLAB_ACCOUNT, vmdedup_inode_init_once);
	if (!vmdedup_inode_cache)
		return -ENOMEM;
	err = register_filesystem(&vmdedup_fs_type);
	if (err)
		kmem_cache_destroy(vmdedup_inode_cache);
	return err;
}

/*
 * even_cows = 0: the pool frames and lower pages of every mapping go, but the
 * pages a private mapping already copied on write are that process's own
 * data and stay.
 */
void vmdedup_glue_unmap_all(struct address_space *mapping)
{
	unmap_mapping_range(mapping, 0, 0, 0);
}

/*
 * Drops the clean, unmapped page cache pages of the lower file behind the
 * vmdedup inode whose mapping is `mapping`: what was read from lower while
 * the host loaded the file, once the pool serves it. Returns how many went.
 * No struct file here (the event work has none): invalidate_mapping_pages()
 * alone, which skips a page still in a CPU's LRU batch; pages read while a
 * load ran have long left those batches.
 */
unsigned long vmdedup_glue_drop_lower_cache(struct address_space *mapping)
{
	struct inode *lower = VI(mapping->host)->lower;

	if (!lower)
		return 0;
	return invalidate_mapping_pages(lower->i_mapping, 0, -1);
}

void vmdedup_fs_exit(void)
{
	unregister_filesystem(&vmdedup_fs_type);
	rcu_barrier(); /* inodes are freed after an RCU grace period */
	kmem_cache_destroy(vmdedup_inode_cache);
}
