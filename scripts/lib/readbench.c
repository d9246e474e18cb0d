// SPDX-License-Identifier: GPL-2.0
// readbench: times read(2) calls inside a guest, for scripts/bench ksm.
//
// Usage: readbench LABEL BLOCK_SIZE LIST_FILE PREFIX
// Reads every file named in LIST_FILE (one path per line, relative to PREFIX)
// from start to end in BLOCK_SIZE reads, timing each read with
// CLOCK_MONOTONIC, and prints one line:
//   MICRO LABEL bs=B files=F bytes=N secs=S mib_s=T reads=R mean_ns=M p50_ns=P p99_ns=Q tick_ns=K
// secs is the time from each open to its close, summed; tick_ns the smallest
// non-zero time seen, i.e. how coarse the guest's clock is (a guest without a
// fine clocksource ticks in jiffies: then only the totals mean something).
// A benchmark helper: it reports, it asserts nothing.
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int cmp_ll(const void *a, const void *b)
{
	long long x = *(const long long *)a, y = *(const long long *)b;
	return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: readbench LABEL BLOCK_SIZE LIST_FILE PREFIX\n");
		return 2;
	}
	const char *label = argv[1], *prefix = argv[4];
	size_t bs = strtoul(argv[2], NULL, 0);
	FILE *list = fopen(argv[3], "r");
	if (!bs || !list) {
		fprintf(stderr, "readbench: bad block size or list %s\n", argv[3]);
		return 2;
	}
	char *buf = malloc(bs);
	size_t cap = 1 << 16, n = 0;
	long long *lat = malloc(cap * sizeof(*lat));
	if (!buf || !lat)
		return 2;
	char line[4096], path[8192];
	long long bytes = 0, files = 0, total = 0, in_reads = 0, tick = 0;
	while (fgets(line, sizeof(line), list)) {
		line[strcspn(line, "\n")] = 0;
		if (!line[0])
			continue;
		snprintf(path, sizeof(path), "%s/%s", prefix, line);
		long long t0 = now_ns();
		int fd = open(path, O_RDONLY);
		if (fd < 0) {
			perror(path);
			return 1;
		}
		files++;
		for (;;) {
			long long a = now_ns();
			ssize_t r = read(fd, buf, bs);
			long long b = now_ns();
			if (r < 0) {
				perror(path);
				return 1;
			}
			if (r == 0)
				break;
			bytes += r;
			if (n == cap) {
				cap *= 2;
				lat = realloc(lat, cap * sizeof(*lat));
				if (!lat)
					return 2;
			}
			lat[n++] = b - a;
			in_reads += b - a;
			if (b > a && (!tick || b - a < tick))
				tick = b - a;
		}
		close(fd);
		total += now_ns() - t0;
	}
	qsort(lat, n, sizeof(*lat), cmp_ll);
	double secs = total / 1e9;
	printf("MICRO %s bs=%zu files=%lld bytes=%lld secs=%.6f mib_s=%.2f reads=%zu mean_ns=%lld p50_ns=%lld p99_ns=%lld tick_ns=%lld\n",
	       label, bs, files, bytes, secs, secs > 0 ? bytes / 1048576.0 / secs : 0.0, n,
	       n ? in_reads / (long long)n : 0, n ? lat[n / 2] : 0, n ? lat[(n * 99) / 100] : 0, tick);
	return 0;
}
