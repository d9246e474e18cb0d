// SPDX-License-Identifier: GPL-2.0
/*
 * vmdedup C glue: only what Linux 6.12 has no Rust abstraction for.
 *
 *  - the PCI driver for ivshmem devices (1af4:1110): enable, request and
 *    memremap BAR2, then hand the mapping to Rust, which decides what it is;
 *  - /sys/kernel/vmdedup/{ring,pool,stats}/...: each show() is a call into Rust;
 *  - the module parameters (read by Rust through vmdedup_glue_param());
 *  - the event work (a delayed work that calls vmdedup_rs_tick()): every
 *    event_poll_ms while Rust asks for it, else only when the ring's MSI-X
 *    interrupt (ivshmem-doorbell) or a new hint kicks it;
 *  - the SRCU domain that orders copies from pool frames before the host is
 *    told it may reuse them.
 * The vmdedupfs operation tables are in fs.c.
 *
 * Every function shared with Rust is declared in glue.h; the Rust side keeps
 * its imports in guest-module/ffi.rs and its entry points in
 * guest-module/entry.rs.
 */
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/kobject.h>
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/slab.h>
#include <linux/srcu.h>
#include <linux/sysfs.h>
#include <linux/workqueue.h>

#include "glue.h"

#define IVSHMEM_VENDOR 0x1af4
#define IVSHMEM_DEVICE 0x1110
#define IVSHMEM_SHM_BAR 2
/* BAR0 of an ivshmem device: its registers; Doorbell is (peer << 16) | vector. */
#define IVSHMEM_REG_BAR 0
#define IVSHMEM_REG_LEN 0x100
#define IVSHMEM_IVPOSITION 8
#define IVSHMEM_DOORBELL 12

static const void *vmdedup_ctx;

const void *vmdedup_glue_ctx(void)
{
	return vmdedup_ctx;
}

/* Module parameters: read by Rust through vmdedup_glue_param(). */
static unsigned int poll_us = 200;
module_param(poll_us, uint, 0644);
MODULE_PARM_DESC(poll_us, "How long (microseconds) an open polls the completion ring for the host's answer before it reads from lower (default 200)");
static unsigned int rehint_ms = 200;
module_param(rehint_ms, uint, 0644);
MODULE_PARM_DESC(rehint_ms, "Least time (ms) between two hints for a file the host was still loading (default 200)");
static unsigned int default_verify = 2;
module_param(default_verify, uint, 0644);
MODULE_PARM_DESC(default_verify, "Verify mode of mounts without verify=: 0 off, 1 sample, 2 full (default 2)");
static unsigned int fault_no_ack;
module_param(fault_no_ack, uint, 0644);
MODULE_PARM_DESC(fault_no_ack, "Fault injection for tests: 1 applies revocations but never acknowledges them, as a stuck guest would; the host then cuts this VM off; 2 also stops consuming events, so the event ring fills up; 3 also ignores the cut-off flag, as a frozen guest would (default 0; never set it otherwise)");
static unsigned int fault_hold_answers;
module_param(fault_hold_answers, uint, 0644);
MODULE_PARM_DESC(fault_hold_answers, "Fault injection for tests: 1 leaves the host's answers unread, so requests time out and their answers arrive late once it is 0 again (default 0; never set it otherwise)");
static unsigned int event_poll_ms = 50;
module_param(event_poll_ms, uint, 0444);
MODULE_PARM_DESC(event_poll_ms, "Period (ms) of the timer that applies revocation events and late answers while the module polls (default 50; with an ivshmem-doorbell ring an idle module waits for the host's interrupt instead)");

static unsigned int wait_timeout_ms = 30000;
module_param(wait_timeout_ms, uint, 0644);
MODULE_PARM_DESC(wait_timeout_ms, "Longest sleep (ms) of the event work while it waits for the host's interrupt (ivshmem-doorbell): a safety net for a host that can no longer raise it, e.g. after an agent restart, which the guest then notices; 0: none, the idle module never wakes by itself (default 30000)");

static unsigned int *const vmdedup_params[] = {
	[VMDEDUP_PARAM_POLL_US] = &poll_us,
	[VMDEDUP_PARAM_REHINT_MS] = &rehint_ms,
	[VMDEDUP_PARAM_DEFAULT_VERIFY] = &default_verify,
	[VMDEDUP_PARAM_FAULT_NO_ACK] = &fault_no_ack,
	[VMDEDUP_PARAM_FAULT_HOLD_ANSWERS] = &fault_hold_answers,
};
static_assert(ARRAY_SIZE(vmdedup_params) == VMDEDUP_PARAM_COUNT);

/*
 * Pool readers: every read(2) that copies from a pool frame, and every
 * comparison of a pool frame with the lower file, runs inside a read-side
 * section of this SRCU domain; nothing that lets the host reuse a frame
 * (acknowledging a revocation, releasing a map, acknowledging a cut-off,
 * announcing a new ring, unmapping the pool region) happens before a
 * synchronize_srcu() that follows the map's removal from its file.
 *
 * Why that is enough (fs.rs `Mount::read`, file.rs `InodeState::run`,
 * client.rs `Client::sync_readers`):
 *  - A reader enters the section, then looks the frames up under the file's
 *    lock, then copies, then leaves. The writer drops the map under the same
 *    lock, then (later, holding no file lock) calls synchronize_srcu(), and
 *    only then tells the host.
 *  - A reader that found the map looked it up before the drop (the file
 *    lock orders the two), so it entered the section before the drop, hence
 *    before synchronize_srcu() began: synchronize_srcu() waits for it, and
 *    its copy is finished before the host hears anything.
 *  - A reader that looks up after the drop does not find the map (it is
 *    gone under the lock) and reads the lower file.
 *  - The host can also change a table on its own (restart, a hostile or
 *    buggy host): the table's magic, file map id and pool generation are
 *    checked before and after each copy, and a copy followed by a failed
 *    check is reverted and read again from lower.
 *
 * Locks: synchronize_srcu() is called with the link lock held (client.rs)
 * and never with a file lock held. Inside a section readers take only the
 * file lock, never the link lock, and copy to user memory with page faults
 * disabled (a fault there could need a lock the synchronizer holds: a fault
 * on a vmdedupfs mapping, or a userfaultfd handler that opens a file); a
 * copy cut short by a fault leaves the section, faults the user pages in
 * and looks the frames up again. Batches: one synchronize_srcu() per batch
 * of map operations published, not one per map.
 */
DEFINE_STATIC_SRCU(vmdedup_pool_srcu);

int vmdedup_glue_pool_read_lock(void)
{
	return srcu_read_lock(&vmdedup_pool_srcu);
}

void vmdedup_glue_pool_read_unlock(int idx)
{
	srcu_read_unlock(&vmdedup_pool_srcu, idx);
}

void vmdedup_glue_pool_sync(void)
{
	synchronize_srcu(&vmdedup_pool_srcu);
}

/* One write to an ivshmem-doorbell device's Doorbell register. */
void vmdedup_glue_doorbell(void *reg, u32 value)
{
	writel(value, (void __iomem *)reg);
}

unsigned int vmdedup_glue_param(enum vmdedup_param which)
{
	if ((unsigned int)which >= VMDEDUP_PARAM_COUNT)
		return 0;
	return READ_ONCE(*vmdedup_params[which]);
}

/* The event timer: a delayed work calling into Rust every event_poll_ms. */
static void vmdedup_tick_fn(struct work_struct *w);
static DECLARE_DELAYED_WORK(vmdedup_tick_work, vmdedup_tick_fn);
static bool vmdedup_tick_stop;
/* The last run of the event work went to sleep waiting for the interrupt. */
static bool vmdedup_tick_waiting;

static void vmdedup_tick_fn(struct work_struct *w)
{
	/* false: Rust waits for the host's interrupt (GUEST_FLAG_WAITING). */
	bool again = vmdedup_rs_tick(vmdedup_ctx);
	unsigned int safety = READ_ONCE(wait_timeout_ms);

	if (READ_ONCE(vmdedup_tick_stop))
		return;
	WRITE_ONCE(vmdedup_tick_waiting, !again);
	if (again)
		schedule_delayed_work(&vmdedup_tick_work, msecs_to_jiffies(max(event_poll_ms, 1U)));
	else if (safety)
		schedule_delayed_work(&vmdedup_tick_work, msecs_to_jiffies(safety));
}

/*
 * The event work in event_poll_ms, also when its wait_timeout_ms safety run
 * is pending (Rust calls this once, when it stops waiting).
 */
void vmdedup_glue_tick_soon(void)
{
	if (!READ_ONCE(vmdedup_tick_stop))
		mod_delayed_work(system_wq, &vmdedup_tick_work, msecs_to_jiffies(max(event_poll_ms, 1U)));
}

/*
 * Work for the event work that no interrupt announces (an evicted inode's
 * map to release): if it sleeps waiting for the interrupt, it runs within
 * event_poll_ms; if it polls, its timer comes anyway. No lock: callable
 * from memory reclaim. (One racing with the event work going to sleep waits
 * for the safety run, wait_timeout_ms.)
 */
void vmdedup_glue_sweep_soon(void)
{
	if (READ_ONCE(vmdedup_tick_waiting) && !READ_ONCE(vmdedup_tick_stop))
		mod_delayed_work(system_wq, &vmdedup_tick_work, msecs_to_jiffies(max(event_poll_ms, 1U)));
}

/* The ring's vector: the host published something while we waited. */
static irqreturn_t vmdedup_irq(int irq, void *data)
{
	vmdedup_rs_irq();
	if (!READ_ONCE(vmdedup_tick_stop))
		mod_delayed_work(system_wq, &vmdedup_tick_work, 0);
	return IRQ_HANDLED;
}

struct vmdedup_dev {
	void *base;
	void __iomem *regs; /* BAR0 of an ivshmem-doorbell device, else NULL */
	bool irq; /* its MSI-X vector 0 is requested */
	int slot;
};

/* The ring vector of an ivshmem-doorbell device, wired to vmdedup_irq(). */
static bool vmdedup_setup_irq(struct pci_dev *pdev, struct vmdedup_dev *vd)
{
	if (!vd->regs)
		return false;
	/* An MSI-X message is a write by the device: it needs bus mastering. */
	pci_set_master(pdev);
	if (pci_alloc_irq_vectors(pdev, 1, 1, PCI_IRQ_MSIX) < 1) {
		pci_clear_master(pdev);
		return false;
	}
	if (request_irq(pci_irq_vector(pdev, 0), vmdedup_irq, 0, "vmdedup", vd)) {
		pci_free_irq_vectors(pdev);
		pci_clear_master(pdev);
		return false;
	}
	return true;
}

static void vmdedup_free_irq(struct pci_dev *pdev, struct vmdedup_dev *vd)
{
	if (!vd->irq)
		return;
	free_irq(pci_irq_vector(pdev, 0), vd);
	pci_free_irq_vectors(pdev);
	pci_clear_master(pdev);
	vd->irq = false;
}

/*
 * BAR0 (the registers) of an ivshmem-doorbell device, or NULL: only a device
 * with MSI-X (QEMU gives ivshmem-plain none) has peers whose doorbells reach
 * anyone. Without it the ring is polled, as before.
 */
static void __iomem *vmdedup_map_regs(struct pci_dev *pdev)
{
	void __iomem *regs;

	if (!pdev->msix_cap || pci_resource_len(pdev, IVSHMEM_REG_BAR) < IVSHMEM_REG_LEN)
		return NULL;
	if (pci_request_region(pdev, IVSHMEM_REG_BAR, "vmdedup-regs"))
		return NULL;
	regs = pci_iomap(pdev, IVSHMEM_REG_BAR, IVSHMEM_REG_LEN);
	if (!regs)
		pci_release_region(pdev, IVSHMEM_REG_BAR);
	return regs;
}

static void vmdedup_unmap_regs(struct pci_dev *pdev, void __iomem *regs)
{
	if (!regs)
		return;
	pci_iounmap(pdev, regs);
	pci_release_region(pdev, IVSHMEM_REG_BAR);
}

static int vmdedup_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct vmdedup_dev *vd;
	resource_size_t start, len;
	int err;

	vd = kzalloc(sizeof(*vd), GFP_KERNEL);
	if (!vd)
		return -ENOMEM;
	err = pci_enable_device_mem(pdev);
	if (err)
		goto out_free;
	err = pci_request_region(pdev, IVSHMEM_SHM_BAR, "vmdedup");
	if (err)
		goto out_disable;
	start = pci_resource_start(pdev, IVSHMEM_SHM_BAR);
	len = pci_resource_len(pdev, IVSHMEM_SHM_BAR);
	if (!start || !len) {
		dev_err(&pdev->dev, "ivshmem device without a shared-memory BAR\n");
		err = -ENODEV;
		goto out_release;
	}
	vd->base = memremap(start, len, MEMREMAP_WB);
	if (!vd->base) {
		err = -ENOMEM;
		goto out_release;
	}
	vd->regs = vmdedup_map_regs(pdev);
	vd->irq = vmdedup_setup_irq(pdev, vd);
	vd->slot = vmdedup_rs_region_attach(vmdedup_ctx, vd->base, len, start, pci_name(pdev),
					    vd->regs ? (void __force *)(vd->regs + IVSHMEM_DOORBELL) : NULL,
					    vd->regs ? (s64)ioread32(vd->regs + IVSHMEM_IVPOSITION) : -1,
					    vd->irq);
	if (vd->slot < 0) {
		err = vd->slot;
		goto out_unmap;
	}
	pci_set_drvdata(pdev, vd);
	return 0;

out_unmap:
	vmdedup_free_irq(pdev, vd);
	vmdedup_unmap_regs(pdev, vd->regs);
	memunmap(vd->base);
out_release:
	pci_release_region(pdev, IVSHMEM_SHM_BAR);
out_disable:
	pci_disable_device(pdev);
out_free:
	kfree(vd);
	return err;
}

static void vmdedup_remove(struct pci_dev *pdev)
{
	struct vmdedup_dev *vd = pci_get_drvdata(pdev);

	/* No interrupt runs once it is freed; the work may: it finds no ring. */
	vmdedup_free_irq(pdev, vd);
	vmdedup_rs_region_detach(vmdedup_ctx, vd->slot);
	vmdedup_unmap_regs(pdev, vd->regs);
	memunmap(vd->base);
	pci_release_region(pdev, IVSHMEM_SHM_BAR);
	pci_disable_device(pdev);
	kfree(vd);
}

static const struct pci_device_id vmdedup_ids[] = {
	{ PCI_DEVICE(IVSHMEM_VENDOR, IVSHMEM_DEVICE) },
	{ 0 }
};
MODULE_DEVICE_TABLE(pci, vmdedup_ids);

static struct pci_driver vmdedup_pci_driver = {
	.name = "vmdedup",
	.id_table = vmdedup_ids,
	.probe = vmdedup_probe,
	.remove = vmdedup_remove,
};

/* sysfs: /sys/kernel/vmdedup/{refused,refusals}, .../{ring,pool}/<attr> */

static ssize_t vmdedup_attr_show(struct kobject *kobj, struct kobj_attribute *attr, char *buf)
{
	return vmdedup_rs_sysfs_show(vmdedup_ctx, kobject_name(kobj), attr->attr.name, buf, PAGE_SIZE);
}

#define VMDEDUP_ATTR(n) static struct kobj_attribute vmdedup_attr_##n = __ATTR(n, 0444, vmdedup_attr_show, NULL)
VMDEDUP_ATTR(refused);
VMDEDUP_ATTR(refusals);
VMDEDUP_ATTR(state);
VMDEDUP_ATTR(device);
VMDEDUP_ATTR(magic);
VMDEDUP_ATTR(version);
VMDEDUP_ATTR(header_size);
VMDEDUP_ATTR(region_size);
VMDEDUP_ATTR(bar_size);
VMDEDUP_ATTR(generation);

static struct attribute *vmdedup_top_attrs[] = {
	&vmdedup_attr_refused.attr,
	&vmdedup_attr_refusals.attr,
	NULL,
};
static const struct attribute_group vmdedup_top_group = { .attrs = vmdedup_top_attrs };

static struct attribute *vmdedup_region_attrs[] = {
	&vmdedup_attr_state.attr,
	&vmdedup_attr_device.attr,
	&vmdedup_attr_magic.attr,
	&vmdedup_attr_version.attr,
	&vmdedup_attr_header_size.attr,
	&vmdedup_attr_region_size.attr,
	&vmdedup_attr_bar_size.attr,
	&vmdedup_attr_generation.attr,
	NULL,
};
static const struct attribute_group vmdedup_region_group = { .attrs = vmdedup_region_attrs };

static struct kobject *vmdedup_kobj, *vmdedup_ring_kobj, *vmdedup_pool_kobj, *vmdedup_stats_kobj;

/* /sys/kernel/vmdedup/stats/<name>: the names come from Rust (stats.rs). */
#define VMDEDUP_STAT_NAME 40
static struct kobj_attribute *vmdedup_stat_attrs;
static char (*vmdedup_stat_names)[VMDEDUP_STAT_NAME];
static struct attribute **vmdedup_stat_list;
static struct attribute_group vmdedup_stats_group;

static void vmdedup_stats_free(void)
{
	kfree(vmdedup_stat_list);
	kfree(vmdedup_stat_names);
	kfree(vmdedup_stat_attrs);
	vmdedup_stat_list = NULL;
	vmdedup_stat_names = NULL;
	vmdedup_stat_attrs = NULL;
}

static int vmdedup_stats_alloc(void)
{
	char name[VMDEDUP_STAT_NAME];
	int n = 0, i;

	while (vmdedup_rs_stat_name(n, name, sizeof(name)) == 0)
		n++;
	vmdedup_stat_attrs = kcalloc(n, sizeof(*vmdedup_stat_attrs), GFP_KERNEL);
	vmdedup_stat_names = kcalloc(n, sizeof(*vmdedup_stat_names), GFP_KERNEL);
	vmdedup_stat_list = kcalloc(n + 1, sizeof(*vmdedup_stat_list), GFP_KERNEL);
	if (!vmdedup_stat_attrs || !vmdedup_stat_names || !vmdedup_stat_list) {
		vmdedup_stats_free();
		return -ENOMEM;
	}
	for (i = 0; i < n; i++) {
		vmdedup_rs_stat_name(i, vmdedup_stat_names[i], VMDEDUP_STAT_NAME);
		sysfs_attr_init(&vmdedup_stat_attrs[i].attr);
		vmdedup_stat_attrs[i].attr.name = vmdedup_stat_names[i];
		vmdedup_stat_attrs[i].attr.mode = 0444;
		vmdedup_stat_attrs[i].show = vmdedup_attr_show;
		vmdedup_stat_list[i] = &vmdedup_stat_attrs[i].attr;
	}
	vmdedup_stats_group.attrs = vmdedup_stat_list;
	return 0;
}

static void vmdedup_sysfs_exit(void)
{
	kobject_put(vmdedup_stats_kobj);
	kobject_put(vmdedup_pool_kobj);
	kobject_put(vmdedup_ring_kobj);
	kobject_put(vmdedup_kobj);
	vmdedup_stats_kobj = vmdedup_pool_kobj = vmdedup_ring_kobj = vmdedup_kobj = NULL;
	vmdedup_stats_free();
}

static int vmdedup_sysfs_init(void)
{
	vmdedup_kobj = kobject_create_and_add("vmdedup", kernel_kobj);
	if (!vmdedup_kobj)
		return -ENOMEM;
	vmdedup_ring_kobj = kobject_create_and_add("ring", vmdedup_kobj);
	vmdedup_pool_kobj = kobject_create_and_add("pool", vmdedup_kobj);
	vmdedup_stats_kobj = kobject_create_and_add("stats", vmdedup_kobj);
	if (!vmdedup_ring_kobj || !vmdedup_pool_kobj || !vmdedup_stats_kobj || vmdedup_stats_alloc() ||
	    sysfs_create_group(vmdedup_stats_kobj, &vmdedup_stats_group) ||
	    sysfs_create_group(vmdedup_kobj, &vmdedup_top_group) ||
	    sysfs_create_group(vmdedup_ring_kobj, &vmdedup_region_group) ||
	    sysfs_create_group(vmdedup_pool_kobj, &vmdedup_region_group)) {
		vmdedup_sysfs_exit();
		return -ENOMEM;
	}
	return 0;
}

int vmdedup_glue_init(const void *ctx)
{
	int err;

	vmdedup_ctx = ctx;
	err = vmdedup_sysfs_init();
	if (err)
		return err;
	err = pci_register_driver(&vmdedup_pci_driver);
	if (err) {
		vmdedup_sysfs_exit();
		return err;
	}
	WRITE_ONCE(vmdedup_tick_stop, false);
	schedule_delayed_work(&vmdedup_tick_work, msecs_to_jiffies(max(event_poll_ms, 1U)));
	err = vmdedup_fs_init();
	if (err) {
		WRITE_ONCE(vmdedup_tick_stop, true);
		cancel_delayed_work_sync(&vmdedup_tick_work);
		pci_unregister_driver(&vmdedup_pci_driver);
		vmdedup_sysfs_exit();
		return err;
	}
	return 0;
}

void vmdedup_glue_exit(void)
{
	vmdedup_fs_exit();
	WRITE_ONCE(vmdedup_tick_stop, true);
	cancel_delayed_work_sync(&vmdedup_tick_work);
	pci_unregister_driver(&vmdedup_pci_driver);
	/* An interrupt that raced with the stop flag may have queued it. */
	cancel_delayed_work_sync(&vmdedup_tick_work);
	vmdedup_sysfs_exit();
	vmdedup_ctx = NULL;
}
