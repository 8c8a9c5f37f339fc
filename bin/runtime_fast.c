/*
 * `nsbox-runtime start` and `delete` of a plain container, without Python.
 *
 * Why: starting the interpreter costs ~6 ms on the reference host, more
 * than runc's whole `start` or `delete` (~4.5 ms), and those two commands
 * otherwise do little: write a byte to the exec fifo, or remove a few
 * directories.  Clients call them for every container (create, start,
 * delete), so the compiled launcher of nsbox-runtime does them itself when
 * the container is the plain case, and hands everything else to Python.
 *
 * The plain case is what `create` describes in <root>/<id>/fastpath (written
 * by nsbox/runtime/state.py, which owns the format, next to state.json, only
 * for a container without poststart or poststop hooks and not placed by
 * systemd):
 *
 *   nsbox-fastpath 1
 *   pid N                the container's init
 *   start N              its start time (field 22 of /proc/N/stat)
 *   freezer PATH         the v1 freezer cgroup, if any
 *   unified PATH         the cgroup2 directory, if any
 *   rmdir PATH           a cgroup directory delete removes (one line each)
 *   rmdir-parent PATH    a parent create made, removed when empty (deepest first)
 *
 * Anything else goes to the Python CLI, which then does the whole command as
 * it always does: another command, a flag this file does not know, --debug,
 * --help, a container without the file, a `start` of a container that is not
 * `created`, a `delete` of one that is not `stopped` (--force kills first),
 * a cgroup that still holds processes, any unexpected error.  Every step
 * taken here before handing over is one Python's command repeats without
 * harm (it tolerates directories already gone), and nothing is handed over
 * once `start` has written its byte: from there this file reports the
 * outcome itself, on stderr and in --log, as nsbox/runtime/cli/_log.py does.
 * The rules (status, lock, the wait for the exec) are those of
 * nsbox/runtime/state.py and container.py; tests/test_runtime_fast.py runs
 * each case both ways.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "runtime_fast.h"

#define RECORD_FILE "fastpath"
#define RECORD_MAGIC "nsbox-fastpath 1"
#define MAX_DIRS 64
#define PF_EXITING 0x4

enum status { STOPPED, CREATED, RUNNING, PAUSED };

struct options {
    const char *root, *log_path, *log_format, *command, *id;
};

struct record {
    long pid;
    unsigned long long start_time;
    const char *freezer, *unified;
    const char *leaves[MAX_DIRS], *parents[MAX_DIRS];
    int n_leaves, n_parents;
    char text[65536];
};

/* ------------------------------------------------------------ the command line */

static int is_true(const char *value, int *out)
{
    if (strcasecmp(value, "true") == 0 || strcmp(value, "1") == 0)
        *out = 1;
    else if (strcasecmp(value, "false") == 0 || strcmp(value, "0") == 0)
        *out = 0;
    else
        return 0;
    return 1;
}

/* A flag argument ("-name", "--name=value"): its name and length, and the
 * value after '=' (NULL without one). */
static const char *split_flag(const char *arg, size_t *len, const char **value)
{
    const char *name = arg + strspn(arg, "-"), *eq = strchr(name, '=');
    *value = eq ? eq + 1 : NULL;
    *len = eq ? (size_t)(eq - name) : strlen(name);
    return name;
}

/* Go-style flags, as nsbox/runtime/cli parses them: 0 when the command line
 * is one for Python (anything unknown, or a flag that changes the output). */
static int parse_args(int argc, char **argv, struct options *opt)
{
    static const char *const global_strings[] = {
        "log", "log-format", "root", "criu", "rootless", "cgroup-manager", NULL};
    const char *cgroup_manager = "";
    int i = 1, n_positional = 0;

    opt->root = "/run/nsbox-runtime";
    opt->log_path = "";
    opt->log_format = "";
    /* Global flags, up to the command. */
    for (; i < argc && argv[i][0] == '-' && argv[i][1] != '\0'; i++) {
        char name[32];
        const char *value;
        size_t len;
        const char *flag = split_flag(argv[i], &len, &value);
        int known = 0, boolean;

        if (len == 0 || len >= sizeof name)
            return 0;
        memcpy(name, flag, len);
        name[len] = '\0';
        if (strcmp(name, "debug") == 0 || strcmp(name, "systemd-cgroup") == 0) {
            if (value && !is_true(value, &boolean))
                return 0;
            if (strcmp(name, "debug") == 0 && (!value || boolean))
                return 0; /* debug lines are Python's */
            continue;
        }
        for (int k = 0; global_strings[k]; k++)
            known |= strcmp(name, global_strings[k]) == 0;
        if (!known)
            return 0; /* --help, --version, a typo: Python answers */
        if (value == NULL) {
            if (++i >= argc)
                return 0;
            value = argv[i];
        }
        if (strcmp(name, "root") == 0)
            opt->root = value;
        else if (strcmp(name, "log") == 0)
            opt->log_path = value;
        else if (strcmp(name, "log-format") == 0)
            opt->log_format = value;
        else if (strcmp(name, "cgroup-manager") == 0)
            cgroup_manager = value;
    }
    if (i >= argc)
        return 0;
    opt->command = argv[i++];
    if (strcmp(opt->command, "start") != 0 && strcmp(opt->command, "delete") != 0)
        return 0;
    if (strcmp(opt->log_format, "") != 0 && strcmp(opt->log_format, "text") != 0
            && strcmp(opt->log_format, "json") != 0)
        return 0;
    if (strcmp(cgroup_manager, "") != 0 && strcmp(cgroup_manager, "cgroupfs") != 0
            && strcmp(cgroup_manager, "systemd") != 0 && strcmp(cgroup_manager, "disabled") != 0)
        return 0;
    /* A root Python would normalise (relative, "." or ".." in it): Python's. */
    if (opt->root[0] != '/' || strstr(opt->root, "/.") != NULL)
        return 0;
    /* The command's flags, anywhere among its arguments: delete's --force
     * matters only for a container that is not stopped, which is Python's. */
    for (; i < argc; i++) {
        const char *arg = argv[i];
        if (arg[0] == '-' && arg[1] != '\0') {
            const char *value;
            size_t len;
            const char *flag = split_flag(arg, &len, &value);
            int boolean;
            if (strcmp(opt->command, "delete") != 0
                    || !((len == 5 && strncmp(flag, "force", 5) == 0)
                         || (len == 1 && flag[0] == 'f')))
                return 0; /* --help, --, unknown flags */
            if (value && !is_true(value, &boolean))
                return 0;
            continue;
        }
        opt->id = arg;
        n_positional++;
    }
    return n_positional == 1;
}

/* nsbox/runtime/state.py's validate_id. */
static int valid_id(const char *id)
{
    static const char alnum[] =
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    size_t len = strlen(id);
    if (len == 0 || len > 1024 || strchr(alnum, id[0]) == NULL)
        return 0;
    for (size_t k = 1; k < len; k++) {
        if (strchr(alnum, id[k]) == NULL && strchr("_+.-", id[k]) == NULL)
            return 0;
    }
    return 1;
}

/* ------------------------------------------------------------ the record */

static int join(char *out, size_t size, const char *dir, const char *name)
{
    int n = snprintf(out, size, "%s/%s", dir, name);
    return n > 0 && (size_t)n < size;
}

static int read_small(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n;
    if (fd < 0)
        return -1;
    n = read(fd, buf, size - 1);
    close(fd);
    if (n < 0)
        return -1;
    buf[n] = '\0';
    return (int)n;
}

static int parse_number(const char *text, unsigned long long *out)
{
    char *end;
    if (*text < '0' || *text > '9')
        return 0;
    errno = 0;
    *out = strtoull(text, &end, 10);
    return errno == 0 && *end == '\0';
}

/* The container's record, or 0: no record (or one this program does not
 * understand), and the command is Python's. */
static int load_record(const char *dir, struct record *rec)
{
    char path[PATH_MAX];
    unsigned long long number;
    char *line, *next;
    int n, have_pid = 0, have_start = 0;

    memset(rec, 0, offsetof(struct record, text));
    if (!join(path, sizeof path, dir, "state.json") || access(path, F_OK) != 0)
        return 0;
    if (!join(path, sizeof path, dir, RECORD_FILE))
        return 0;
    n = read_small(path, rec->text, sizeof rec->text);
    if (n <= 0 || (size_t)n >= sizeof rec->text - 1 || rec->text[n - 1] != '\n')
        return 0;
    for (line = rec->text; *line; line = next) {
        char *value;
        next = strchr(line, '\n');
        *next++ = '\0';
        if (line == rec->text) {
            if (strcmp(line, RECORD_MAGIC) != 0)
                return 0;
            continue;
        }
        value = strchr(line, ' ');
        if (value == NULL)
            return 0;
        *value++ = '\0';
        if (strcmp(line, "pid") == 0 && parse_number(value, &number) && number > 0
                && number < INT_MAX) {
            rec->pid = (long)number;
            have_pid = 1;
        } else if (strcmp(line, "start") == 0 && parse_number(value, &number)) {
            rec->start_time = number;
            have_start = 1;
        } else if (strcmp(line, "freezer") == 0 && value[0] == '/') {
            rec->freezer = value;
        } else if (strcmp(line, "unified") == 0 && value[0] == '/') {
            rec->unified = value;
        } else if (strcmp(line, "rmdir") == 0 && value[0] == '/' && rec->n_leaves < MAX_DIRS) {
            rec->leaves[rec->n_leaves++] = value;
        } else if (strcmp(line, "rmdir-parent") == 0 && value[0] == '/'
                   && rec->n_parents < MAX_DIRS) {
            rec->parents[rec->n_parents++] = value;
        } else {
            return 0;
        }
    }
    return have_pid && have_start;
}

/* ------------------------------------------------------------ the status */

/* Whether the init still runs: not gone, not a zombie, not exiting, and
 * the same process (its start time) as the record's. */
static int init_alive(const struct record *rec)
{
    char path[64], stat_line[1024], *fields, *field, *save = NULL;
    unsigned long long flags = 0, start = 0;
    char state = 0;

    snprintf(path, sizeof path, "/proc/%ld/stat", rec->pid);
    if (read_small(path, stat_line, sizeof stat_line) <= 0)
        return 0;
    fields = strrchr(stat_line, ')');
    if (fields == NULL || fields[1] == '\0')
        return 0;
    field = strtok_r(fields + 2, " ", &save);
    for (int k = 0; field != NULL; k++, field = strtok_r(NULL, " ", &save)) {
        if (k == 0)
            state = field[0];
        else if (k == 6)
            flags = strtoull(field, NULL, 10);
        else if (k == 19) {
            start = strtoull(field, NULL, 10);
            break;
        }
    }
    if (state == 'Z' || state == 'X' || (flags & PF_EXITING))
        return 0;
    return start == rec->start_time;
}

static int frozen(const struct record *rec)
{
    char path[PATH_MAX], value[32];
    size_t len;
    if (rec->freezer) {
        if (!join(path, sizeof path, rec->freezer, "freezer.state")
                || read_small(path, value, sizeof value) < 0)
            return 0;
        len = strcspn(value, " \t\r\n");
        return (len == 6 && strncmp(value, "FROZEN", 6) == 0)
            || (len == 8 && strncmp(value, "FREEZING", 8) == 0);
    }
    if (rec->unified) {
        if (!join(path, sizeof path, rec->unified, "cgroup.freeze")
                || read_small(path, value, sizeof value) < 0)
            return 0;
        return value[0] == '1' && strcspn(value, " \t\r\n") == 1;
    }
    return 0;
}

/* StateStore.status: derived from the live process, never cached. */
static enum status container_status(const char *dir, const struct record *rec)
{
    char fifo[PATH_MAX];
    if (!init_alive(rec))
        return STOPPED;
    if (frozen(rec))
        return PAUSED;
    if (join(fifo, sizeof fifo, dir, "exec.fifo") && access(fifo, F_OK) == 0)
        return CREATED;
    return RUNNING;
}

/* ------------------------------------------------------------ reporting */

/* A JSON string of TEXT (UTF-8) in ASCII, as the json module writes it
 * (json.dumps' ensure_ascii; an invalid byte reads as U+FFFD, as Python's
 * decode(errors="replace") makes it). */
static void put_json_string(FILE *out, const char *text)
{
    const unsigned char *p = (const unsigned char *)text;
    fputc('"', out);
    while (*p) {
        unsigned int code = *p, extra = 0;
        if (code >= 0x80) {
            extra = code >= 0xf8 ? 0 : code >= 0xf0 ? 3 : code >= 0xe0 ? 2 : code >= 0xc0 ? 1 : 0;
            code = extra == 0 ? 0xfffd : code & (0x3f >> extra);
            for (unsigned int k = 1; k <= extra; k++) {
                if ((p[k] & 0xc0) != 0x80) {
                    code = 0xfffd;
                    extra = k - 1;
                    break;
                }
                code = (code << 6) | (p[k] & 0x3f);
            }
        }
        p += 1 + extra;
        if (code > 0x10ffff)
            code = 0xfffd;
        if (code == '"' || code == '\\')
            fprintf(out, "\\%c", code);
        else if (code == '\n')
            fputs("\\n", out);
        else if (code == '\r')
            fputs("\\r", out);
        else if (code == '\t')
            fputs("\\t", out);
        else if (code == '\b')
            fputs("\\b", out);
        else if (code == '\f')
            fputs("\\f", out);
        else if (code < 0x20 || (code > 0x7f && code < 0x10000))
            fprintf(out, "\\u%04x", code);
        else if (code >= 0x10000) {
            code -= 0x10000;
            fprintf(out, "\\u%04x\\u%04x", 0xd800 | (code >> 10), 0xdc00 | (code & 0x3ff));
        } else
            fputc((int)code, out);
    }
    fputc('"', out);
}

/* _log.fail: the one-line error on stderr and in --log; returns CODE. */
static int fail(const struct options *opt, char *message, int code)
{
    char stamp[32];
    time_t now = time(NULL);
    struct tm utc;

    for (char *c = message; *c; c++) {
        if (*c == '\n')
            *c = ' ';
    }
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &utc));
    if (opt->log_path[0]) {
        FILE *log = fopen(opt->log_path, "ae");
        if (log != NULL) {
            if (strcmp(opt->log_format, "json") == 0) {
                fputs("{\"level\":\"error\",\"msg\":", log);
                put_json_string(log, message);
                fprintf(log, ",\"time\":\"%s\"}\n", stamp);
            } else {
                fprintf(log, "%s ERROR nsbox-runtime: %s\n", stamp, message);
            }
            fclose(log);
        }
    }
    fprintf(stderr, "nsbox-runtime: %s\n", message);
    return code;
}

static int os_error(const struct options *opt, int err)
{
    char message[256];
    snprintf(message, sizeof message, "%s: [Errno %d] %s", opt->command, err, strerror(err));
    return fail(opt, message, 1);
}

/* ------------------------------------------------------------ start */

static int exe_identity(long pid, struct stat *out)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/exe", pid);
    return stat(path, out) == 0;
}

/* channel.wait_for_exec with no events: 1 when the fifo reported (its read
 * end, held only by the init, closed on exec or exit), 0 when the init was
 * seen to have exec'd or gone first. */
static int wait_for_exec(int fd, long pid, const struct stat *before, int have_before)
{
    struct pollfd wait = {.fd = fd, .events = 0};
    struct timespec deadline, now;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += 10;
    for (;;) {
        struct stat current;
        int ready = poll(&wait, 1, 50);
        if (ready > 0)
            return 1;
        if (ready < 0 && errno != EINTR)
            return 0;
        if (have_before) {
            if (!exe_identity(pid, &current) || current.st_dev != before->st_dev
                    || current.st_ino != before->st_ino)
                return poll(&wait, 1, 0) > 0;
        } else {
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (now.tv_sec > deadline.tv_sec
                    || (now.tv_sec == deadline.tv_sec && now.tv_nsec > deadline.tv_nsec))
                return poll(&wait, 1, 0) > 0;
        }
    }
}

/* What the init wrote into the fifo when it failed before its exec: "" once
 * it has exec'd (container.py's _await_exec). */
static void exec_outcome(int fd, long pid, const struct stat *before, int have_before,
                         char *message, size_t size)
{
    char path[64];
    ssize_t n = 0;
    int reader;
    message[0] = '\0';
    if (!wait_for_exec(fd, pid, before, have_before))
        return;
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    reader = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (reader < 0)
        return;
    n = read(reader, message, size - 1);
    close(reader);
    if (n <= 0) {
        message[0] = '\0';
        return;
    }
    message[n] = '\0';
    if (message[0] == '0') {
        /* Our own byte, unread: the init was gone before it took it. */
        snprintf(message, size, "the container's init exited before its process started");
        return;
    }
    while (n > 0 && strchr(" \t\r\n\v\f", message[n - 1]))
        message[--n] = '\0';
    size_t lead = strspn(message, " \t\r\n\v\f");
    memmove(message, message + lead, (size_t)n - lead + 1);
}

static int fast_start(const struct options *opt, const char *dir)
{
    static struct record rec;
    char path[PATH_MAX], message[65536];
    struct stat before;
    int lock, fifo, have_before, err;

    if (!join(path, sizeof path, dir, "lock"))
        return RUNTIME_FAST_PYTHON;
    lock = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lock < 0)
        return RUNTIME_FAST_PYTHON;
    if (flock(lock, LOCK_EX) != 0 || !load_record(dir, &rec)
            || container_status(dir, &rec) != CREATED
            || !join(path, sizeof path, dir, "exec.fifo")) {
        close(lock);
        return RUNTIME_FAST_PYTHON; /* Python says why, or does it */
    }
    fifo = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (fifo < 0) {
        close(lock);
        return RUNTIME_FAST_PYTHON; /* "init is gone", in Python's words */
    }
    /* From here on the command is this program's: the byte starts the process.
     * An init that dies before the write makes it fail with EPIPE, as in
     * Python (which ignores SIGPIPE), rather than kill this process. */
    signal(SIGPIPE, SIG_IGN);
    have_before = exe_identity(rec.pid, &before);
    if (write(fifo, "0", 1) != 1 || unlink(path) != 0) {
        err = errno;
        close(fifo);
        close(lock);
        return os_error(opt, err);
    }
    exec_outcome(fifo, rec.pid, &before, have_before, message, sizeof message);
    close(fifo);
    close(lock);
    if (message[0])
        return fail(opt, message, 1);
    return 0;
}

/* ------------------------------------------------------------ delete */

static int fast_delete(const char *dir)
{
    static struct record rec;
    static const char *const files[] = {RECORD_FILE, "state.json", "exec.fifo", "lock", NULL};
    char path[PATH_MAX];

    if (!load_record(dir, &rec) || container_status(dir, &rec) != STOPPED)
        return RUNTIME_FAST_PYTHON;
    /* cgroups.destroy's usual case: empty leaves.  A leaf that is not
     * (processes left, sub-cgroups) is Python's, which kills and retries. */
    for (int k = 0; k < rec.n_leaves; k++) {
        if (rmdir(rec.leaves[k]) != 0 && errno != ENOENT)
            return RUNTIME_FAST_PYTHON;
    }
    for (int k = 0; k < rec.n_parents; k++) {
        if (rmdir(rec.parents[k]) != 0 && errno != ENOENT && errno != EBUSY
                && errno != ENOTEMPTY)
            return RUNTIME_FAST_PYTHON;
    }
    /* StateStore.remove; the record first, so an interrupted delete leaves a
     * directory any later command cleans up (Python's, without a record). */
    for (int k = 0; files[k]; k++) {
        if (!join(path, sizeof path, dir, files[k])
                || (unlink(path) != 0 && errno != ENOENT))
            return RUNTIME_FAST_PYTHON;
    }
    if (rmdir(dir) != 0 && errno != ENOENT)
        return RUNTIME_FAST_PYTHON; /* something else in it: Python removes the tree */
    return 0;
}

int runtime_fast_command(int argc, char **argv)
{
    struct options opt = {0};
    char dir[PATH_MAX];
    const char *off = getenv("NSBOX_RUNTIME_FAST");

    if ((off != NULL && strcmp(off, "0") == 0) || !parse_args(argc, argv, &opt)
            || !valid_id(opt.id) || !join(dir, sizeof dir, opt.root, opt.id))
        return RUNTIME_FAST_PYTHON;
    if (opt.log_path[0]) {
        /* As Python's log handler, which opens (creates) it at start-up. */
        int log = open(opt.log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0666);
        if (log < 0)
            return RUNTIME_FAST_PYTHON;
        close(log);
    }
    if (strcmp(opt.command, "start") == 0)
        return fast_start(&opt, dir);
    return fast_delete(dir);
}
