// SPDX-License-Identifier: GPL-2.0
/*
 * mmapcat FILE [private]: writes FILE to stdout through one read-only mmap
 * (MAP_SHARED by default, MAP_PRIVATE with "private"), for the vmdedupfs
 * selftests. Build: gcc -static -O2 -o mmapcat mmapcat.c
 */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	struct stat st;
	const char *p;
	size_t done = 0;
	int fd, flags = MAP_SHARED;

	if (argc < 2)
		return 2;
	if (argc > 2 && !strcmp(argv[2], "private"))
		flags = MAP_PRIVATE;
	fd = open(argv[1], O_RDONLY);
	if (fd < 0 || fstat(fd, &st)) {
		perror(argv[1]);
		return 1;
	}
	if (st.st_size == 0)
		return 0;
	p = mmap(NULL, st.st_size, PROT_READ, flags, fd, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	while (done < (size_t)st.st_size) {
		ssize_t n = write(1, p + done, st.st_size - done);
		if (n <= 0) {
			perror("write");
			return 1;
		}
		done += n;
	}
	return 0;
}
