// SPDX-License-Identifier: GPL-2.0
// mapbench: times page faults over read-only shared mappings inside a guest,
// for scripts/bench read.
//
// Usage: mapbench LABEL LIST_FILE PREFIX
// Maps every file named in LIST_FILE (one path per line, relative to PREFIX)
// with mmap(PROT_READ, MAP_SHARED), loads one byte of each of its pages in
// order, unmaps it, and prints one line:
//   MICRO LABEL bs=4096 files=F bytes=N secs=S mib_s=T pages=P ns_per_page=Q
// secs is the time from each mmap to its munmap, summed. Nothing is asserted.
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
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
	if (argc != 4) {
		fprintf(stderr, "usage: mapbench LABEL LIST_FILE PREFIX\n");
		return 2;
	}
	const char *label = argv[1], *prefix = argv[3];
	FILE *list = fopen(argv[2], "r");
	if (!list) {
		perror(argv[2]);
		return 2;
	}
	long page = sysconf(_SC_PAGESIZE);
	char line[4096], path[8192];
	long long bytes = 0, files = 0, pages = 0, total = 0;
	unsigned long sum = 0;
	while (fgets(line, sizeof(line), list)) {
		line[strcspn(line, "\n")] = 0;
		if (!line[0])
			continue;
		snprintf(path, sizeof(path), "%s/%s", prefix, line);
		int fd = open(path, O_RDONLY);
		struct stat st;
		if (fd < 0 || fstat(fd, &st) < 0) {
			perror(path);
			return 1;
		}
		if (st.st_size == 0) {
			close(fd);
			continue;
		}
		long long t0 = now_ns();
		volatile const unsigned char *p = mmap(NULL, st.st_size, PROT_READ, MAP_SHARED, fd, 0);
		if (p == MAP_FAILED) {
			perror(path);
			return 1;
		}
		for (off_t off = 0; off < st.st_size; off += page) {
			sum += p[off];
			pages++;
		}
		munmap((void *)p, st.st_size);
		total += now_ns() - t0;
		close(fd);
		files++;
		bytes += st.st_size;
	}
	double secs = total / 1e9;
	printf("MICRO %s bs=%ld files=%lld bytes=%lld secs=%.6f mib_s=%.2f pages=%lld ns_per_page=%lld sum=%lu\n",
	       label, page, files, bytes, secs, secs > 0 ? bytes / 1048576.0 / secs : 0.0, pages,
	       pages ? total / pages : 0, sum);
	return 0;
}
