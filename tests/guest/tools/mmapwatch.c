// SPDX-License-Identifier: GPL-2.0
/*
 * mmapwatch FILE LOWER STOPFILE [TIMEOUT_S [private]]: maps FILE (MAP_SHARED,
 * read-only) once and keeps comparing every page of the mapping with LOWER
 * (read(2) into a buffer at start) until STOPFILE exists or TIMEOUT_S
 * (default 120) passes. With "private" the mapping is MAP_PRIVATE and
 * writable, and after the first pass every third page is written (copied on
 * write): those pages must keep the process's own bytes and the others
 * LOWER's, whatever happens to the file's mapping meanwhile.
 * The same mapping is read across whatever happens to it meanwhile (a
 * revocation zaps its PTEs; the next access faults again), so a SIGBUS or a
 * wrong byte after a revocation is caught. Prints "mmapwatch: mapped" once
 * the first full pass matched, then "mmapwatch: N passes, all equal" at the
 * end; exits 1 on the first difference (with its offset), 2 on a setup error,
 * and dies by SIGBUS if a fault fails. For the vmdedupfs selftests.
 * Build: gcc -static -O2 -o mmapwatch mmapwatch.c
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int read_all(const char *path, char *buf, size_t len)
{
	size_t done = 0;
	int fd = open(path, O_RDONLY);

	if (fd < 0)
		return -1;
	while (done < len) {
		ssize_t n = read(fd, buf + done, len - done);

		if (n <= 0) {
			close(fd);
			return -1;
		}
		done += n;
	}
	close(fd);
	return 0;
}

int main(int argc, char **argv)
{
	const long page = sysconf(_SC_PAGESIZE);
	unsigned long passes = 0;
	struct stat st;
	time_t end;
	char *want;
	volatile char *p;
	int fd, private = argc > 5 && !strcmp(argv[5], "private");

	if (argc < 4) {
		fprintf(stderr, "usage: mmapwatch FILE LOWER STOPFILE [TIMEOUT_S [private]]\n");
		return 2;
	}
	end = time(NULL) + (argc > 4 ? atoi(argv[4]) : 120);
	fd = open(argv[1], O_RDONLY);
	if (fd < 0 || fstat(fd, &st) || st.st_size == 0) {
		perror(argv[1]);
		return 2;
	}
	want = malloc(st.st_size);
	if (!want || read_all(argv[2], want, st.st_size)) {
		perror(argv[2]);
		return 2;
	}
	p = mmap(NULL, st.st_size, private ? PROT_READ | PROT_WRITE : PROT_READ, private ? MAP_PRIVATE : MAP_SHARED,
		 fd, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		return 2;
	}
	close(fd);
	for (;;) {
		off_t off;

		for (off = 0; off < st.st_size; off += page) {
			size_t n = st.st_size - off < page ? st.st_size - off : page;
			size_t i;

			for (i = 0; i < n; i++) {
				if (p[off + i] != want[off + i]) {
					printf("mmapwatch: pass %lu: byte %lld differs (0x%02x, lower 0x%02x)\n", passes,
					       (long long)(off + i), p[off + i] & 0xff, want[off + i] & 0xff);
					return 1;
				}
			}
		}
		if (passes++ == 0) {
			if (private) {
				for (off = 0; off < st.st_size; off += 3 * page) {
					p[off] = ~want[off];
					want[off] = p[off];
				}
			}
			printf("mmapwatch: mapped%s\n", private ? " (private, every third page written)" : "");
			fflush(stdout);
		}
		if (access(argv[3], F_OK) == 0 || time(NULL) >= end)
			break;
		usleep(20000);
	}
	printf("mmapwatch: %lu passes, all equal\n", passes);
	return 0;
}
