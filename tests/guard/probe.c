/*
 * Static helper for tests/test_guard.py: the system calls busybox has no
 * applet for, each made once so the guard can report it.
 *   probe ptrace   fork a child and PTRACE_ATTACH to it
 *   probe bpf      bpf(BPF_MAP_CREATE) with an empty attribute block
 *   probe setuid   setuid(65534)
 *   probe module   finit_module(-1, "", 0)
 * Prints the call's result and errno; exits 0 whatever the kernel said.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	long r = -1;

	if (argc < 2)
		return 2;
	if (!strcmp(argv[1], "ptrace")) {
		pid_t child = fork();

		if (child == 0) {
			pause();
			_exit(0);
		}
		r = ptrace(PTRACE_ATTACH, child, 0, 0);
		printf("ptrace %ld %s\n", r, r ? strerror(errno) : "ok");
		kill(child, SIGKILL);
		waitpid(child, NULL, 0);
	} else if (!strcmp(argv[1], "bpf")) {
		char attr[128] = {0};

		r = syscall(SYS_bpf, 0, attr, sizeof(attr));
		printf("bpf %ld %s\n", r, r < 0 ? strerror(errno) : "ok");
	} else if (!strcmp(argv[1], "setuid")) {
		r = setuid(65534);
		printf("setuid %ld %s\n", r, r ? strerror(errno) : "ok");
	} else if (!strcmp(argv[1], "module")) {
		r = syscall(SYS_finit_module, -1, "", 0);
		printf("module %ld %s\n", r, r ? strerror(errno) : "ok");
	} else {
		return 2;
	}
	return 0;
}
