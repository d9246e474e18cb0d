# Convenience wrapper. The guest kernel comes from scripts/build-guest-kernel.
#   make module      build vmdedup.ko against the cached guest kernel
#   make clean       remove module build output
KDIR ?= $(shell scripts/build-guest-kernel | tail -n1)
KMAKE_VARS = LLVM=1 RUSTC=/usr/bin/rustc HOSTRUSTC=/usr/bin/rustc

.PHONY: module clean
module:
	$(MAKE) -C $(KDIR) M=$(CURDIR) $(KMAKE_VARS) modules

clean:
	$(MAKE) -C $(KDIR) M=$(CURDIR) $(KMAKE_VARS) clean
