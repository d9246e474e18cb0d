// SPDX-License-Identifier: GPL-2.0
// callbench: times the per-call cost of read(2) inside a guest, for
// scripts/bench read, without the open and close readbench counts too.
//
// Usage: callbench LABEL BLOCK_SIZE CALLS FILE
// Opens FILE once, then makes CALLS pread(2) calls of BLOCK_SIZE bytes at
// block-aligned offsets that cycle through the file's first 64 blocks (or
// all of them, if it has fewer): a warm file stays warm, and the calls
// measure what each read costs on top of its copy. Prints one line:
//   MICRO LABEL bs=B files=1 bytes=N secs=S mib_s=T reads=R ns_per_call=C
// secs is the time of the whole loop. A benchmark helper: nothing is
// asserted.
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: callbench LABEL BLOCK_SIZE CALLS FILE\n");
		return 2;
	}
	const char *label = argv[1], *path = argv[4];
	size_t bs = strtoul(argv[2], NULL, 0);
	long long calls = strtoll(argv[3], NULL, 0);
	char *buf = bs ? malloc(bs) : NULL;
	if (!buf || calls <= 0) {
		fprintf(stderr, "callbench: bad block size or call count\n");
		return 2;
	}
	int fd = open(path, O_RDONLY);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) {
		perror(path);
		return 1;
	}
	long long blocks = st.st_size / (long long)bs;
	if (blocks > 64)
		blocks = 64;
	if (blocks < 1) {
		fprintf(stderr, "callbench: %s is smaller than one block\n", path);
		return 2;
	}
	long long bytes = 0;
	long long t0 = now_ns();
	for (long long i = 0; i < calls; i++) {
		ssize_t r = pread(fd, buf, bs, (off_t)((i % blocks) * (long long)bs));
		if (r < 0) {
			perror(path);
			return 1;
		}
		bytes += r;
	}
	long long total = now_ns() - t0;
	close(fd);
	double secs = total / 1e9;
	printf("MICRO %s bs=%zu files=1 bytes=%lld secs=%.6f mib_s=%.2f reads=%lld ns_per_call=%lld\n",
	       label, bs, bytes, secs, secs > 0 ? bytes / 1048576.0 / secs : 0.0, calls,
	       total / calls);
	return 0;
}
