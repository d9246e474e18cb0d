// SPDX-License-Identifier: GPL-2.0
/*
 * treecheck MOUNT LOWER: every regular file under MOUNT (a vmdedupfs mount)
 * must hold the bytes of the same path under LOWER, through
 *   - read(2) in odd-sized pieces (7777 bytes: they straddle pages),
 *   - pread(2) of 5000 bytes at odd offsets (1, 4095, 4097, 12289, the
 *     middle plus 3, and the last byte),
 *   - a shared read-only mmap of the whole file,
 *   - a private read-only mmap of the whole file,
 * each compared byte for byte with LOWER read with read(2). One process for
 * the whole tree (a process per file is slow under TCG). Prints one line per
 * difference or error and a summary; exits 0 when every file matched through
 * every path, 1 otherwise, 2 on a usage error. For the vmdedupfs selftests.
 *
 * Build: gcc -static -O2 -Wall -o treecheck treecheck.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *mount_root, *lower_root;
static size_t mount_len;
static unsigned long files, bad;
static unsigned long long bytes;
static char *want, *got;
static size_t cap;

static void report(const char *rel, const char *how, long long at)
{
	bad++;
	if (at >= 0)
		printf("treecheck: %s: %s differs at byte %lld\n", rel, how, at);
	else
		printf("treecheck: %s: %s: %s\n", rel, how, strerror(errno));
}

static long long first_diff(const char *a, const char *b, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++)
		if (a[i] != b[i])
			return (long long)i;
	return -1;
}

static int grow(size_t len)
{
	char *a, *b;

	if (len <= cap)
		return 0;
	a = realloc(want, len);
	if (!a)
		return -1;
	want = a;
	b = realloc(got, len);
	if (!b)
		return -1;
	got = b;
	cap = len;
	return 0;
}

/* Reads len bytes at off in pieces of at most piece bytes; the count read. */
static size_t read_at(int fd, char *buf, size_t len, off_t off, size_t piece)
{
	size_t done = 0;

	while (done < len) {
		size_t n = len - done < piece ? len - done : piece;
		ssize_t r = pread(fd, buf + done, n, off + done);

		if (r <= 0)
			break;
		done += r;
	}
	return done;
}

static void check_map(const char *rel, int fd, size_t size, int flags, const char *how)
{
	char *p;
	long long d;

	p = mmap(NULL, size, PROT_READ, flags, fd, 0);
	if (p == MAP_FAILED) {
		report(rel, how, -1);
		return;
	}
	d = first_diff(p, want, size);
	if (d >= 0)
		report(rel, how, d);
	munmap(p, size);
}

static void check_file(const char *path, const char *rel, size_t size)
{
	static const long long offs[] = { 1, 4095, 4097, 12289, -2, -1 };
	char lpath[PATH_MAX];
	int fd, lfd;
	size_t i, n;
	long long d;

	files++;
	if (snprintf(lpath, sizeof(lpath), "%s/%s", lower_root, rel) >= (int)sizeof(lpath)) {
		errno = ENAMETOOLONG;
		report(rel, "lower path", -1);
		return;
	}
	fd = open(path, O_RDONLY);
	lfd = open(lpath, O_RDONLY);
	if (fd < 0 || lfd < 0 || grow(size + 1)) {
		report(rel, fd < 0 ? "open" : lfd < 0 ? "open lower" : "memory", -1);
		goto out;
	}
	n = read_at(lfd, want, size + 1, 0, 1 << 20);
	if (n != size) {
		printf("treecheck: %s: the mount says %zu bytes, the lower file has %s%zu\n", rel, size,
		       n > size ? "more than " : "", n);
		bad++;
		goto out;
	}
	bytes += size;

	/* read(2) in odd-sized pieces, to the end of file and one past. */
	n = 0;
	for (;;) {
		ssize_t r = read(fd, got + n, size + 1 - n < 7777 ? size + 1 - n : 7777);

		if (r < 0) {
			report(rel, "read(2)", -1);
			goto out;
		}
		if (r == 0)
			break;
		n += r;
		if (n > size)
			break;
	}
	if (n != size) {
		printf("treecheck: %s: read(2) returned %zu bytes, lower has %zu\n", rel, n, size);
		bad++;
		goto out;
	}
	d = first_diff(got, want, size);
	if (d >= 0) {
		report(rel, "read(2)", d);
		goto out;
	}

	/* pread(2) at odd offsets. */
	for (i = 0; i < sizeof(offs) / sizeof(offs[0]); i++) {
		long long off = offs[i] == -2 ? (long long)size / 2 + 3 : offs[i] == -1 ? (long long)size - 1 : offs[i];
		size_t len, r;

		if (off < 0 || (size_t)off >= size)
			continue;
		len = size - off < 5000 ? size - off : 5000;
		r = read_at(fd, got, len, off, len);
		d = r == len ? first_diff(got, want + off, len) : 0;
		if (r != len || d >= 0) {
			char how[64];

			snprintf(how, sizeof(how), "pread(2) at %lld", off);
			errno = EIO;
			report(rel, how, r != len ? -1 : off + d);
			goto out;
		}
	}

	if (size) {
		check_map(rel, fd, size, MAP_SHARED, "shared mmap");
		check_map(rel, fd, size, MAP_PRIVATE, "private mmap");
	}
out:
	if (fd >= 0)
		close(fd);
	if (lfd >= 0)
		close(lfd);
}

static int visit(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	const char *rel = path + mount_len;

	(void)ftw;
	while (*rel == '/')
		rel++;
	if (type == FTW_F && S_ISREG(st->st_mode))
		check_file(path, rel, st->st_size);
	else if (type == FTW_DNR || type == FTW_NS) {
		printf("treecheck: %s: cannot be read or stat()ed\n", rel);
		bad++;
	}
	if (files && files % 500 == 0 && type == FTW_F)
		fprintf(stderr, "treecheck: %lu files checked\n", files);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: treecheck MOUNT LOWER\n");
		return 2;
	}
	mount_root = argv[1];
	lower_root = argv[2];
	mount_len = strlen(mount_root);
	if (nftw(mount_root, visit, 32, FTW_PHYS)) {
		perror("treecheck: walking the mount");
		return 1;
	}
	printf("treecheck: %lu files, %llu bytes: %lu differences or errors (read(2) in 7777-byte pieces, "
	       "pread(2) at odd offsets, shared and private mmap)\n",
	       files, bytes, bad);
	return bad || !files ? 1 : 0;
}
