// SPDX-License-Identifier: GPL-2.0
/*
 * vmdedup C glue: only what Linux 6.12 has no Rust abstraction for.
 *
 *  - the PCI driver for ivshmem devices (1af4:1110): enable, request and
 *    memremap BAR2, then hand the mapping to Rust, which decides what it is;
 *  - /sys/kernel/vmdedup/{ring,pool}/...: each show() is a call into Rust.
 *
 * Every Rust function called here is declared just below; the Rust side keeps
 * all its extern "C" items in guest-module/ffi.rs.
 */
#include <linux/io.h>
#include <linux/kobject.h>
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/slab.h>
#include <linux/sysfs.h>

/* Implemented in Rust (guest-module/ffi.rs). */
int vmdedup_rs_region_attach(const void *ctx, void *base, u64 len, const char *dev_name);
void vmdedup_rs_region_detach(const void *ctx, int slot);
long vmdedup_rs_sysfs_show(const void *ctx, const char *dir, const char *attr, char *buf, size_t len);

/* Called from Rust. */
int vmdedup_glue_init(const void *ctx);
void vmdedup_glue_exit(void);

#define IVSHMEM_VENDOR 0x1af4
#define IVSHMEM_DEVICE 0x1110
#define IVSHMEM_SHM_BAR 2

static const void *vmdedup_ctx;

struct vmdedup_dev {
	void *base;
	int slot;
};

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
	vd->slot = vmdedup_rs_region_attach(vmdedup_ctx, vd->base, len, pci_name(pdev));
	if (vd->slot < 0) {
		err = vd->slot;
		goto out_unmap;
	}
	pci_set_drvdata(pdev, vd);
	return 0;

out_unmap:
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

	vmdedup_rs_region_detach(vmdedup_ctx, vd->slot);
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

static struct kobject *vmdedup_kobj, *vmdedup_ring_kobj, *vmdedup_pool_kobj;

static void vmdedup_sysfs_exit(void)
{
	kobject_put(vmdedup_pool_kobj);
	kobject_put(vmdedup_ring_kobj);
	kobject_put(vmdedup_kobj);
	vmdedup_pool_kobj = vmdedup_ring_kobj = vmdedup_kobj = NULL;
}

static int vmdedup_sysfs_init(void)
{
	vmdedup_kobj = kobject_create_and_add("vmdedup", kernel_kobj);
	if (!vmdedup_kobj)
		return -ENOMEM;
	vmdedup_ring_kobj = kobject_create_and_add("ring", vmdedup_kobj);
	vmdedup_pool_kobj = kobject_create_and_add("pool", vmdedup_kobj);
	if (!vmdedup_ring_kobj || !vmdedup_pool_kobj ||
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
	return 0;
}

void vmdedup_glue_exit(void)
{
	pci_unregister_driver(&vmdedup_pci_driver);
	vmdedup_sysfs_exit();
	vmdedup_ctx = NULL;
}
