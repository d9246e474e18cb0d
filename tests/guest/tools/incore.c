// SPDX-License-Identifier: GPL-2.0
/*
 * incore FILE: prints how many of FILE's pages are in the page cache
 * (mincore(2) on a mapping that is never touched, so nothing is faulted in),
 * for the selftests that check what stays cached of a lower file.
 * Build: gcc -static -O2 -o incore incore.c
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	unsigned char *vec;
	struct stat st;
	size_t pages, i, n = 0;
	long psz = sysconf(_SC_PAGESIZE);
	void *p;
	int fd;

	if (argc != 2)
		return 2;
	fd = open(argv[1], O_RDONLY);
	if (fd < 0 || fstat(fd, &st)) {
		perror(argv[1]);
		return 1;
	}
	if (st.st_size == 0) {
		puts("0");
		return 0;
	}
	pages = (st.st_size + psz - 1) / psz;
	p = mmap(NULL, st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	vec = malloc(pages);
	if (p == MAP_FAILED || !vec || mincore(p, st.st_size, vec)) {
		perror("mincore");
		return 1;
	}
	for (i = 0; i < pages; i++)
		n += vec[i] & 1;
	printf("%zu\n", n);
	return 0;
}
