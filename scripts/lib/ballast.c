// SPDX-License-Identifier: GPL-2.0
// ballast MIB: the private, non-duplicate memory of a real service, for
// scripts/bench ksm --ballast. Maps MIB MiB of anonymous memory, fills every
// byte with a pseudo-random stream seeded from /dev/urandom (so no two
// guests, and no two pages, hold the same bytes and KSM can merge none of
// it), prints "BALLAST-READY mib=MIB ms=T" once all of it is written, then
// holds it until killed. KSM still has to scan it; vmdedup never sees it.
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static uint64_t seed(void)
{
	uint64_t s = 0;
	int fd = open("/dev/urandom", O_RDONLY);

	if (fd >= 0) {
		if (read(fd, &s, sizeof(s)) != (ssize_t)sizeof(s))
			s = 0;
		close(fd);
	}
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	s ^= (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid() << 32;
	return s ? s : 1;
}

int main(int argc, char **argv)
{
	char *end = NULL;
	unsigned long mib = argc == 2 ? strtoul(argv[1], &end, 10) : 0;

	if (argc != 2 || !end || *end || mib == 0 || mib > (1ul << 20)) {
		fprintf(stderr, "usage: ballast MIB (1..1048576)\n");
		return 2;
	}
	size_t len = mib << 20;
	uint64_t *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		fprintf(stderr, "ballast: mmap of %lu MiB failed: %s\n", mib, strerror(errno));
		return 1;
	}
	struct timespec a, b;

	clock_gettime(CLOCK_MONOTONIC, &a);
	// xorshift64*: fast enough under TCG, and every word differs.
	uint64_t x = seed();

	for (size_t i = 0; i < len / sizeof(*p); i++) {
		x ^= x >> 12;
		x ^= x << 25;
		x ^= x >> 27;
		p[i] = x * 0x2545f4914f6cdd1dull;
	}
	clock_gettime(CLOCK_MONOTONIC, &b);
	printf("BALLAST-READY mib=%lu ms=%ld\n", mib,
	       (long)((b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000));
	fflush(stdout);
	for (;;)
		pause();
}
