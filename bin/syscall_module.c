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
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
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

static PyMethodDef nsbox_syscall_methods[] = {
    {"syscall", (PyCFunction)(void (*)(void))nsbox_syscall, METH_FASTCALL,
     "syscall(number, *args) -> result, or -errno"},
    {"address", nsbox_address, METH_O, "address(data: bytes | bytearray) -> where its bytes are"},
    {"clone3", nsbox_clone3, METH_VARARGS,
     "clone3(flags, cgroup_fd) -> 0 in the child, its pid in the parent, or -errno"},
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
