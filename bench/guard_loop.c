/*
 * The guard benchmark's system-call-heavy workload (bench/guard_bench.py):
 *   guard_loop files N   N times: open(PATH, O_RDONLY), close, stat(PATH)
 *   guard_loop getpid N  N times: getpid (a call nobody watches)
 * Prints the nanoseconds per iteration.  Built statically by the bench, so it
 * runs unchanged in a busybox container.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	const char *path = "/etc/passwd";
	struct stat st;
	long i, n;
	double t0;

	if (argc < 3)
		return 2;
	n = atol(argv[2]);
	t0 = now();
	if (!strcmp(argv[1], "files")) {
		for (i = 0; i < n; i++) {
			int fd = open(path, O_RDONLY);

			if (fd < 0 || close(fd) || stat(path, &st)) {
				perror(path);
				return 1;
			}
		}
	} else if (!strcmp(argv[1], "getpid")) {
		for (i = 0; i < n; i++)
			syscall(SYS_getpid);
	} else {
		return 2;
	}
	printf("%.1f\n", (now() - t0) / n);
	return 0;
}
