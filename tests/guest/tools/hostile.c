// SPDX-License-Identifier: GPL-2.0
/*
 * hostile: what a malicious guest can do to the shared regions from user
 * space, for the selftests. It maps the ivshmem BARs through sysfs
 * (/sys/bus/pci/devices/X/resource2) and tells ring from pool by the magic.
 *
 *   hostile pool-write        write over the pool (header, tables, frames);
 *                             prints how many bytes read back changed
 *   hostile ring SECONDS      scribble over this guest's ring region: random
 *                             bytes, absurd indices, and crafted hints (path
 *                             escapes, NUL, huge lengths, bad slots), for
 *                             SECONDS; prints what it sent
 *   hostile flood N [NS]      write N hints for distinct paths (that do not
 *                             exist) of namespace NS (default 1) into this
 *                             guest's ring as fast as the ring takes them,
 *                             reaping the answers itself; the vmdedup module
 *                             must be unloaded (it owns the ring otherwise).
 *                             Prints what was sent and answered, and the rate
 *
 * Build: gcc -static -O2 -o hostile hostile.c
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define RING_MAGIC 0x474e495244444d56ULL /* "VMDDRING" */
#define POOL_MAGIC 0x4c4f4f5044444d56ULL /* "VMDDPOOL" */

/* Ring header offsets (protocol/src/abi.rs, ring_off). */
#define SQ_AREA 48
#define SQ_TAIL 192
#define SQ_HEAD 128
#define SLOT_AREA 96
#define SQE_SIZE 256
#define SQE_INLINE 96
#define CQ_AREA 64
#define CQ_HEAD 256
#define CQ_TAIL 320
#define CQE_SIZE 64
#define SQE_INLINE_MAX (SQE_SIZE - SQE_INLINE)
#define PATH_SLOT_SIZE 4096
#define HINT_FLAG_PATH_IN_SLOT 1
#define ANSWER_STATUSES 16

static volatile uint8_t *map_bar(uint64_t want, size_t *len, int writable)
{
	DIR *d = opendir("/sys/bus/pci/devices");
	struct dirent *e;
	char path[512];

	if (!d)
		return NULL;
	while ((e = readdir(d))) {
		struct stat st;
		int fd;
		void *p;

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/resource2", e->d_name);
		fd = open(path, writable ? O_RDWR : O_RDONLY);
		if (fd < 0)
			continue;
		if (fstat(fd, &st) || st.st_size < 4096) {
			close(fd);
			continue;
		}
		p = mmap(NULL, st.st_size, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED, fd, 0);
		close(fd);
		if (p == MAP_FAILED)
			continue;
		if (*(volatile uint64_t *)p == want) {
			*len = st.st_size;
			closedir(d);
			return p;
		}
		munmap(p, st.st_size);
	}
	closedir(d);
	return NULL;
}

static uint64_t rnd(void)
{
	static uint64_t s = 0x9e3779b97f4a7c15ULL;

	s ^= s << 13;
	s ^= s >> 7;
	s ^= s << 17;
	return s;
}

static int pool_write(void)
{
	size_t len, i, changed = 0, probes = 0;
	volatile uint8_t *p = map_bar(POOL_MAGIC, &len, 1);
	uint8_t *before;

	if (!p) {
		fprintf(stderr, "hostile: no pool region to map writable (%s)\n", strerror(errno));
		/* A pool that cannot even be mapped writable cannot be written. */
		printf("pool-write: not mappable writable; changed 0\n");
		return 0;
	}
	before = malloc(len);
	if (!before)
		return 1;
	for (i = 0; i < len; i++)
		before[i] = p[i];
	/* Header, the table area and frames all over the region. */
	for (i = 0; i < len; i += 509) {
		p[i] = (uint8_t)rnd();
		probes++;
	}
	for (i = 0; i < 4096; i++)
		p[i] = 0xff;
	for (i = 0; i < len; i++)
		if (p[i] != before[i])
			changed++;
	printf("pool-write: wrote %zu places of %zu bytes; changed %zu\n", probes + 4096, len, changed);
	return 0;
}

static void put64(volatile uint8_t *p, size_t off, uint64_t v)
{
	memcpy((void *)(p + off), &v, 8);
}

static void put32(volatile uint8_t *p, size_t off, uint32_t v)
{
	memcpy((void *)(p + off), &v, 4);
}

static int ring(int seconds)
{
	size_t len;
	volatile uint8_t *r = map_bar(RING_MAGIC, &len, 1);
	uint32_t sq_off, entries, tail;
	unsigned long sent = 0, scribbles = 0, indices = 0;
	time_t end = time(NULL) + seconds;
	static const char *paths[] = {
		"../../etc/passwd", "/etc/passwd", "edge/../../../etc/shadow", "edge/absolute-link",
		"edge/link-to-dir/../../../../etc", "usr/bin/../../..", "edge/dangling", "",
		"edge/pages-1.bin\0../../etc/passwd", "/proc/self/root/etc/passwd", "..", ".",
	};

	if (!r) {
		fprintf(stderr, "hostile: no ring region\n");
		return 1;
	}
	memcpy(&sq_off, (void *)(r + SQ_AREA), 4);
	memcpy(&entries, (void *)(r + SQ_AREA + 4), 4);
	if (!entries || (entries & (entries - 1)) || sq_off >= len || sq_off + (size_t)entries * SQE_SIZE > len) {
		fprintf(stderr, "hostile: odd ring layout; scribbling anyway\n");
		entries = 1;
		sq_off = 4096;
	}
	memcpy(&tail, (void *)(r + SQ_TAIL), 4);
	while (time(NULL) < end) {
		unsigned k;

		for (k = 0; k < 64; k++) {
			size_t slot = sq_off + (size_t)(tail % entries) * SQE_SIZE;
			const char *path = paths[rnd() % (sizeof(paths) / sizeof(paths[0]))];
			size_t plen = strlen(path);
			unsigned kind = rnd() % 6;

			memset((void *)(r + slot), 0, SQE_SIZE);
			put64(r, slot + 0, rnd());                   /* request id */
			put32(r, slot + 8, 1 | (plen << 16));          /* OP_HINT, path_len */
			put32(r, slot + 12, (uint32_t)(rnd() % 3));    /* namespace id */
			if (kind == 0) {
				/* Random bytes everywhere. */
				size_t i;
				for (i = 0; i < SQE_SIZE; i += 8)
					put64(r, slot + i, rnd());
			} else if (kind == 1) {
				put32(r, slot + 8, 1 | (0xffffu << 16)); /* huge path_len */
			} else if (kind == 2) {
				put32(r, slot + 16, 1);                  /* path in slot ... */
				put32(r, slot + 20, (uint32_t)rnd());    /* ... out of range */
			} else if (kind == 3) {
				put32(r, slot + 8, (uint32_t)rnd());     /* unknown opcode */
			}
			memcpy((void *)(r + slot + SQE_INLINE), path, plen < 160 ? plen : 160);
			if (kind == 4 && plen < 150)
				r[slot + SQE_INLINE + plen] = 0, put32(r, slot + 8, 1 | ((plen + 5) << 16)); /* NUL inside */
			tail++;
			sent++;
		}
		__atomic_store_n((uint32_t *)(r + SQ_TAIL), tail, __ATOMIC_RELEASE);
		/* Absurd indices now and then, and random bytes over the header. */
		if (rnd() % 4 == 0) {
			__atomic_store_n((uint32_t *)(r + SQ_TAIL), (uint32_t)rnd(), __ATOMIC_RELEASE);
			__atomic_store_n((uint32_t *)(r + SQ_HEAD), (uint32_t)rnd(), __ATOMIC_RELEASE);
			indices++;
			usleep(2000);
			__atomic_store_n((uint32_t *)(r + SQ_TAIL), tail, __ATOMIC_RELEASE);
		}
		if (rnd() % 8 == 0) {
			size_t i;
			for (i = 0; i < 64; i++)
				r[1024 + rnd() % (len - 1024)] = (uint8_t)rnd();
			scribbles++;
		}
		usleep(1000);
	}
	printf("ring: %lu crafted or random entries, %lu index attacks, %lu scribbles\n", sent, indices, scribbles);
	return 0;
}

static uint32_t load32(volatile uint8_t *p, size_t off)
{
	return __atomic_load_n((uint32_t *)(p + off), __ATOMIC_ACQUIRE);
}

/* Path number i: distinct for every i, of varied length (most inline in the
 * entry, some in a path slot), components shorter than NAME_MAX. */
static size_t flood_path(uint64_t i, char *buf, size_t max)
{
	size_t n = (size_t)snprintf(buf, max, "flood/%llx/", (unsigned long long)i);
	size_t len = (i % 8 == 0) ? 2000 : (i % 8 < 3) ? 300 : 60;

	if (len > max)
		len = max;
	while (n < len) {
		buf[n] = (n % 200 == 0) ? '/' : (char)('a' + n % 26);
		n++;
	}
	return n;
}

static double now_s(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static int flood(unsigned long n, uint32_t ns)
{
	size_t len;
	volatile uint8_t *r = map_bar(RING_MAGIC, &len, 1);
	uint32_t sq_off, sq_n, cq_off, cq_n, slot_off, slot_n, tail, cq_head, inflight_max;
	unsigned long sent = 0, answered = 0, stalls = 0;
	unsigned long status[ANSWER_STATUSES + 1] = { 0 };
	static char path[PATH_SLOT_SIZE];
	double t0 = now_s(), t1;
	unsigned i;

	if (!r) {
		fprintf(stderr, "hostile: no ring region\n");
		return 1;
	}
	memcpy(&sq_off, (void *)(r + SQ_AREA), 4);
	memcpy(&sq_n, (void *)(r + SQ_AREA + 4), 4);
	memcpy(&cq_off, (void *)(r + CQ_AREA), 4);
	memcpy(&cq_n, (void *)(r + CQ_AREA + 4), 4);
	memcpy(&slot_off, (void *)(r + SLOT_AREA), 4);
	memcpy(&slot_n, (void *)(r + SLOT_AREA + 4), 4);
	if (!sq_n || !cq_n || (sq_n & (sq_n - 1)) || (cq_n & (cq_n - 1)) ||
	    (size_t)sq_off + (size_t)sq_n * SQE_SIZE > len || (size_t)cq_off + (size_t)cq_n * CQE_SIZE > len ||
	    (size_t)slot_off + (size_t)slot_n * PATH_SLOT_SIZE > len) {
		fprintf(stderr, "hostile: odd ring layout\n");
		return 1;
	}
	/* Answers not yet reaped never exceed a ring, nor the path slots (slot
	 * k of a hint is reused only after its answer was read). */
	inflight_max = sq_n < cq_n ? sq_n : cq_n;
	if (slot_n && slot_n < inflight_max)
		inflight_max = slot_n;
	tail = load32(r, SQ_TAIL);
	cq_head = load32(r, CQ_HEAD);
	while (answered < n) {
		uint32_t cq_tail = load32(r, CQ_TAIL), sq_head = load32(r, SQ_HEAD);
		int progress = 0;

		/* Reap. */
		while (cq_head != cq_tail && answered < sent) {
			size_t c = cq_off + (size_t)(cq_head % cq_n) * CQE_SIZE;
			uint16_t st;

			memcpy(&st, (void *)(r + c + 8), 2);
			status[st < ANSWER_STATUSES ? st : ANSWER_STATUSES]++;
			cq_head++;
			answered++;
			progress = 1;
		}
		__atomic_store_n((uint32_t *)(r + CQ_HEAD), cq_head, __ATOMIC_RELEASE);
		/* Submit as many as fit. */
		while (sent < n && sent - answered < inflight_max && (uint32_t)(tail - sq_head) < sq_n) {
			size_t e = sq_off + (size_t)(tail % sq_n) * SQE_SIZE;
			size_t plen = flood_path(sent, path, slot_n ? PATH_SLOT_SIZE : SQE_INLINE_MAX);
			uint32_t flags = 0, slot = 0;

			if (plen > SQE_INLINE_MAX) {
				slot = (uint32_t)(sent % slot_n);
				flags = HINT_FLAG_PATH_IN_SLOT;
				memcpy((void *)(r + slot_off + (size_t)slot * PATH_SLOT_SIZE), path, plen);
			} else {
				memcpy((void *)(r + e + SQE_INLINE), path, plen);
			}
			put64(r, e + 0, sent);                         /* request id */
			put32(r, e + 8, 1 | ((uint32_t)plen << 16));   /* OP_HINT, path_len */
			put32(r, e + 12, ns);
			put32(r, e + 16, flags);
			put32(r, e + 20, slot);
			put64(r, e + 24, 1);                           /* file size */
			put64(r, e + 32, 1);                           /* mtime */
			put64(r, e + 40, 0);
			put64(r, e + 48, 0);
			put64(r, e + 56, 0);
			put64(r, e + 64, 0);
			put64(r, e + 72, 0);
			put64(r, e + 80, 0);
			put64(r, e + 88, 0);
			tail++;
			sent++;
			progress = 1;
		}
		__atomic_store_n((uint32_t *)(r + SQ_TAIL), tail, __ATOMIC_RELEASE);
		if (!progress) {
			stalls++;
			usleep(50);
		}
	}
	t1 = now_s();
	printf("flood: %lu sent, %lu answered in %.1f s (%.0f hints/s), %lu stalls; status counts:",
	       sent, answered, t1 - t0, answered / (t1 - t0 > 0 ? t1 - t0 : 1), stalls);
	for (i = 0; i <= ANSWER_STATUSES; i++)
		if (status[i])
			printf(" %u=%lu", i, status[i]);
	printf("\n");
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && !strcmp(argv[1], "pool-write"))
		return pool_write();
	if (argc >= 3 && !strcmp(argv[1], "ring"))
		return ring(atoi(argv[2]));
	if (argc >= 3 && !strcmp(argv[1], "flood"))
		return flood(strtoul(argv[2], NULL, 0), argc >= 4 ? (uint32_t)strtoul(argv[3], NULL, 0) : 1);
	fprintf(stderr, "usage: hostile pool-write | hostile ring SECONDS | hostile flood N [NS]\n");
	return 2;
}
