// SPDX-License-Identifier: GPL-2.0
/*
 * privmap CHECK FILE LOWER: one check of MAP_PRIVATE semantics on FILE (a file
 * under a vmdedupfs mount whose private mappings map pool frames), against
 * LOWER (the same file read with read(2) from the lower tree). FILE must be at
 * least 3 pages long. Exits 0 when the check holds, 1 with a message on
 * stderr when it does not, 2 on a setup error. For the vmdedupfs selftests.
 *
 * Checks:
 *   read      a private read-only mapping reads LOWER's bytes
 *   cow       writes to a read page of a private mapping are seen by that
 *             mapping only: a shared mapping of FILE, another private one and
 *             read(2) still see LOWER's bytes; unwritten pages too
 *   cow-cold  a write to a page never read before (the copy-on-write fault
 *             of a page not yet mapped) keeps the rest of the page LOWER's
 *   fork      a child sees the parent's written pages and its own writes do
 *             not reach the parent
 *   dontneed  madvise(MADV_DONTNEED) drops a written page: it reads LOWER's
 *             bytes again
 *   procmem   /proc/self/mem reads an unwritten page of the mapping (the
 *             kernel's remote access path, which cannot pin a pool frame)
 *   exec      mprotect(PROT_READ | PROT_EXEC) on a private mapping works and
 *             it still reads LOWER's bytes
 *
 * Build: gcc -static -O2 -Wall -o privmap privmap.c
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static long page;
static size_t size;
static char *want;
static int fd;

static int fail(const char *what)
{
	fprintf(stderr, "privmap: %s\n", what);
	return 1;
}

/* First offset where a and b differ over len bytes, or -1. */
static long differs(const char *a, const char *b, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++)
		if (a[i] != b[i])
			return (long)i;
	return -1;
}

static int same_as_lower(const char *p, const char *what)
{
	long d = differs(p, want, size);

	if (d >= 0) {
		fprintf(stderr, "privmap: %s: byte %ld is 0x%02x, lower has 0x%02x\n", what, d, p[d] & 0xff,
			want[d] & 0xff);
		return 1;
	}
	return 0;
}

static char *map(int prot, int flags)
{
	char *p = mmap(NULL, size, prot, flags, fd, 0);

	if (p == MAP_FAILED) {
		perror("privmap: mmap");
		exit(2);
	}
	return p;
}

static int read_all(int f, char *buf, size_t len, off_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pread(f, buf + done, len - done, off + done);

		if (n <= 0)
			return -1;
		done += n;
	}
	return 0;
}

/* Writes a pattern over part of page n of p (and into the expected copy). */
static void scribble(char *p, char *expect, size_t n)
{
	size_t off = n * page + 100, i;

	for (i = 0; i < 200 && off + i < size; i++) {
		p[off + i] = (char)(~want[off + i] ^ (char)i);
		if (expect)
			expect[off + i] = p[off + i];
	}
}

static int check_read(void)
{
	char *p = map(PROT_READ, MAP_PRIVATE);

	return same_as_lower(p, "private mapping");
}

static int check_cow(void)
{
	char *p = map(PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char *q = map(PROT_READ, MAP_SHARED);
	char *r = map(PROT_READ, MAP_PRIVATE);
	char *expect = malloc(size), *back = malloc(size);

	if (!expect || !back)
		return 2;
	if (same_as_lower(p, "private mapping before writing"))
		return 1;
	memcpy(expect, want, size);
	scribble(p, expect, 0);
	scribble(p, expect, 2);
	if (differs(p, expect, size) >= 0)
		return fail("the private mapping does not hold its own writes");
	if (same_as_lower(q, "shared mapping after private writes") ||
	    same_as_lower(r, "second private mapping after private writes"))
		return 1;
	if (read_all(fd, back, size, 0))
		return fail("read(2) of the file failed");
	if (same_as_lower(back, "read(2) after private writes"))
		return 1;
	return 0;
}

static int check_cow_cold(void)
{
	char *p = map(PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char *expect = malloc(size);

	if (!expect)
		return 2;
	memcpy(expect, want, size);
	/* Page 1 is written before anything of it was read. */
	scribble(p, expect, 1);
	if (differs(p, expect, size) >= 0)
		return fail("a write to a page never read lost the rest of the page");
	return 0;
}

static int check_fork(void)
{
	char *p = map(PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char *expect = malloc(size);
	int status;
	pid_t pid;

	if (!expect)
		return 2;
	memcpy(expect, want, size);
	scribble(p, expect, 0);
	pid = fork();
	if (pid < 0)
		return 2;
	if (pid == 0) {
		if (differs(p, expect, size) >= 0)
			_exit(3);
		scribble(p, NULL, 1);
		scribble(p, NULL, 0);
		_exit(0);
	}
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
		return fail("the child died");
	if (WEXITSTATUS(status) == 3)
		return fail("the child does not see the parent's written page");
	if (WEXITSTATUS(status))
		return fail("the child failed");
	if (differs(p, expect, size) >= 0)
		return fail("the child's writes reached the parent");
	return 0;
}

static int check_dontneed(void)
{
	char *p = map(PROT_READ | PROT_WRITE, MAP_PRIVATE);

	if (same_as_lower(p, "private mapping before writing"))
		return 1;
	scribble(p, NULL, 1);
	if (differs(p, want, size) < 0)
		return fail("the write did not land");
	if (madvise(p + page, page, MADV_DONTNEED))
		return fail("madvise(MADV_DONTNEED) failed");
	return same_as_lower(p, "private mapping after MADV_DONTNEED");
}

static int check_procmem(void)
{
	char *p = map(PROT_READ, MAP_PRIVATE);
	char *buf = malloc(size);
	int mem = open("/proc/self/mem", O_RDONLY);

	if (!buf || mem < 0)
		return 2;
	/* Fault the pages in first: pool frames, which cannot be pinned. */
	if (same_as_lower(p, "private mapping"))
		return 1;
	if (read_all(mem, buf, size, (off_t)(unsigned long)p))
		return fail("reading the mapping through /proc/self/mem failed");
	return same_as_lower(buf, "/proc/self/mem");
}

static int check_exec(void)
{
	char *p = map(PROT_READ, MAP_PRIVATE);

	if (mprotect(p, size, PROT_READ | PROT_EXEC))
		return fail("mprotect(PROT_READ | PROT_EXEC) failed");
	return same_as_lower(p, "private executable mapping");
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		int (*fn)(void);
	} checks[] = {
		{ "read", check_read },	       { "cow", check_cow },	     { "cow-cold", check_cow_cold },
		{ "fork", check_fork },	       { "dontneed", check_dontneed }, { "procmem", check_procmem },
		{ "exec", check_exec },
	};
	struct stat st;
	size_t i;
	int lfd;

	page = sysconf(_SC_PAGESIZE);
	if (argc != 4) {
		fprintf(stderr, "usage: privmap CHECK FILE LOWER (checks: read cow cow-cold fork dontneed procmem exec)\n");
		return 2;
	}
	fd = open(argv[2], O_RDONLY);
	lfd = open(argv[3], O_RDONLY);
	if (fd < 0 || lfd < 0 || fstat(fd, &st)) {
		perror("privmap: open");
		return 2;
	}
	size = st.st_size;
	if (size < 3 * (size_t)page) {
		fprintf(stderr, "privmap: %s is shorter than 3 pages\n", argv[2]);
		return 2;
	}
	want = malloc(size);
	if (!want || read_all(lfd, want, size, 0)) {
		perror("privmap: reading the lower file");
		return 2;
	}
	for (i = 0; i < sizeof(checks) / sizeof(checks[0]); i++)
		if (!strcmp(argv[1], checks[i].name))
			return checks[i].fn();
	fprintf(stderr, "privmap: unknown check '%s'\n", argv[1]);
	return 2;
}
