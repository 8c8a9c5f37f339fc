/* The container-escape battery's probe: one static binary, run inside a container.
 *
 * `probe NAME...` (or `probe all`) attempts each named escape step with the
 * real system call and prints one line per check:
 *
 *     NAME blocked <errno name>     the kernel refused (the safe outcome)
 *     NAME ALLOWED [detail]         the step worked: the container could do it
 *
 * Some checks are observations rather than attempts (capability sets, the
 * seccomp mode, /dev contents, open fds); they print "ok" or "WEAK detail".
 * tests/security_battery.py runs it and judges the lines; every check is a
 * step an attacker would take, so a default container must print no ALLOWED
 * or WEAK line.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/if_alg.h>
#include <linux/io_uring.h>
#include <linux/kcmp.h>
#include <linux/perf_event.h>
#include <linux/userfaultfd.h>
#include <linux/vm_sockets.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
#ifndef SYS_fsopen
#define SYS_fsopen 430
#endif
#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif
#ifndef OPEN_TREE_CLONE
#define OPEN_TREE_CLONE 1
#endif

static int failures;

/* Refusals: the call never did its work.  Any other error means it reached the
 * kernel's real work and failed only on our harmless arguments. */
static int refused(int err, int lenient)
{
    if (err == EPERM || err == EACCES || err == ENOSYS || err == EROFS || err == ETXTBSY)
        return 1;
    /* For files: absent or empty (masked) is as good as refused. */
    return lenient && (err == ENOENT || err == ENODATA || err == ENXIO || err == ENODEV);
}

static void judge(const char *name, long ret, int err, const char *detail, int lenient)
{
    const char *ename = strerrorname_np(err) ? strerrorname_np(err) : "?";
    if (ret < 0 && refused(err, lenient))
        printf("%s blocked %s\n", name, ename);
    else {
        if (ret < 0)
            printf("%s ALLOWED reached the kernel (%s) %s\n", name, ename, detail ? detail : "");
        else
            printf("%s ALLOWED %s\n", name, detail ? detail : "");
        failures++;
    }
}

static void verdict(const char *name, long ret, int err, const char *detail)
{
    judge(name, ret, err, detail, 0);
}

static void file_verdict(const char *name, long ret, int err, const char *detail)
{
    judge(name, ret, err, detail, 1);
}

#define TRY(name, expr) do { errno = 0; long r_ = (long)(expr); verdict(name, r_, errno, NULL); } while (0)

static void observe(const char *name, int weak, const char *detail)
{
    if (weak) {
        printf("%s WEAK %s\n", name, detail);
        failures++;
    } else
        printf("%s ok %s\n", name, detail);
}

/* FIELD of /proc/self/status as a number in BASE; MISSING if there is none. */
static unsigned long long status_field(const char *field, int base, unsigned long long missing)
{
    char line[256];
    unsigned long long value = missing;
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return value;
    size_t n = strlen(field);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, field, n) && line[n] == ':')
            value = strtoull(line + n + 1, NULL, base);
    fclose(f);
    return value;
}

static unsigned long long status_hex(const char *field)
{
    return status_field(field, 16, ~0ULL);
}

static long status_num(const char *field)
{
    return (long)status_field(field, 10, (unsigned long long)-1);
}

/* ---------------------------------------------------------------- checks */
static void caps(void)
{
    /* Podman's eleven: CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP
     * NET_BIND_SERVICE SYS_CHROOT SETFCAP. */
    const unsigned long long allowed = (1ULL << 0) | (1ULL << 1) | (1ULL << 3) | (1ULL << 4) |
        (1ULL << 5) | (1ULL << 6) | (1ULL << 7) | (1ULL << 8) | (1ULL << 10) | (1ULL << 18) |
        (1ULL << 31);
    char detail[160];
    unsigned long long eff = status_hex("CapEff"), bnd = status_hex("CapBnd");
    unsigned long long inh = status_hex("CapInh"), amb = status_hex("CapAmb");
    snprintf(detail, sizeof detail, "CapEff=%016llx CapBnd=%016llx", eff, bnd);
    observe("caps-bounding", (bnd & ~allowed) != 0, detail);
    observe("caps-effective", (eff & ~allowed) != 0, detail);
    snprintf(detail, sizeof detail, "CapInh=%016llx CapAmb=%016llx", inh, amb);
    observe("caps-inheritable-ambient", inh != 0 || amb != 0, detail);
}

static void seccomp_mode(void)
{
    char detail[64];
    long mode = status_num("Seccomp");
    snprintf(detail, sizeof detail, "Seccomp=%ld", mode);
    observe("seccomp-mode", mode != 2, detail);
    mode = status_num("NoNewPrivs");
    snprintf(detail, sizeof detail, "NoNewPrivs=%ld", mode);
    observe("no-new-privs", mode != 1, detail);
}

static void keyring(void)
{
    TRY("keyctl", syscall(SYS_keyctl, 1 /* KEYCTL_JOIN_SESSION_KEYRING */, "probe"));
    TRY("add_key", syscall(SYS_add_key, "user", "probe", "x", 1, -3 /* session */));
    TRY("request_key", syscall(SYS_request_key, "user", "probe", NULL, 0));
}

static long clone_child(unsigned long flags)
{
    long pid = syscall(SYS_clone, flags | SIGCHLD, NULL, NULL, NULL, NULL);
    if (pid == 0)
        _exit(0);
    if (pid > 0)
        waitpid(pid, NULL, 0);
    return pid;
}

/* unshare(FLAGS) in a child; its result as ret/errno of this process. */
static long in_child_unshare(int flags)
{
    pid_t pid = fork();
    if (pid == 0)
        _exit(unshare(flags) == 0 ? 0 : 100 + errno);
    int status = 0;
    waitpid(pid, &status, 0);
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 255;
    if (code == 0)
        return 0;
    errno = code >= 100 ? code - 100 : EIO;
    return -1;
}

static void userns(void)
{
    /* In children: a namespace that gets created must not change the later checks. */
    TRY("unshare-user", in_child_unshare(CLONE_NEWUSER));
    TRY("unshare-mount", in_child_unshare(CLONE_NEWNS));
    TRY("clone-newuser", clone_child(CLONE_NEWUSER));
    TRY("clone-newns", clone_child(CLONE_NEWNS));
    struct { uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls; }
        args = { .flags = CLONE_NEWUSER, .exit_signal = SIGCHLD };
    errno = 0;
    long pid = syscall(SYS_clone3, &args, sizeof args);
    if (pid == 0)
        _exit(0);
    if (pid > 0)
        waitpid(pid, NULL, 0);
    verdict("clone3-newuser", pid, errno, NULL);
}

static void try_mount(const char *name, const char *src, const char *target, const char *type,
                      unsigned long flags, const char *data)
{
    errno = 0;
    long r = mount(src, target, type, flags, data);
    verdict(name, r, errno, NULL);
    if (r == 0)
        umount2(target, MNT_DETACH);
}

static void mounts(void)
{
    const char *dir = "/tmp/.probe-mnt";
    mkdir(dir, 0700);
    try_mount("mount-tmpfs", "none", dir, "tmpfs", 0, NULL);
    try_mount("mount-cgroup-v1", "cgroup", dir, "cgroup", 0, "memory");
    try_mount("mount-cgroup2", "cgroup2", dir, "cgroup2", 0, NULL);
    try_mount("mount-proc", "proc", dir, "proc", 0, NULL);
    try_mount("bind-mount-root", "/", dir, NULL, MS_BIND, NULL);
    /* Paths that do not exist: a call that gets past the filter fails harmlessly. */
    TRY("umount", umount2("/nonexistent-probe", MNT_DETACH));
    TRY("pivot_root", syscall(SYS_pivot_root, "/nonexistent-probe", "/nonexistent-probe"));
    errno = 0;
    long fd = syscall(SYS_open_tree, AT_FDCWD, "/", OPEN_TREE_CLONE);
    verdict("open_tree", fd, errno, NULL);
    if (fd >= 0)
        close((int)fd);
    errno = 0;
    fd = syscall(SYS_fsopen, "tmpfs", 0);
    verdict("fsopen", fd, errno, NULL);
    if (fd >= 0)
        close((int)fd);
    TRY("move_mount", syscall(SYS_move_mount, AT_FDCWD, "/nonexistent-probe", AT_FDCWD, dir, 0));
    rmdir(dir);
}

static void release_agent(void)
{
    /* CVE-2022-0492: a writable release_agent in a v1 hierarchy runs as host root. */
    const char *paths[] = { "/sys/fs/cgroup/memory/release_agent", "/sys/fs/cgroup/release_agent",
                            "/sys/fs/cgroup/rdma/release_agent", "/sys/fs/cgroup/pids/release_agent" };
    int found = 0;
    for (size_t i = 0; i < sizeof paths / sizeof *paths; i++) {
        int fd = open(paths[i], O_WRONLY);
        if (fd >= 0) {
            close(fd);
            file_verdict("cgroup-release-agent", 0, 0, paths[i]);
            return;
        }
        if (errno != ENOENT)
            found = errno;
    }
    file_verdict("cgroup-release-agent", -1, found ? found : ENOENT, NULL);
}

static void namespaces_join(void)
{
    int fd = open("/proc/self/ns/net", O_RDONLY);
    TRY("setns", setns(fd, 0));
    if (fd >= 0)
        close(fd);
}

static void kernel_interfaces(void)
{
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.map_type = BPF_MAP_TYPE_ARRAY;
    attr.key_size = 4;
    attr.value_size = 4;
    attr.max_entries = 1;
    TRY("bpf", syscall(SYS_bpf, BPF_MAP_CREATE, &attr, sizeof attr));
    struct perf_event_attr pe;
    memset(&pe, 0, sizeof pe);
    pe.type = PERF_TYPE_SOFTWARE;
    pe.size = sizeof pe;
    pe.config = PERF_COUNT_SW_CPU_CLOCK;
    TRY("perf_event_open", syscall(SYS_perf_event_open, &pe, 0, -1, -1, 0));
    TRY("userfaultfd", syscall(SYS_userfaultfd, O_CLOEXEC));
    struct io_uring_params params;
    memset(&params, 0, sizeof params);
    TRY("io_uring_setup", syscall(SYS_io_uring_setup, 4, &params));
    TRY("socket-af-alg", socket(AF_ALG, SOCK_SEQPACKET, 0));
    TRY("socket-af-vsock", socket(AF_VSOCK, SOCK_STREAM, 0));
    TRY("init_module", syscall(SYS_init_module, "", 0, ""));
    TRY("finit_module", syscall(SYS_finit_module, 0, "", 0));
    TRY("delete_module", syscall(SYS_delete_module, "nsbox_probe_absent", O_NONBLOCK));
    /* Invalid flags: a kexec_load that gets through fails with EINVAL, loading nothing. */
    TRY("kexec_load", syscall(SYS_kexec_load, 0, 0, NULL, 0xdead0000UL));
    TRY("kexec_file_load", syscall(SYS_kexec_file_load, -1, -1, 0, "", 0xdead0000UL));
    /* LINUX_REBOOT_CMD_CAD_OFF: even if allowed, it only changes Ctrl-Alt-Del handling. */
    TRY("reboot", syscall(SYS_reboot, 0xfee1dead, 672274793, 0, NULL));
    TRY("swapon", syscall(SYS_swapon, "/nonexistent-probe", 0));
}

static void clock_host(void)
{
    /* Out-of-range nanoseconds: a call that gets through fails with EINVAL. */
    struct timespec bad = { .tv_sec = 0, .tv_nsec = 2000000000L };
    TRY("clock_settime", syscall(SYS_clock_settime, CLOCK_REALTIME, &bad));
    struct timeval badtv = { .tv_sec = 0, .tv_usec = 2000000L };
    TRY("settimeofday", syscall(SYS_settimeofday, &badtv, NULL));
    TRY("sethostname", sethostname("escaped", 7));
    TRY("setdomainname", setdomainname("escaped", 7));
    char buf[256];
    TRY("syslog-read", syscall(SYS_syslog, 3 /* SYSLOG_ACTION_READ_ALL */, buf, (int)sizeof buf));
}

static void kallsyms(void)
{
    /* Masked (empty) or zeroed addresses are safe; real addresses leak the kernel layout. */
    FILE *f = fopen("/proc/kallsyms", "r");
    if (!f) {
        file_verdict("kallsyms-addresses", -1, errno, NULL);
        return;
    }
    char line[256];
    int leaked = 0, lines = 0;
    while (fgets(line, sizeof line, f) && lines < 1000) {
        lines++;
        if (strtoull(line, NULL, 16) != 0)
            leaked = 1;
    }
    fclose(f);
    observe("kallsyms-addresses", leaked, leaked ? "kernel addresses readable" : "no addresses");
}

static void handles(void)
{
    struct { unsigned int handle_bytes; int handle_type; unsigned char f_handle[128]; } h;
    memset(&h, 0, sizeof h);
    h.handle_bytes = 8;
    h.handle_type = 1;
    TRY("open_by_handle_at", syscall(SYS_open_by_handle_at, AT_FDCWD, &h, O_RDONLY));
    TRY("personality-read-implies-exec", personality(READ_IMPLIES_EXEC));
    personality(PER_LINUX);
}

static void ptrace_others(void)
{
    errno = 0;
    long r = ptrace(PTRACE_ATTACH, 1, NULL, NULL);
    verdict("ptrace-attach-pid1", getpid() == 1 ? -1 : r, getpid() == 1 ? EPERM : errno,
            NULL);
    if (r == 0) {
        /* Detach only from the stop the attach caused, and resume: a PID 1
         * left stopped would keep the container from ever exiting. */
        int status;
        waitpid(1, &status, __WALL);
        ptrace(PTRACE_DETACH, 1, NULL, NULL);
        kill(1, SIGCONT);
    }
    pid_t child = fork();
    if (child == 0) {
        pause();
        _exit(0);
    }
    errno = 0;
    r = ptrace(PTRACE_ATTACH, child, NULL, NULL);
    verdict("ptrace-attach-child", r, errno, NULL);
    TRY("kcmp", syscall(SYS_kcmp, getpid(), 1, KCMP_FILE, 0, 0));
    char buf[16];
    struct iovec local = { buf, sizeof buf }, remote = { (void *)0x400000, sizeof buf };
    TRY("process_vm_readv", syscall(SYS_process_vm_readv, 1, &local, 1, &remote, 1, 0));
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
}

static void network(void)
{
    TRY("socket-raw", socket(AF_INET, SOCK_RAW, IPPROTO_ICMP));
    TRY("socket-packet", socket(AF_PACKET, SOCK_RAW, 0));
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "lo");
    ifr.ifr_mtu = 1280;
    TRY("net-admin-set-mtu", ioctl(s, SIOCSIFMTU, &ifr));
    close(s);
}

static void devices(void)
{
    TRY("mknod-block", mknod("/tmp/.probe-sda", S_IFBLK | 0600, makedev(8, 0)));
    unlink("/tmp/.probe-sda");
    TRY("mknod-char-mem", mknod("/tmp/.probe-mem", S_IFCHR | 0600, makedev(1, 1)));
    unlink("/tmp/.probe-mem");
    /* Only the standard devices may be in /dev. */
    const char *standard[] = { ".", "..", "null", "zero", "full", "random", "urandom", "tty",
                               "ptmx", "pts", "shm", "mqueue", "fd", "stdin", "stdout", "stderr",
                               "console", "core", NULL };
    DIR *d = opendir("/dev");
    char extra[512] = "";
    struct dirent *e;
    while (d && (e = readdir(d))) {
        int known = 0;
        for (int i = 0; standard[i]; i++)
            known |= !strcmp(e->d_name, standard[i]);
        if (!known && strlen(extra) + strlen(e->d_name) + 2 < sizeof extra) {
            strcat(extra, e->d_name);
            strcat(extra, " ");
        }
    }
    if (d)
        closedir(d);
    observe("dev-contents", extra[0] != 0, extra[0] ? extra : "standard devices only");
    /* A block device of the host, even if a node existed, must not open. */
    struct stat st;
    if (stat("/proc/self/root", &st) == 0) {
        char node[] = "/tmp/.probe-blk";
        long r = mknod(node, S_IFBLK | 0600, st.st_dev);
        int err = errno;
        if (r == 0) {
            errno = 0;
            r = open(node, O_RDONLY);
            err = errno;
            if (r >= 0)
                close((int)r);
            unlink(node);
        }
        verdict("open-host-block-device", r, err, NULL);
    }
}

static void read_masked(const char *name, const char *path)
{
    char buf[64];
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        file_verdict(name, -1, errno, NULL);
        return;
    }
    ssize_t n = read(fd, buf, sizeof buf);
    int err = errno;
    close(fd);
    if (n <= 0)
        file_verdict(name, -1, n < 0 ? err : ENODATA, NULL);
    else
        file_verdict(name, 0, 0, path);
}

/* Writes back exactly what the file holds: a write that gets through changes
 * nothing, even on a host whose /proc/sys or /sys the container can reach. */
static void rewrite_file(const char *name, const char *path)
{
    char value[4096];
    int fd = open(path, O_RDONLY);
    ssize_t len = fd >= 0 ? read(fd, value, sizeof value - 1) : -1;
    if (fd >= 0)
        close(fd);
    if (len <= 0)
        len = 0;
    if (len == 0)
        value[len++] = '\n';
    fd = open(path, O_WRONLY);
    if (fd < 0) {
        file_verdict(name, -1, errno, NULL);
        return;
    }
    errno = 0;
    ssize_t n = write(fd, value, (size_t)len);
    int err = errno;
    close(fd);
    file_verdict(name, n < 0 ? -1 : 0, err, path);
}

static void proc_sys(void)
{
    read_masked("read-proc-kcore", "/proc/kcore");
    read_masked("read-proc-keys", "/proc/keys");
    read_masked("read-proc-timer-list", "/proc/timer_list");
    read_masked("read-sys-firmware", "/sys/firmware/dmi/tables/DMI");
    /* Write-only: a request for help ('h') only prints the key list to the kernel log. */
    int fd = open("/proc/sysrq-trigger", O_WRONLY);
    if (fd < 0)
        file_verdict("write-sysrq-trigger", -1, errno, NULL);
    else {
        errno = 0;
        ssize_t n = write(fd, "h", 1);
        file_verdict("write-sysrq-trigger", n < 0 ? -1 : 0, errno, NULL);
        close(fd);
    }
    rewrite_file("write-core-pattern", "/proc/sys/kernel/core_pattern");
    rewrite_file("write-proc-sys-vm", "/proc/sys/vm/swappiness");
    rewrite_file("write-sys-kernel-uevent-helper", "/sys/kernel/uevent_helper");
    rewrite_file("write-sys-module-param", "/sys/module/printk/parameters/time");
}

static void fds(void)
{
    /* Only stdio, plus the directory stream reading /proc/self/fd. */
    DIR *d = opendir("/proc/self/fd");
    char extra[512] = "";
    struct dirent *e;
    while (d && (e = readdir(d))) {
        int fd = atoi(e->d_name);
        if (e->d_name[0] == '.' || fd <= 2 || fd == dirfd(d))
            continue;
        char target[256] = "", link[64];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, target, sizeof target - 1);
        if (n > 0)
            target[n] = 0;
        if (strlen(extra) + strlen(target) + 16 < sizeof extra) {
            char item[300];
            snprintf(item, sizeof item, "%d->%s ", fd, target);
            strcat(extra, item);
        }
    }
    if (d)
        closedir(d);
    observe("fd-hygiene", extra[0] != 0, extra[0] ? extra : "stdio only");
    char cwd[512] = "";
    ssize_t n = readlink("/proc/self/cwd", cwd, sizeof cwd - 1);
    if (n > 0)
        cwd[n] = 0;
    observe("cwd-inside-root", cwd[0] != '/', cwd);
}

static void self_exe(void)
{
    /* CVE-2019-5736: overwrite the binary behind /proc/self/exe (here our own; the
     * runtime's is never reachable). */
    TRY("write-proc-self-exe", open("/proc/self/exe", O_WRONLY));
    TRY("write-proc-1-exe", open("/proc/1/exe", O_WRONLY));
}

static void tiocsti(void)
{
    char c = 'x';
    int fd = open("/dev/tty", O_RDWR | O_NOCTTY);
    int target = fd >= 0 ? fd : 0;
    errno = 0;
    long r = ioctl(target, TIOCSTI, &c);
    int err = errno;
    if (fd >= 0)
        close(fd);
    /* ENOTTY means the filter let the call through to a non-terminal. */
    if (r < 0 && err == ENOTTY)
        observe("tiocsti", 1, "reached the kernel (ENOTTY): not filtered");
    else
        verdict("tiocsti", r, err, NULL);
}

static void forkbomb(void)
{
    /* The pids limit must stop it: fork fails with EAGAIN before the host suffers. */
    int n = 0, err = 0;
    pid_t pids[8192];
    for (; n < 8192; n++) {
        pid_t p = fork();
        if (p == 0) {
            pause();
            _exit(0);
        }
        if (p < 0) {
            err = errno;
            break;
        }
        pids[n] = p;
    }
    for (int i = 0; i < n; i++)
        kill(pids[i], SIGKILL);
    for (int i = 0; i < n; i++)
        waitpid(pids[i], NULL, 0);
    char detail[64];
    snprintf(detail, sizeof detail, "%d processes", n);
    if (err)
        printf("fork-bomb blocked %s after %d processes\n", strerrorname_np(err), n);
    else
        verdict("fork-bomb", 0, 0, detail);
}

static void fill_shm(void)
{
    int fd = open("/dev/shm/.probe-fill", O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) {
        verdict("fill-shm", -1, errno, NULL);
        return;
    }
    static char block[1 << 20];
    memset(block, 'x', sizeof block);
    long total = 0;
    int err = 0;
    for (int i = 0; i < 4096; i++) {
        ssize_t n = write(fd, block, sizeof block);
        if (n < 0) {
            err = errno;
            break;
        }
        total += n;
    }
    close(fd);
    unlink("/dev/shm/.probe-fill");
    if (err)
        printf("fill-shm blocked %s after %ld MiB\n", strerrorname_np(err), total >> 20);
    else
        verdict("fill-shm", 0, 0, "4 GiB written");
}

static void membomb(void)
{
    /* Run only under a memory limit: the kernel must kill us, never the host. */
    size_t chunk = 16 << 20;
    for (int i = 0; i < 4096; i++) {
        char *p = mmap(NULL, chunk, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            printf("memory-bomb blocked %s\n", strerrorname_np(errno));
            return;
        }
        memset(p, 1, chunk);
    }
    verdict("memory-bomb", 0, 0, "64 GiB touched");
}

struct check {
    const char *name;
    void (*run)(void);
    int in_all;
};

static const struct check checks[] = {
    { "caps", caps, 1 },           { "seccomp", seccomp_mode, 1 },
    { "keyring", keyring, 1 },     { "userns", userns, 1 },
    { "mounts", mounts, 1 },       { "release-agent", release_agent, 1 },
    { "setns", namespaces_join, 1 }, { "kernel", kernel_interfaces, 1 },
    { "clock-host", clock_host, 1 }, { "kallsyms", kallsyms, 1 },
    { "handles", handles, 1 },     { "ptrace", ptrace_others, 1 },
    { "network", network, 1 },     { "devices", devices, 1 },
    { "proc-sys", proc_sys, 1 },   { "fds", fds, 1 },
    { "self-exe", self_exe, 1 },   { "tiocsti", tiocsti, 1 },
    { "fork-bomb", forkbomb, 0 },  { "fill-shm", fill_shm, 0 },
    { "memory-bomb", membomb, 0 },
};

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) {
        fprintf(stderr, "usage: probe all|CHECK...\n");
        return 2;
    }
    for (int a = 1; a < argc; a++) {
        int found = 0;
        for (size_t i = 0; i < sizeof checks / sizeof *checks; i++) {
            if (!strcmp(argv[a], checks[i].name) || (!strcmp(argv[a], "all") && checks[i].in_all)) {
                checks[i].run();
                found = 1;
            }
        }
        if (!found) {
            fprintf(stderr, "probe: unknown check %s\n", argv[a]);
            return 2;
        }
    }
    return failures ? 1 : 0;
}
