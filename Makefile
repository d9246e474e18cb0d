# Convenience wrapper. The guest kernel comes from scripts/build-guest-kernel.
#   make module            build vmdedup.ko against the cached guest kernel
#   make modules_install   install it into $(INSTALL_MOD_PATH)/lib/modules/RELEASE/updates/
#                          (INSTALL_MOD_PATH: default the root; INSTALL_MOD_DIR: default updates)
#   make clean             remove module build output
# KDIR=DIR builds against another kernel build directory (one with CONFIG_RUST).
KDIR ?= $(shell scripts/build-guest-kernel | tail -n1)
KMAKE_VARS = LLVM=1 RUSTC=/usr/bin/rustc HOSTRUSTC=/usr/bin/rustc
# Where Kbuild puts an external module; the kernel's own default for M= builds.
INSTALL_MOD_DIR ?= updates

.PHONY: module modules_install clean
module:
	$(MAKE) -C $(KDIR) M=$(CURDIR) $(KMAKE_VARS) modules

# INSTALL_MOD_PATH, given on the command line or in the environment, reaches
# Kbuild through make's own variable passing.
modules_install: module
	$(MAKE) -C $(KDIR) M=$(CURDIR) $(KMAKE_VARS) INSTALL_MOD_DIR=$(INSTALL_MOD_DIR) modules_install

clean:
	$(MAKE) -C $(KDIR) M=$(CURDIR) $(KMAKE_VARS) clean
