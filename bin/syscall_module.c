/*
 * `_nsbox_syscall`: syscall(2), a fork through clone3(2) and an address for
 * nsbox/runtime/syscalls.py, built into both launchers (bin/launcher.c).
 *
 * Why: the runtime's raw system calls went through ctypes, whose extension
 * costs a dlopen of itself and libffi and the C types made at start (~0.5 ms
 * of every `create` and `run` on the reference host), and ~1.4 µs a call
 * (argument conversion through libffi) where a builtin function takes
 * ~0.15: a plain container's init makes ~160 of them (mounts, prctl,
 * openat2, fstatfs).  syscalls.py still owns every call's numbers, flags,
 * structures and error messages; this file only passes arguments through.
 * Under a plain interpreter (the Python API, tests) the same two functions
 * come from nsbox/runtime/_cdata.py, on ctypes.
 *
 * syscall(number, *args) -> int
 *     At most six arguments, each an int (passed as its 64-bit two's
 *     complement, so AT_FDCWD and unsigned masks both work), None (NULL),
 *     bytes (a pointer to its NUL-terminated data: path names, read-only
 *     structures) or any writable buffer (a pointer to its memory: a
 *     bytearray, a ctypes structure), kept alive by the call.  Returns the
 *     kernel's result, or -errno when it fails: syscalls.py raises.  The GIL
 *     is released around the call (flock and poll may block).
 *
 * address(data: bytes | bytearray) -> int
 *     Where DATA's bytes are, for a structure that points to them (seccomp's
 *     sock_fprog, bpf(2)'s attributes); valid while the caller holds DATA
 *     and, for a bytearray the kernel fills, does not resize it.
 *
 * clone3(flags, cgroup_fd) -> int
 *     A fork through clone3 with FLAGS (CLONE_NEW*, CLONE_INTO_CGROUP),
 *     SIGCHLD as the exit signal and CGROUP_FD as clone_args.cgroup when it
 *     is not negative, between the interpreter's fork hooks as os.fork()
 *     calls them and with the GIL held throughout.  0 in the child, the
 *     child's pid in the parent, -errno when the kernel refuses.
 *
 * clone_init(flags, cgroup_fd, setup, state_dir, cgroup_dirs) -> int
 *     The container's init as a process that shares the runtime's memory
 *     (CLONE_VM) until its execve, where a fork would copy it (x86-64
 *     only: elsewhere the module has no clone_init).  The child runs on a
 *     stack of its own, with the interpreter handed to it while the
 *     runtime waits (and its garbage collector off): it calls SETUP(),
 *     which does the init's set-up in Python and returns None (it failed
 *     and said why) or (exec_fifo_fd, path, argv, envp) as bytes and lists
 *     of bytes.  The child then hands the interpreter back and goes on in
 *     C alone: it waits for `start`'s byte on the exec fifo and execve()s,
 *     or writes execve's error into the fifo.  FLAGS and CGROUP_FD are
 *     clone3's, as for clone3() above.  Returns the child's pid once it
 *     has handed the interpreter back; -errno when the kernel refuses the
 *     clone, or -EDEADLK when this process has another thread, which could
 *     take the interpreter meanwhile (nothing ran; the caller forks).
 *     Should the child die while it holds the interpreter (SIGKILL, a
 *     seccomp filter that kills), the interpreter's state is the dead
 *     child's, so this process runs no more Python: it reaps the child,
 *     removes CGROUP_DIRS (last first) and STATE_DIR with the files in it,
 *     says so on stderr and exits 1.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_ARGS 6

#ifndef SYS_clone3
#define SYS_clone3 435
#endif

/* struct clone_args as of Linux 5.7 (with `cgroup`): 11 64-bit fields. */
struct nsbox_clone_args {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls,
        set_tid, set_tid_size, cgroup;
};

static PyObject *nsbox_syscall(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    long number, result = 0;
    uint64_t values[MAX_ARGS] = {0};
    Py_buffer views[MAX_ARGS];
    int held[MAX_ARGS] = {0};
    int error = 0;
    Py_ssize_t i;

    (void)module;
    if (nargs < 1 || nargs > MAX_ARGS + 1) {
        PyErr_SetString(PyExc_TypeError, "syscall() takes a number and at most 6 arguments");
        return NULL;
    }
    number = PyLong_AsLong(args[0]);
    if (number == -1 && PyErr_Occurred())
        return NULL;
    for (i = 1; i < nargs; i++) {
        PyObject *arg = args[i];
        uint64_t *value = &values[i - 1];

        if (arg == Py_None) {
            *value = 0;
        } else if (PyLong_Check(arg)) {
            *value = PyLong_AsUnsignedLongLongMask(arg);
            if (*value == (uint64_t)-1 && PyErr_Occurred())
                goto fail;
        } else if (PyBytes_Check(arg)) {
            *value = (uint64_t)(uintptr_t)PyBytes_AS_STRING(arg);
        } else {
            if (PyObject_GetBuffer(arg, &views[i - 1], PyBUF_WRITABLE) < 0)
                goto fail;
            held[i - 1] = 1;
            *value = (uint64_t)(uintptr_t)views[i - 1].buf;
        }
    }
    Py_BEGIN_ALLOW_THREADS
    result = syscall(number, values[0], values[1], values[2], values[3], values[4], values[5]);
    if (result == -1)
        error = errno;
    Py_END_ALLOW_THREADS
    for (i = 0; i < MAX_ARGS; i++) {
        if (held[i])
            PyBuffer_Release(&views[i]);
    }
    return PyLong_FromLong(result == -1 ? -error : result);

fail:
    for (i = 0; i < MAX_ARGS; i++) {
        if (held[i])
            PyBuffer_Release(&views[i]);
    }
    return NULL;
}

static PyObject *nsbox_address(PyObject *module, PyObject *data)
{
    (void)module;
    if (PyBytes_Check(data))
        return PyLong_FromVoidPtr(PyBytes_AS_STRING(data));
    if (PyByteArray_Check(data))
        return PyLong_FromVoidPtr(PyByteArray_AS_STRING(data));
    PyErr_SetString(PyExc_TypeError, "address() takes bytes or a bytearray");
    return NULL;
}

static PyObject *nsbox_clone3(PyObject *module, PyObject *args)
{
    unsigned long long flags;
    int cgroup_fd, error;
    long pid;
    struct nsbox_clone_args clone_args;

    (void)module;
    if (!PyArg_ParseTuple(args, "Ki:clone3", &flags, &cgroup_fd))
        return NULL;
    memset(&clone_args, 0, sizeof clone_args);
    clone_args.flags = flags;
    clone_args.exit_signal = SIGCHLD;
    if (cgroup_fd >= 0)
        clone_args.cgroup = (uint64_t)cgroup_fd;
    PyOS_BeforeFork();
    pid = syscall(SYS_clone3, &clone_args, sizeof clone_args);
    if (pid == 0) {
        PyOS_AfterFork_Child();
        return PyLong_FromLong(0);
    }
    error = errno;
    PyOS_AfterFork_Parent();
    return PyLong_FromLong(pid < 0 ? -error : pid);
}

#if defined(__x86_64__)
#define HAVE_CLONE_INIT 1
#define INIT_STACK_SIZE (8UL << 20) /* what a main thread gets; touched pages only */

/* What the parent and the child of clone_init share: set by the parent
 * before the clone, by the child before it hands the interpreter back; never
 * freed (the child may read it until its execve, after the parent has
 * gone on, and one is made per container). */
struct shared_init {
    PyObject *setup;
    PyThreadState *tstate;
    int handoff_fd; /* the child writes one byte: the interpreter is the parent's again */
    int fifo_fd;
    char *path;
    char **argv;
    char **envp;
};

/* A system call that leaves errno alone: after the hand-off the parent runs
 * too, and errno lives in the thread storage both use. */
static inline long raw_syscall3(long number, long a, long b, long c)
{
    long result;
    __asm__ volatile("syscall"
                     : "=a"(result)
                     : "0"(number), "D"(a), "S"(b), "d"(c)
                     : "rcx", "r11", "memory");
    return result;
}

/* clone3 with a stack: the child starts on it in FN(ARG) and exits with its
 * result; the parent gets the pid or -errno.  (glibc's clone() cannot take
 * clone3's cgroup.) */
static long clone3_calling(struct nsbox_clone_args *clone_args, int (*fn)(void *), void *arg)
{
    long result;
    register void *function __asm__("r8") = (void *)fn;
    register void *argument __asm__("r9") = arg;
    __asm__ volatile("syscall\n\t"
                     "testq %%rax, %%rax\n\t"
                     "jnz 1f\n\t"
                     "xorl %%ebp, %%ebp\n\t"
                     "movq %%r9, %%rdi\n\t"
                     "callq *%%r8\n\t"
                     "movl %%eax, %%edi\n\t"
                     "movl $60, %%eax\n\t" /* exit */
                     "syscall\n\t"
                     "hlt\n"
                     "1:"
                     : "=a"(result)
                     : "0"((long)SYS_clone3), "D"(clone_args), "S"(sizeof *clone_args),
                       "r"(function), "r"(argument)
                     : "rcx", "r11", "memory");
    return result;
}

/* A NULL-terminated copy of a list of bytes; NULL (with an exception set)
 * for anything else, or for a NUL inside one, which execve could not pass. */
static char **c_strings(PyObject *list)
{
    Py_ssize_t count = PyList_GET_SIZE(list);
    char **strings = PyMem_RawCalloc((size_t)count + 1, sizeof *strings);
    if (strings == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyList_GET_ITEM(list, i);
        char *data;
        if (!PyBytes_Check(item) || PyBytes_AsStringAndSize(item, &data, NULL) < 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "execve arguments must be bytes");
            return NULL;
        }
        if ((strings[i] = strdup(data)) == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
    }
    return strings;
}

/* The child's set-up in Python: 1 with the execve arguments filled in. */
static int run_setup(struct shared_init *init)
{
    PyObject *result = PyObject_CallNoArgs(init->setup), *path, *argv, *envp;
    char *data;
    int ok = 0;

    if (result != NULL && result != Py_None
            && PyArg_ParseTuple(result, "iSO!O!", &init->fifo_fd, &path,
                                &PyList_Type, &argv, &PyList_Type, &envp)
            && PyBytes_AsStringAndSize(path, &data, NULL) == 0
            && (init->path = strdup(data)) != NULL
            && (init->argv = c_strings(argv)) != NULL
            && (init->envp = c_strings(envp)) != NULL)
        ok = 1;
    if (PyErr_Occurred()) {
        /* SETUP reports its own failures; this is a bug, and nobody reads
         * our stderr but the runtime's caller. */
        PyErr_Print();
    }
    Py_XDECREF(result);
    return ok;
}

static void write_all(int fd, const char *data, size_t size)
{
    while (size > 0) {
        long n = raw_syscall3(SYS_write, fd, (long)data, (long)size);
        if (n == -EINTR)
            continue;
        if (n <= 0)
            return;
        data += n;
        size -= (size_t)n;
    }
}

static int shared_init_main(void *arg)
{
    struct shared_init *init = arg;
    struct sigaction current, default_action;
    char byte = 'h', message[512];
    size_t length = 0;
    long n;
    int ok;

    /* A signal handler of the runtime's (Python's) would write into the
     * runtime's memory, and execve resets them anyway; ignored signals stay. */
    memset(&default_action, 0, sizeof default_action);
    default_action.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; sig++) {
        if (sig != SIGKILL && sig != SIGSTOP && sigaction(sig, NULL, &current) == 0
                && current.sa_handler != SIG_DFL && current.sa_handler != SIG_IGN)
            sigaction(sig, &default_action, NULL);
    }
    PyEval_RestoreThread(init->tstate);
    ok = run_setup(init);
    PyEval_SaveThread();
    /* From here on the parent runs Python again: only system calls, no libc
     * state (errno, malloc) and nothing but this structure and our stack. */
    write_all(init->handoff_fd, &byte, 1);
    if (!ok)
        raw_syscall3(SYS_exit_group, 1, 0, 0);
    for (;;) {
        n = raw_syscall3(SYS_read, init->fifo_fd, (long)&byte, 1);
        if (n == 1)
            break;
        if (n != -EINTR)
            raw_syscall3(SYS_exit_group, 1, 0, 0);
    }
    n = raw_syscall3(SYS_execve, (long)init->path, (long)init->argv, (long)init->envp);
    /* As process.exec_process words it, for `start` to print. */
    {
        const char *parts[] = {"exec ", init->path, ": ", strerrordesc_np((int)-n)};
        for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
            size_t size = parts[i] ? strlen(parts[i]) : 0;
            if (size > sizeof message - length)
                size = sizeof message - length;
            memcpy(message + length, parts[i], size);
            length += size;
        }
    }
    write_all(init->fifo_fd, message, length);
    raw_syscall3(SYS_exit_group, 1, 0, 0);
    return 1;
}

/* Whether this process has one thread: another could take the interpreter
 * while the child of clone_init holds it (/proc/self/stat's 20th field). */
static int single_threaded(void)
{
    char buffer[1024], *field;
    ssize_t n;
    int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC), count = 0;

    if (fd < 0)
        return 0;
    n = read(fd, buffer, sizeof buffer - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buffer[n] = '\0';
    field = strrchr(buffer, ')'); /* after the command name, which may hold anything */
    for (int i = 2; field != NULL && i < 20; i++) /* field 2 ends at ')' */
        field = strchr(field + 1, ' ');
    if (field != NULL)
        count = atoi(field + 1);
    return count == 1;
}

/* The child died holding the interpreter: clean up without it and exit. */
static void abandon_create(long pid, const char *state_dir, char **cgroup_dirs, Py_ssize_t count)
{
    int status = 0, dir_fd;
    char line[200];

    while (waitpid((pid_t)pid, &status, __WALL) < 0 && errno == EINTR)
        ;
    for (Py_ssize_t i = count - 1; i >= 0; i--)
        rmdir(cgroup_dirs[i]);
    dir_fd = open(state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd >= 0) {
        DIR *dir = fdopendir(dir_fd);
        struct dirent *entry;
        while (dir != NULL && (entry = readdir(dir)) != NULL) {
            if (strcmp(entry->d_name, ".") != 0 && strcmp(entry->d_name, "..") != 0)
                unlinkat(dir_fd, entry->d_name, 0);
        }
        if (dir != NULL)
            closedir(dir);
        else
            close(dir_fd);
        rmdir(state_dir);
    }
    if (WIFSIGNALED(status))
        snprintf(line, sizeof line, "nsbox-runtime: container init killed by signal %d (%s) "
                 "before it was ready\n", WTERMSIG(status), sigabbrev_np(WTERMSIG(status)));
    else
        snprintf(line, sizeof line, "nsbox-runtime: container init exited with status %d "
                 "before it was ready\n", WEXITSTATUS(status));
    if (write(2, line, strlen(line)) < 0) {
        /* nowhere left to say it */
    }
    _exit(1);
}

static PyObject *nsbox_clone_init(PyObject *module, PyObject *args)
{
    unsigned long long flags;
    int cgroup_fd, fds[2];
    PyObject *setup, *state_dir, *cgroup_dir_list;
    struct shared_init *init;
    struct nsbox_clone_args clone_args;
    char *state_dir_copy, **cgroup_dirs, byte;
    void *stack;
    long pid, n = 0;
    Py_ssize_t cgroup_count;
    int gc_was_enabled;

    (void)module;
    if (!PyArg_ParseTuple(args, "KiOSO!:clone_init", &flags, &cgroup_fd, &setup, &state_dir,
                          &PyList_Type, &cgroup_dir_list))
        return NULL;
    if (!single_threaded())
        return PyLong_FromLong(-EDEADLK); /* the caller forks instead */
    /* Copies for abandon_create, which cannot use Python objects. */
    state_dir_copy = strdup(PyBytes_AS_STRING(state_dir));
    cgroup_dirs = c_strings(cgroup_dir_list);
    cgroup_count = PyList_GET_SIZE(cgroup_dir_list);
    init = PyMem_RawCalloc(1, sizeof *init);
    if (state_dir_copy == NULL || cgroup_dirs == NULL || init == NULL)
        return PyErr_Occurred() ? NULL : PyErr_NoMemory();
    stack = mmap(NULL, INIT_STACK_SIZE, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK | MAP_NORESERVE, -1, 0);
    if (stack == MAP_FAILED)
        return PyErr_SetFromErrno(PyExc_OSError);
    if (mprotect(stack, (size_t)sysconf(_SC_PAGESIZE), PROT_NONE) < 0  /* a guard page */
            || pipe2(fds, O_CLOEXEC) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        munmap(stack, INIT_STACK_SIZE);
        return NULL;
    }
    Py_INCREF(setup);
    init->setup = setup;
    init->handoff_fd = fds[1];
    memset(&clone_args, 0, sizeof clone_args);
    clone_args.flags = CLONE_VM | flags;
    clone_args.exit_signal = SIGCHLD;
    clone_args.stack = (uint64_t)(uintptr_t)stack;
    clone_args.stack_size = INIT_STACK_SIZE;
    if (cgroup_fd >= 0)
        clone_args.cgroup = (uint64_t)cgroup_fd;

    /* The child must not collect the runtime's garbage: a finalizer would
     * run there (an fd closed in its table, not ours). */
    gc_was_enabled = PyGC_Disable();
    init->tstate = PyEval_SaveThread(); /* the child takes it */
    pid = clone3_calling(&clone_args, shared_init_main, init);
    close(fds[1]);
    if (pid > 0) {
        /* Raw: the child, running meanwhile, shares errno with us. */
        do
            n = raw_syscall3(SYS_read, fds[0], (long)&byte, 1);
        while (n == -EINTR);
    }
    close(fds[0]);
    if (pid > 0 && n != 1)
        abandon_create(pid, state_dir_copy, cgroup_dirs, cgroup_count);
    PyEval_RestoreThread(init->tstate);
    if (gc_was_enabled)
        PyGC_Enable();
    Py_DECREF(setup);
    if (pid < 0)
        munmap(stack, INIT_STACK_SIZE); /* -errno: nothing ran */
    return PyLong_FromLong(pid);
}
#endif

static PyMethodDef nsbox_syscall_methods[] = {
    {"syscall", (PyCFunction)(void (*)(void))nsbox_syscall, METH_FASTCALL,
     "syscall(number, *args) -> result, or -errno"},
    {"address", nsbox_address, METH_O, "address(data: bytes | bytearray) -> where its bytes are"},
    {"clone3", nsbox_clone3, METH_VARARGS,
     "clone3(flags, cgroup_fd) -> 0 in the child, its pid in the parent, or -errno"},
#ifdef HAVE_CLONE_INIT
    {"clone_init", nsbox_clone_init, METH_VARARGS,
     "clone_init(flags, cgroup_fd, setup, state_dir, cgroup_dirs) -> the init's pid, or -errno"},
#endif
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef nsbox_syscall_module = {
    PyModuleDef_HEAD_INIT, "_nsbox_syscall",
    "syscall(2), clone3(2) and address() for nsbox/runtime/syscalls.py (bin/syscall_module.c).",
    0, nsbox_syscall_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__nsbox_syscall(void)
{
    return PyModule_Create(&nsbox_syscall_module);
}
