/* The idle half of the nsbox container monitor (see monitor.py).
 *
 * The Python monitor sets a container up, then execs this to wait: it
 * copies the container's stdout/stderr pipes into the log file (json-file
 * or k8s-file lines, rotated by size) until the init exits, reaps it, and
 * execs the Python monitor again with the exit code appended to its argv.
 * A Python process costs several MiB per container; this costs a few
 * hundred KiB.
 *
 * A log that cannot be written (a full disk) never stops the container nor
 * spins the loop: the output is read and dropped, counted in LOG.dropped
 * ("LINES BYTES", rewritten in place; inspect's State.LogDropped), and a
 * write is tried again after a back-off (100 ms doubling to 1 s) once the
 * filesystem has LOW_WATER free.  Meanwhile the pipes are drained at most
 * every DRAIN_MS, so a flooding container is slowed, not blocked.  Every
 * CHECK_EVERY bytes written the free space is looked at too, so the log
 * leaves the filesystem's last LOW_WATER to the metadata.  monitor_log.py's
 * LogWriter does the same.
 *
 * usage: monitor-loop INIT_PID OUT_FD ERR_FD LOG DRIVER MAX_SIZE MAX_FILE CMD [ARGS...]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_LINE (16 * 1024)
#define LOW_WATER (2LL << 20)       /* resume writing with this much free */
#define CHECK_EVERY (256LL * 1024)  /* look at the free space this often (bytes written) */
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 1000
#define DRAIN_MS 20                 /* while dropping: read the pipes at most this often */

static const char *log_path, *driver;
static char drops_path[4096];
static long long max_size, size;
static int max_file, log_fd = -1;

/* Dropping: the log cannot be written; output is counted and discarded. */
static int dropping, drop_fd = -1;
static long long dropped_lines, dropped_bytes, saved_lines = -1, saved_bytes = -1;
static long long since_check, next_try_ms, backoff_ms = BACKOFF_MIN_MS;

struct stream {
    int fd;
    const char *name;
    size_t len;
    char buf[MAX_LINE];
};

static void open_log(void) {
    struct stat st;
    log_fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    size = (log_fd >= 0 && fstat(log_fd, &st) == 0) ? st.st_size : 0;
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* LOG.dropped: "LINES BYTES", a fixed-width record rewritten in place (no new blocks). */
static void open_drops(void) {
    char text[64] = {0};
    drop_fd = open(drops_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (drop_fd < 0)
        return;
    if (pread(drop_fd, text, sizeof text - 1, 0) > 0)
        sscanf(text, "%lld %lld", &dropped_lines, &dropped_bytes);
    saved_lines = saved_bytes = -1;
}

static void save_drops(void) {
    char text[64];
    int n;
    if (dropped_lines == saved_lines && dropped_bytes == saved_bytes)
        return;
    if (drop_fd < 0)
        open_drops();
    if (drop_fd < 0)
        return;
    n = snprintf(text, sizeof text, "%20lld %20lld\n", dropped_lines, dropped_bytes);
    if (pwrite(drop_fd, text, (size_t)n, 0) == n) {
        saved_lines = dropped_lines;
        saved_bytes = dropped_bytes;
    }
}

/* Is there LOW_WATER free on the log's filesystem? */
static int room(void) {
    struct statvfs st;
    if (log_fd < 0 || fstatvfs(log_fd, &st) != 0)
        return 0;
    return (long long)st.f_bavail * (long long)st.f_frsize >= LOW_WATER;
}

static void start_dropping(void) {
    if (!dropping)
        backoff_ms = BACKOFF_MIN_MS;
    else if ((backoff_ms *= 2) > BACKOFF_MAX_MS)
        backoff_ms = BACKOFF_MAX_MS;
    dropping = 1;
    next_try_ms = now_ms() + backoff_ms;
    save_drops();
}

/* While dropping: is it time to write again?  (Tries at most once per back-off.) */
static int may_write(void) {
    if (!dropping)
        return 1;
    if (now_ms() < next_try_ms)
        return 0;
    if (log_fd < 0)
        open_log();
    if (!room()) {
        start_dropping();
        return 0;
    }
    return 1;
}

static void drop(long long lines, long long bytes) {
    dropped_lines += lines;
    dropped_bytes += bytes;
}

static void rotate(void) {
    char older[4096], newer[4096];
    close(log_fd);
    if (max_file <= 1) {
        truncate(log_path, 0);
    } else {
        for (int n = max_file - 1; n > 0; n--) {
            snprintf(older, sizeof older, "%s.%d", log_path, n);
            if (n == 1)
                snprintf(newer, sizeof newer, "%s", log_path);
            else
                snprintf(newer, sizeof newer, "%s.%d", log_path, n - 1);
            rename(newer, older);
        }
    }
    open_log();
}

/* 0, or -1 with nothing of DATA left in the log (a part written is cut off again). */
static int write_all(const char *data, size_t len) {
    long long start = size;
    size_t done = 0;
    while (done < len) {
        ssize_t n = log_fd < 0 ? -1 : write(log_fd, data + done, len - done);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (done > 0)
                ftruncate(log_fd, start);
            return -1;
        }
        done += (size_t)n;
    }
    return 0;
}

/* One log line: TEXT (with its newline unless PARTIAL) from stream NAME. */
static void emit(const char *name, const char *text, size_t len, int partial) {
    static char out[MAX_LINE * 6 + 256];
    char stamp[64];
    struct timespec ts;
    struct tm tm;
    size_t o = 0;

    if (!may_write()) {
        drop(1, (long long)len);
        return;
    }
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(stamp + strlen(stamp), sizeof stamp - strlen(stamp), ".%09ldZ", ts.tv_nsec);

    if (strcmp(driver, "k8s-file") == 0) {
        size_t body = (!partial && len > 0 && text[len - 1] == '\n') ? len - 1 : len;
        o = (size_t)snprintf(out, sizeof out, "%s %s %c ", stamp, name, partial ? 'P' : 'F');
        memcpy(out + o, text, body);
        o += body;
        out[o++] = '\n';
    } else {
        o = (size_t)snprintf(out, sizeof out, "{\"log\":\"");
        for (size_t i = 0; i < len; i++) {
            unsigned char c = (unsigned char)text[i];
            if (c == '"' || c == '\\') {
                out[o++] = '\\';
                out[o++] = (char)c;
            } else if (c == '\n') {
                out[o++] = '\\';
                out[o++] = 'n';
            } else if (c == '\r') {
                out[o++] = '\\';
                out[o++] = 'r';
            } else if (c == '\t') {
                out[o++] = '\\';
                out[o++] = 't';
            } else if (c < 0x20) {
                o += (size_t)snprintf(out + o, 7, "\\u%04x", c);
            } else {
                out[o++] = (char)c;
            }
        }
        o += (size_t)snprintf(out + o, sizeof out - o, "\",\"stream\":\"%s\",\"time\":\"%s\"}\n",
                              name, stamp);
    }
    if (max_size > 0 && size > 0 && size + (long long)o > max_size)
        rotate();
    if ((since_check += (long long)o) >= CHECK_EVERY) {
        since_check = 0;
        if (!room()) {  /* leave the rest of the filesystem to the metadata */
            drop(1, (long long)len);
            start_dropping();
            return;
        }
    }
    if (write_all(out, o) < 0) {
        drop(1, (long long)len);
        start_dropping();
        return;
    }
    size += (long long)o;
    if (dropping) {  /* written again: say so in the counts' file */
        dropping = 0;
        save_drops();
    }
}

/* Read what FD has; returns 0 at EOF (the stream is then closed and flushed). */
static int pump(struct stream *s) {
    char chunk[65536];
    ssize_t n = read(s->fd, chunk, sizeof chunk);
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return 1;
    if (n <= 0) {
        if (s->len)
            emit(s->name, s->buf, s->len, 1);
        s->len = 0;
        close(s->fd);
        s->fd = -1;
        return 0;
    }
    if (dropping && now_ms() < next_try_ms) {
        /* Not writing now: count what came (lines by their newlines) and discard it. */
        long long lines = 0;
        for (const char *p = chunk; (p = memchr(p, '\n', (size_t)(chunk + n - p))); p++)
            lines++;
        drop(lines, (long long)n + (long long)s->len);  /* a line begun before goes too */
        s->len = 0;
        return 1;
    }
    for (ssize_t i = 0; i < n; i++) {
        s->buf[s->len++] = chunk[i];
        if (chunk[i] == '\n') {
            emit(s->name, s->buf, s->len, 0);
            s->len = 0;
        } else if (s->len == MAX_LINE) {
            emit(s->name, s->buf, s->len, 1);
            s->len = 0;
        }
    }
    return 1;
}

int main(int argc, char **argv) {
    static struct stream out = {.name = "stdout"}, err = {.name = "stderr"};
    struct pollfd fds[3];
    pid_t init_pid;
    int pidfd, status = 0, code = 255;
    char code_text[16];

    if (argc < 9) {
        fprintf(stderr, "usage: %s INIT_PID OUT_FD ERR_FD LOG DRIVER MAX_SIZE MAX_FILE CMD...\n",
                argv[0]);
        return 2;
    }
    init_pid = (pid_t)atoi(argv[1]);
    out.fd = atoi(argv[2]);
    err.fd = atoi(argv[3]);
    log_path = argv[4];
    driver = argv[5];
    max_size = atoll(argv[6]);
    max_file = atoi(argv[7]);
    snprintf(drops_path, sizeof drops_path, "%s.dropped", log_path);
    open_log();
    open_drops();
    save_drops();  /* its block is taken now, while there is room */

    pidfd = (int)syscall(SYS_pidfd_open, init_pid, 0);
    for (;;) {
        int n = 0, exited = pidfd < 0;
        if (!exited) {
            fds[n].fd = pidfd;
            fds[n++].events = POLLIN;
        }
        if (out.fd >= 0) {
            fds[n].fd = out.fd;
            fds[n++].events = POLLIN;
        }
        if (err.fd >= 0) {
            fds[n].fd = err.fd;
            fds[n++].events = POLLIN;
        }
        if (exited)
            break;
        if (poll(fds, (nfds_t)n, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        for (int i = 0; i < n; i++) {
            if (!fds[i].revents)
                continue;
            if (fds[i].fd == pidfd)
                exited = 1;
            else if (fds[i].fd == out.fd)
                pump(&out);
            else if (fds[i].fd == err.fd)
                pump(&err);
        }
        if (exited)
            break;
        if (dropping) {  /* let the pipes fill: a flood costs a read per DRAIN_MS, not a spin */
            struct timespec pause = {0, DRAIN_MS * 1000000L};
            nanosleep(&pause, NULL);
        }
    }
    /* The init is gone and with it its pid namespace: the pipes reach EOF soon. */
    for (int round = 0; round < 10 && (out.fd >= 0 || err.fd >= 0); round++) {
        int n = 0;
        if (out.fd >= 0) {
            fds[n].fd = out.fd;
            fds[n++].events = POLLIN;
        }
        if (err.fd >= 0) {
            fds[n].fd = err.fd;
            fds[n++].events = POLLIN;
        }
        if (poll(fds, (nfds_t)n, 200) <= 0)
            break;
        for (int i = 0; i < n; i++) {
            if (!fds[i].revents)
                continue;
            if (fds[i].fd == out.fd)
                pump(&out);
            else if (fds[i].fd == err.fd)
                pump(&err);
        }
    }
    if (out.len)
        emit(out.name, out.buf, out.len, 1);
    if (err.len)
        emit(err.name, err.buf, err.len, 1);
    if (out.fd >= 0)
        close(out.fd);
    if (err.fd >= 0)
        close(err.fd);
    save_drops();
    if (drop_fd >= 0)
        close(drop_fd);
    close(log_fd);
    if (pidfd >= 0)
        close(pidfd);

    if (waitpid(init_pid, &status, 0) == init_pid) {
        if (WIFEXITED(status))
            code = WEXITSTATUS(status);
        else if (WIFSIGNALED(status))
            code = 128 + WTERMSIG(status);
    }
    while (waitpid(-1, NULL, WNOHANG) > 0)
        ;
    snprintf(code_text, sizeof code_text, "%d", code);
    {
        char **next = calloc((size_t)(argc - 8 + 2), sizeof *next);
        int k = 0;
        if (!next)
            return 1;
        for (int i = 8; i < argc; i++)
            next[k++] = argv[i];
        next[k++] = code_text;
        next[k] = NULL;
        execv(next[0], next);
    }
    perror("monitor-loop: exec");
    return 1;
}
