/*
 * The compiled form of bin/nsbox-runtime and bin/nsbox: a program that embeds
 * the Python interpreter and runs one CLI module, without `site`.
 *
 * Why: a script launcher is started as `python script`, and `python` imports
 * `site` before anything else: it reads the venv's pyvenv.cfg, lists
 * site-packages, reads its .pth files and looks for sitecustomize and
 * usercustomize on the whole path.  That is ~1 ms of every command here, and
 * pip drops any option (such as -S) from a script's `#!python` line.  This
 * program does what `site` would have done for nsbox, once and in C: the
 * module path is the base interpreter's (fixed when it is built), then the
 * installation's site-packages and the directories its .pth files name.
 * Everything else is the interpreter as `python` configures it (signal
 * handlers, PYTHON* environment variables, locale coercion).
 *
 * setup.py (build_launchers) compiles it twice, with -DNSBOX_CLI_MODULE set to
 * the CLI's module, against the interpreter's static library (else its shared
 * one), and puts the programs where pip expects the scripts.  A build without
 * a C compiler, that library or the headers installs the script launchers
 * instead: same behaviour, slower.
 *
 * The installation's prefix is two levels above the program, found through
 * /proc/self/exe, or, for a copy of the program put elsewhere (no
 * site-packages two levels up), the prefix it was built for.  When the
 * runtime re-executes itself from a sealed memfd copy
 * (nsbox/runtime/security/exe_guard.py), that link names the memfd, so
 * argv[0] is used instead: exe_guard passes the program's real path there.
 *
 * Build-time definitions (C string literals, paths separated by ':'):
 *   NSBOX_CLI_MODULE   the module whose main() is the command
 *   NSBOX_GC_OFF       1: no cyclic garbage collector (the runtime's launcher)
 *   NSBOX_RUNTIME_FAST 1: linked with runtime_fast.c, which does `start` and
 *                      `delete` of a plain container without Python
 *   NSBOX_CODE_BUNDLE  1: import the package's modules from its code bundle
 *                      (nsbox/_codebundle.py)
 *   NSBOX_SYSCALL_MODULE 1: linked with syscall_module.c, built in as the
 *                      module `_nsbox_syscall` (nsbox/runtime/syscalls.py's
 *                      system calls without ctypes)
 *   NSBOX_BASE_PATH    the base interpreter's module path (stdlib, lib-dynload)
 *   NSBOX_SITE_REL     site-packages relative to the installation's prefix
 *   NSBOX_PREFIX       the prefix the build was for (pip builds with the
 *                      target environment's interpreter)
 *   NSBOX_BASE_EXECUTABLE  the interpreter, if <prefix>/bin/python is missing
 *   NSBOX_BASE_PREFIX, NSBOX_BASE_EXEC_PREFIX  its sys.base_prefix and
 *                      sys.base_exec_prefix (a venv's sys.prefix is its own)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifdef NSBOX_FROZEN_STDLIB
/* nsbox_frozen_stdlib[]: standard-library modules every start imports, as
 * code compiled by the interpreter this program embeds (setup.py's
 * FROZEN_STDLIB says which and why). */
#include NSBOX_FROZEN_STDLIB
#endif

#if defined(NSBOX_RUNTIME_FAST) && NSBOX_RUNTIME_FAST
#include "runtime_fast.h"
#endif

#if defined(NSBOX_SYSCALL_MODULE) && NSBOX_SYSCALL_MODULE
PyMODINIT_FUNC PyInit__nsbox_syscall(void);
#endif

#ifndef NSBOX_CLI_MODULE
#error "NSBOX_CLI_MODULE must name the CLI module"
#endif
#if defined(NSBOX_GC_OFF) && NSBOX_GC_OFF
#define GC_OFF_CODE "import gc\ngc.disable()\n"
#else
#define GC_OFF_CODE ""
#endif
#if defined(NSBOX_CODE_BUNDLE) && NSBOX_CODE_BUNDLE
/* The package's modules from nsbox/_runtime.codebundle (nsbox/_codebundle.py);
 * an nsbox without one (another copy on PYTHONPATH) imports as usual. */
#define CODE_BUNDLE_CODE \
    "try:\n" \
    "    from nsbox._codebundle import install as _install\n" \
    "except ImportError:\n" \
    "    pass\n" \
    "else:\n" \
    "    _install()\n" \
    "    del _install\n"
#else
#define CODE_BUNDLE_CODE ""
#endif

/* Lines of .pth files that are code ("import ..."), run once Python is up. */
#define MAX_PTH_CODE 32
static char *pth_code[MAX_PTH_CODE];
static int n_pth_code;

static const char *progname = "nsbox";

static void die(const char *what)
{
    fprintf(stderr, "%s: %s\n", progname, what);
    exit(125);
}

static int is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static void add_path(PyConfig *config, const char *path)
{
    wchar_t *wide = Py_DecodeLocale(path, NULL);
    if (wide == NULL)
        die("cannot decode a module path");
    for (Py_ssize_t i = 0; i < config->module_search_paths.length; i++) {
        if (wcscmp(config->module_search_paths.items[i], wide) == 0) {
            PyMem_RawFree(wide);
            return;
        }
    }
    PyStatus status = PyWideStringList_Append(&config->module_search_paths, wide);
    PyMem_RawFree(wide);
    if (PyStatus_Exception(status))
        Py_ExitStatusException(status);
}

/* The next non-empty ':'-separated entry of *list, after `base/` when base
 * is not NULL, into out; 0 once the list is used up. */
static int next_entry(const char **list, const char *base, char *out, size_t size)
{
    while (**list) {
        const char *start = *list, *end = strchr(start, ':');
        size_t len = end ? (size_t)(end - start) : strlen(start);
        int n;
        *list = start + len + (end != NULL);
        if (len == 0)
            continue;
        n = base ? snprintf(out, size, "%s/%.*s", base, (int)len, start)
                 : snprintf(out, size, "%.*s", (int)len, start);
        if (n > 0 && (size_t)n < size)
            return 1;
    }
    return 0;
}

/* Each entry of `list`. */
static void add_path_list(PyConfig *config, const char *list)
{
    char entry[PATH_MAX];
    while (next_entry(&list, NULL, entry, sizeof entry))
        add_path(config, entry);
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

static int is_pth(const struct dirent *entry)
{
    size_t len = strlen(entry->d_name);
    return entry->d_name[0] != '.' && len > 4 && strcmp(entry->d_name + len - 4, ".pth") == 0;
}

/* What site.addsitedir does: the site directory, then, from its .pth files in
 * name order, each line naming a directory (relative to the site directory)
 * that exists; "import" lines are kept to run later, as site runs them. */
static void add_site_dir(PyConfig *config, const char *site)
{
    struct dirent **names;
    int count;

    add_path(config, site);
    count = scandir(site, &names, is_pth, by_name);
    for (int i = 0; i < count; i++) {
        char file[PATH_MAX], line[PATH_MAX], dir[PATH_MAX];
        FILE *pth;
        if (snprintf(file, sizeof file, "%s/%s", site, names[i]->d_name) >= (int)sizeof file)
            goto next;
        pth = fopen(file, "re");
        if (pth == NULL)
            goto next;
        while (fgets(line, sizeof line, pth)) {
            line[strcspn(line, "\r\n")] = '\0';
            if (line[0] == '\0' || line[0] == '#')
                continue;
            if (strncmp(line, "import ", 7) == 0 || strncmp(line, "import\t", 7) == 0) {
                if (n_pth_code < MAX_PTH_CODE)
                    pth_code[n_pth_code++] = strdup(line);
                continue;
            }
            size_t end = strlen(line);
            while (end > 0 && (line[end - 1] == ' ' || line[end - 1] == '\t'))
                line[--end] = '\0';
            if (line[0] == '/')
                snprintf(dir, sizeof dir, "%s", line);
            else if (snprintf(dir, sizeof dir, "%s/%s", site, line) >= (int)sizeof dir)
                continue;
            if (is_dir(dir))
                add_path(config, dir);
        }
        fclose(pth);
    next:
        free(names[i]);
    }
    if (count >= 0)
        free(names);
}

/* Whether PREFIX holds one of the site-packages directories. */
static int has_site(const char *prefix)
{
    const char *relative = NSBOX_SITE_REL;
    char site[PATH_MAX];
    while (next_entry(&relative, prefix, site, sizeof site)) {
        if (is_dir(site))
            return 1;
    }
    return 0;
}

/* The program's own path: /proc/self/exe, or argv[0] for a memfd copy. */
static void program_path(const char *argv0, char *out, size_t size)
{
    char link[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", link, sizeof link - 1);
    if (n > 0) {
        link[n] = '\0';
        if (link[0] == '/' && strncmp(link, "/memfd:", 7) != 0) {
            snprintf(out, size, "%s", link);
            return;
        }
    }
    if (argv0 != NULL && argv0[0] == '/' && realpath(argv0, link) != NULL) {
        snprintf(out, size, "%s", link);
        return;
    }
    die("cannot find where this program is installed (/proc/self/exe)");
}

static void parent_dir(char *path)
{
    char *slash = strrchr(path, '/');
    if (slash == NULL || slash == path)
        strcpy(path, "/");
    else
        *slash = '\0';
}

int main(int argc, char **argv)
{
    char program[PATH_MAX], prefix[PATH_MAX], path[PATH_MAX + 16];
    PyPreConfig preconfig;
    PyConfig config;
    PyStatus status;
    int venv;

    if (argc > 0 && argv[0][0] != '\0') {
        const char *slash = strrchr(argv[0], '/');
        progname = slash ? slash + 1 : argv[0];
    }

    /* A closed standard descriptor would be taken by the next file the
     * runtime opens (a state file, a cgroup file), and output meant for the
     * caller would go there: hold each one with /dev/null instead. */
    for (int fd = 0; fd <= 2; fd++) {
        if (fcntl(fd, F_GETFD) < 0 && errno == EBADF
                && open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY) != fd)
            die("cannot open /dev/null for a closed standard descriptor");
    }

#if defined(NSBOX_RUNTIME_FAST) && NSBOX_RUNTIME_FAST
    {
        /* nsbox-runtime's start and delete of a plain container need no
         * interpreter (runtime_fast.c); anything else goes on below. */
        int code = runtime_fast_command(argc, argv);
        if (code != RUNTIME_FAST_PYTHON)
            return code;
    }
#endif

    program_path(argc > 0 ? argv[0] : NULL, program, sizeof program);
    snprintf(prefix, sizeof prefix, "%s", program);
    parent_dir(prefix); /* <prefix>/bin */
    parent_dir(prefix); /* <prefix> */
    if (!has_site(prefix) && has_site(NSBOX_PREFIX))
        snprintf(prefix, sizeof prefix, "%s", NSBOX_PREFIX); /* a copy put elsewhere */

#ifdef NSBOX_FROZEN_STDLIB
    PyImport_FrozenModules = nsbox_frozen_stdlib; /* consulted before the path */
#endif
#if defined(NSBOX_SYSCALL_MODULE) && NSBOX_SYSCALL_MODULE
    if (PyImport_AppendInittab("_nsbox_syscall", PyInit__nsbox_syscall) < 0)
        die("cannot add the built-in module _nsbox_syscall");
#endif
    /* As `python` starts (locale coercion, UTF-8 mode from the environment),
     * but no argument is an interpreter option. */
    PyPreConfig_InitPythonConfig(&preconfig);
    preconfig.parse_argv = 0;
    status = Py_PreInitialize(&preconfig);
    if (PyStatus_Exception(status))
        Py_ExitStatusException(status);

    PyConfig_InitPythonConfig(&config);
    config.parse_argv = 0;   /* every argument is the command's */
    config.site_import = 0;  /* the point of this program: done below */
    config.safe_path = 1;    /* nothing (not the working directory) before the path */
    config.write_bytecode = 1;
    status = PyConfig_SetBytesArgv(&config, argc, argv);
    if (PyStatus_Exception(status))
        goto fail;
    /* sys.executable stays an interpreter: the engine starts `python -m ...` with it. */
    snprintf(path, sizeof path, "%s/bin/python", prefix);
    status = PyConfig_SetBytesString(&config, &config.executable,
                                     access(path, X_OK) == 0 ? path : NSBOX_BASE_EXECUTABLE);
    if (PyStatus_Exception(status))
        goto fail;

    /* In a venv, sys.prefix is the venv (site would have set it so): set once
     * the interpreter is up, as site does.  Given to the path calculation
     * instead, the prefix would stop it from finding the standard library's
     * directory (sys._stdlib_dir), and the frozen modules (os, io, codecs,
     * encodings) would have no __file__, a frozen package no __path__. */
    snprintf(path, sizeof path, "%s/pyvenv.cfg", prefix);
    venv = access(path, R_OK) == 0;
    if (venv) {
        status = PyConfig_SetBytesString(&config, &config.base_prefix, NSBOX_BASE_PREFIX);
        if (!PyStatus_Exception(status))
            status = PyConfig_SetBytesString(&config, &config.base_exec_prefix,
                                             NSBOX_BASE_EXEC_PREFIX);
        if (PyStatus_Exception(status))
            goto fail;
    }

    config.module_search_paths_set = 1;
    {
        /* As `python` without -E: PYTHONPATH first (empty entries skipped,
         * so it cannot put the working directory on the path). */
        const char *env_path = getenv("PYTHONPATH");
        if (env_path != NULL)
            add_path_list(&config, env_path);
    }
    add_path_list(&config, NSBOX_BASE_PATH);
    {
        const char *relative = NSBOX_SITE_REL;
        char site[PATH_MAX];
        while (next_entry(&relative, prefix, site, sizeof site)) {
            if (is_dir(site))
                add_site_dir(&config, site);
        }
    }

    status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status))
        Py_ExitStatusException(status);

    {
        /* exe_guard's re-execution needs the program's real path. */
        PyObject *path = PyUnicode_DecodeFSDefault(program);
        PyObject *venv_prefix = venv ? PyUnicode_DecodeFSDefault(prefix) : NULL;
        if (path == NULL || PySys_SetObject("_nsbox_launcher", path) < 0
                || (venv && (venv_prefix == NULL || PySys_SetObject("prefix", venv_prefix) < 0
                             || PySys_SetObject("exec_prefix", venv_prefix) < 0))) {
            PyErr_Print();
            Py_FinalizeEx();
            return 1;
        }
        Py_DECREF(path);
        Py_XDECREF(venv_prefix);
    }
    for (int i = 0; i < n_pth_code; i++) {
        if (PyRun_SimpleString(pth_code[i]) != 0)
            fprintf(stderr, "%s: a .pth line failed: %s\n", progname, pth_code[i]);
    }
    /* Bytecode is written even under PYTHONDONTWRITEBYTECODE, from the first
     * import on (nsbox and nsbox._codebundle included): a module whose .pyc
     * cannot be kept is compiled again at every start. */
    if (PyRun_SimpleString(
            "import sys\n"
            "sys.dont_write_bytecode = False\n"
            GC_OFF_CODE
            CODE_BUNDLE_CODE
            "from nsbox._exit import exit_process\n"
            "from " NSBOX_CLI_MODULE " import main\n"
            "exit_process(main())\n") != 0) {
        /* An uncaught exception, already printed: exit as `python` would. */
        Py_FinalizeEx();
        return 1;
    }
    return 0;

fail:
    PyConfig_Clear(&config);
    Py_ExitStatusException(status);
}
