// SPDX-License-Identifier: GPL-2.0
/*
 * nsbox guard: the kernel side of the runtime security monitor (detection).
 *
 * CO-RE program compiled by setup.py (clang -target bpf) against a vmlinux.h
 * generated from the build host's BTF, loaded by nsbox/engine/guard/libbpf.py.
 *
 * It needs no fentry, kprobes or BPF LSM programs (kernel features a host
 * may lack): sched_process_exec (a BTF tracepoint) for executions, and one
 * program per watched system call on its own tracepoint
 * (tracepoint/syscalls/sys_exit_NAME, sys_enter_connect), so the calls
 * nobody watches run no BPF at all.  Each program first looks the task's
 * cgroup v2 id up in `guard_cgtab` (a direct-mapped table in front of the
 * `guard_watched` hash map): a process of a container nobody watches costs
 * that lookup, on watched calls only.
 *
 * Events reach user space through the `guard_events` ring buffer; a full buffer
 * counts a drop in the per-CPU `guard_drops` counter.  File paths are rebuilt
 * from the dentries up to the task's root, so they are the container's view
 * of the file actually opened (not the string the program passed).  Opens
 * for writing are always reported; opens for reading only when a REPORT key
 * of the container matches (hashes of the full path, of each directory
 * prefix "/etc/", of the last component and of its extension, read in
 * place from the dentries' names a word at a time), which is how a rule's
 * `path` globs reach the kernel.
 *
 * The layout of `struct event` and every constant are mirrored in
 * nsbox/engine/guard/record.py.  System call numbers are x86_64's.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "GPL";

#define PATH_MAX_B 256
#define STR2_MAX 256
#define MAX_DEPTH 32

/* event types */
#define EV_EXEC 1
#define EV_OPEN 2
#define EV_CONNECT 3
#define EV_BIND 4
#define EV_LISTEN 5
#define EV_PTRACE 6
#define EV_MOUNT 7
#define EV_MODULE 8
#define EV_BPF 9
#define EV_SETUID 10
#define EV_CAPSET 11

/* key kinds (struct gkey.kind) */
#define K_OPEN_EXACT 2
#define K_OPEN_PREFIX 3
#define K_OPEN_NAME 4
#define K_OPEN_EXT 5

/* key values */
#define V_REPORT 1

/* struct watch.flags */
#define W_ALL_READS 2  /* a rule's path could not be reduced to keys: every open */

/* x86_64 system call numbers */
#define NR_open 2
#define NR_execve 59
#define NR_execveat 322
#define EACCES 13
#define EPERM 1
#define NR_connect 42
#define NR_bind 49
#define NR_listen 50
#define NR_creat 85
#define NR_ptrace 101
#define NR_setuid 105
#define NR_setreuid 113
#define NR_setresuid 117
#define NR_setfsuid 122
#define NR_capset 126
#define NR_mount 165
#define NR_init_module 175
#define NR_openat 257
#define NR_finit_module 313
#define NR_bpf 321
#define NR_move_mount 429
#define NR_fsopen 430
#define NR_openat2 437

#define FMODE_WRITE 0x2
#define AF_INET 2
#define AF_INET6 10
#define PTRACE_TRACEME 0
#define PTRACE_ATTACH 16
#define PTRACE_SEIZE 0x4206

#define HASH_BASIS 0xcbf29ce484222325ULL

struct watch {
	__u32 slot;
	__u32 flags;
};

struct gkey {
	__u32 slot;
	__u32 kind;
	__u64 hash;
};

struct event {
	__u64 cgid;
	__u64 ts;
	__u32 type;
	__s32 ret;     /* the system call's result (0 when reported before it runs) */
	__u32 pid;     /* host thread group id */
	__u32 tid;
	__u32 ppid;    /* host parent */
	__u32 nspid;   /* thread group id in its own pid namespace */
	__u32 uid;
	__u32 slot;
	__u32 a;
	__u32 b;
	__u64 c;
	char comm[16];
	__u8 addr[16];
	__u16 off1;    /* str1 holds a string from this offset to its end */
	__u16 len2;    /* bytes of str2 used */
	__u32 nr;      /* the system call, when the event comes from one */
	char str1[PATH_MAX_B];
	char str2[STR2_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct watch);
} guard_watched SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct gkey);
	__type(value, __u32);
} guard_keys SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 32 << 20);  /* ~54,000 events: a burst of a second at 50,000/s */
} guard_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} guard_drops SEC(".maps");

/*
 * A direct-mapped table of the watched cgroups, indexed by a hash of the id
 * (set by the guard with guard_watched): the system calls of every process
 * of the host reach the programs, and for the unwatched ones an entry that
 * holds another id (or none) is cheaper than the hash map's lookup, as is
 * the entry of a watched one.  Only an entry that two watched cgroups share
 * (CG_SHARED) sends the lookup on to guard_watched.
 */
#define CGSLOTS (1 << 14)
#define CG_SHARED (~0ULL)

struct cgentry {
	__u64 cgid;        /* 0: none, CG_SHARED: look in guard_watched */
	struct watch w;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CGSLOTS);
	__type(key, __u32);
	__type(value, struct cgentry);
} guard_cgtab SEC(".maps");

/* record.cgroup_slot() in user space */
static __always_inline __u32 cgroup_slot(__u64 cgid)
{
	return (cgid * 0x9E3779B97F4A7C15ULL) >> 50;
}

static __always_inline struct watch *watching(void)
{
	__u64 cgid = bpf_get_current_cgroup_id();
	__u32 i = cgroup_slot(cgid);
	struct cgentry *e = bpf_map_lookup_elem(&guard_cgtab, &i);

	if (!e || !e->cgid)
		return NULL;
	if (e->cgid == cgid)
		return &e->w;
	if (e->cgid != CG_SHARED)
		return NULL;
	return bpf_map_lookup_elem(&guard_watched, &cgid);
}

/*
 * One bit per key of guard_keys (set by the guard from all watches' keys):
 * a watched open tests up to five keys per path (exact, each directory,
 * name, extension) and almost none exist, so a clear bit in this array
 * (a lookup the verifier inlines) spares the hash map's ~20 ns lookup.
 */
#define KEYBITS (1 << 16)

struct keybits {
	__u8 b[KEYBITS / 8];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct keybits);
} guard_keybits SEC(".maps");

/* record.key_bit() in user space */
static __always_inline __u32 key_bit(__u32 slot, __u32 kind, __u64 hash)
{
	return ((hash ^ ((__u64)slot << 8) ^ kind) * 0x9E3779B97F4A7C15ULL) >> 48;
}

static __always_inline __u32 key_value(__u32 slot, __u32 kind, __u64 hash)
{
	struct gkey k = { .slot = slot, .kind = kind, .hash = hash };
	__u32 zero = 0, bit = key_bit(slot, kind, hash);
	struct keybits *kb = bpf_map_lookup_elem(&guard_keybits, &zero);
	__u32 *v;

	if (!kb || !(kb->b[(bit >> 3) & (KEYBITS / 8 - 1)] & (1 << (bit & 7))))
		return 0;
	v = bpf_map_lookup_elem(&guard_keys, &k);

	return v ? *v : 0;
}

static __always_inline void count_drop(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&guard_drops, &zero);

	if (n)
		__sync_fetch_and_add(n, 1);
}

/* A zeroed event with the task's fields filled in; NULL (and a drop) when the ring is full. */
static __always_inline struct event *new_event(struct watch *w, __u32 type)
{
	struct event *e = bpf_ringbuf_reserve(&guard_events, sizeof(*e), 0);
	struct task_struct *task;
	struct pid *tpid;
	unsigned int level;
	__u64 pid_tgid;

	if (!e) {
		count_drop();
		return NULL;
	}
	__builtin_memset(e, 0, offsetof(struct event, str1));
	e->str1[0] = 0;
	e->str2[0] = 0;
	e->off1 = PATH_MAX_B;
	pid_tgid = bpf_get_current_pid_tgid();
	task = (struct task_struct *)bpf_get_current_task();
	e->cgid = bpf_get_current_cgroup_id();
	e->ts = bpf_ktime_get_ns();
	e->type = type;
	e->pid = pid_tgid >> 32;
	e->tid = (__u32)pid_tgid;
	e->ppid = BPF_CORE_READ(task, real_parent, tgid);
	/* the thread group leader's number in its own (innermost) pid namespace */
	tpid = BPF_CORE_READ(task, group_leader, thread_pid);
	level = BPF_CORE_READ(tpid, level);
	bpf_probe_read_kernel(&e->nspid, sizeof(e->nspid), &tpid->numbers[level & 31].nr);
	e->uid = (__u32)bpf_get_current_uid_gid();
	e->slot = w->slot;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	return e;
}

#include "guard_paths.h"

/* ------------------------------------------------------------------ exec */

SEC("tp_btf/sched_process_exec")
int BPF_PROG(guard_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	struct watch *w = watching();
	struct event *e;
	unsigned long start, end, len;
	struct file *file;

	if (!w)
		return 0;
	e = new_event(w, EV_EXEC);
	if (!e)
		return 0;
	file = BPF_CORE_READ(bprm, file);
	walk_dentries(e, BPF_CORE_READ(file, f_path.dentry), BPF_CORE_READ(file, f_path.mnt));
	e->a = BPF_CORE_READ(file, f_inode, i_mode);
	e->b = BPF_CORE_READ(bprm, cred, euid.val);
	start = BPF_CORE_READ(p, mm, arg_start);
	end = BPF_CORE_READ(p, mm, arg_end);
	len = end - start;
	if (len > STR2_MAX - 1)
		len = STR2_MAX - 1;
	if (len > 0 && bpf_probe_read_user(e->str2, len & (STR2_MAX - 1), (void *)start) == 0)
		e->len2 = len & (STR2_MAX - 1);
	e->c = end - start;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* ------------------------------------------------------------------ system calls */

static __always_inline void sockaddr_into(struct event *e, const void *uaddr)
{
	__u16 family = 0;

	bpf_probe_read_user(&family, sizeof(family), uaddr);
	e->a = family;
	if (family == AF_INET) {
		struct sockaddr_in in = {};

		bpf_probe_read_user(&in, sizeof(in), uaddr);
		e->b = bpf_ntohs(in.sin_port);
		__builtin_memcpy(e->addr, &in.sin_addr, 4);
	} else if (family == AF_INET6) {
		struct sockaddr_in6 in6 = {};

		bpf_probe_read_user(&in6, sizeof(in6), uaddr);
		e->b = bpf_ntohs(in6.sin6_port);
		__builtin_memcpy(e->addr, &in6.sin6_addr, 16);
	}
}

/*
 * connect is reported as it starts: a connect to an unreachable address may
 * block for minutes, and the alert must not wait for it.  The arguments come
 * from the tracepoint's record (trace_event_raw_sys_enter: id, args[6]).
 */
SEC("tracepoint/syscalls/sys_enter_connect")
int guard_enter_connect(struct trace_event_raw_sys_enter *ctx)
{
	struct watch *w = watching();
	struct event *e;
	__u16 family = 0;
	void *uaddr;

	if (!w)
		return 0;
	uaddr = (void *)ctx->args[1];
	bpf_probe_read_user(&family, sizeof(family), uaddr);
	if (family != AF_INET && family != AF_INET6)
		return 0;  /* unix sockets and netlink are local plumbing */
	e = new_event(w, EV_CONNECT);
	if (!e)
		return 0;
	e->nr = NR_connect;
	sockaddr_into(e, uaddr);
	e->c = ctx->args[0];
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* The system call's arguments: the task's saved user registers (the call has not changed them) */
static __always_inline struct pt_regs *task_regs(void)
{
	return (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
}

/*
 * A refused open or exec (EACCES, EPERM: Landlock, permissions, seccomp):
 * reported with the path as the program gave it, there being no file.
 */
static __always_inline int on_refused(struct watch *w, long id, long ret, __u32 type)
{
	struct pt_regs *regs = task_regs();
	const char *upath;
	struct event *e;

	if (ret != -EACCES && ret != -EPERM)
		return 0;
	if (id == NR_open || id == NR_creat || id == NR_execve)
		upath = (const char *)BPF_CORE_READ(regs, di);
	else
		upath = (const char *)BPF_CORE_READ(regs, si);
	e = new_event(w, type);
	if (!e)
		return 0;
	e->nr = id;
	e->ret = ret;
	e->off1 = 0;
	if (id == NR_creat) {
		e->a = FMODE_WRITE;
	} else if (id == NR_open || id == NR_openat) {
		e->b = id == NR_open ? BPF_CORE_READ(regs, si) : BPF_CORE_READ(regs, dx);
		e->a = (e->b & 3) ? FMODE_WRITE : 0;  /* O_WRONLY, O_RDWR */
	}
	bpf_probe_read_user_str(e->str1, PATH_MAX_B, upath);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

static __always_inline int on_open(struct watch *w, long id, long ret)
{
	struct file *file;
	struct event *e;
	__u32 mode, n;

	if (ret < 0)
		return on_refused(w, id, ret, EV_OPEN);
	file = fd_file(ret);
	if (!file)
		return 0;
	mode = file->f_mode;
	/* the path is built and matched first: most opens are reads nobody asked about */
	n = walk_path(file->f_path.dentry, file->f_path.mnt);
	if (!(mode & FMODE_WRITE) && !(w->flags & W_ALL_READS) &&
	    !(path_keys(n, w->slot) & V_REPORT))
		return 0;
	e = new_event(w, EV_OPEN);
	if (!e)
		return 0;
	path_into(e, n);
	e->nr = id;
	e->ret = ret;
	e->a = mode;
	e->b = file->f_flags;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

static __always_inline int on_listen(struct watch *w, struct pt_regs *regs, long ret)
{
	struct file *file = fd_file(BPF_CORE_READ(regs, di));
	struct socket *sock;
	struct event *e;
	struct sock *sk;
	__u16 family;

	if (!file)
		return 0;
	sock = BPF_CORE_READ(file, private_data);
	sk = BPF_CORE_READ(sock, sk);
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return 0;
	e = new_event(w, EV_LISTEN);
	if (!e)
		return 0;
	e->nr = NR_listen;
	e->ret = ret;
	e->a = family;
	e->b = BPF_CORE_READ(sk, __sk_common.skc_num);
	if (family == AF_INET)
		bpf_probe_read_kernel(e->addr, 4, &sk->__sk_common.skc_rcv_saddr);
	else
		bpf_probe_read_kernel(e->addr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/*
 * The end of a watched system call: ID is known at compile time (one
 * program per call), RET comes from the tracepoint's record
 * (trace_event_raw_sys_exit), the arguments from the task's saved user
 * registers (bpf_task_pt_regs), which the call has not changed.
 */
static __always_inline int on_exit(long id, long ret)
{
	struct pt_regs *regs;
	struct watch *w;
	struct event *e;
	__u32 type;

	w = watching();
	if (!w)
		return 0;
	switch (id) {
	case NR_open: case NR_openat: case NR_openat2: case NR_creat:
		return on_open(w, id, ret);
	case NR_execve: case NR_execveat:
		return ret < 0 ? on_refused(w, id, ret, EV_EXEC) : 0;
	case NR_listen:
		return on_listen(w, task_regs(), ret);
	case NR_bind:
		type = EV_BIND;
		break;
	case NR_ptrace:
		type = EV_PTRACE;
		break;
	case NR_mount: case NR_move_mount: case NR_fsopen:
		type = EV_MOUNT;
		break;
	case NR_init_module: case NR_finit_module:
		type = EV_MODULE;
		break;
	case NR_bpf:
		type = EV_BPF;
		break;
	case NR_capset:
		type = EV_CAPSET;
		break;
	default:
		type = EV_SETUID;
	}
	regs = task_regs();
	if (type == EV_PTRACE) {
		long req = BPF_CORE_READ(regs, di);

		/* PEEK/POKE/CONT... follow an attach: the attach is the news */
		if (req != PTRACE_ATTACH && req != PTRACE_SEIZE && req != PTRACE_TRACEME)
			return 0;
	}
	if (type == EV_SETUID && ret != 0 && id != NR_setfsuid)
		return 0;  /* refused: nothing changed */
	e = new_event(w, type);
	if (!e)
		return 0;
	e->nr = id;
	e->ret = ret;
	switch (type) {
	case EV_BIND: {
		__u16 family = 0;
		void *uaddr = (void *)BPF_CORE_READ(regs, si);

		bpf_probe_read_user(&family, sizeof(family), uaddr);
		if (family != AF_INET && family != AF_INET6) {
			bpf_ringbuf_discard(e, 0);
			return 0;
		}
		sockaddr_into(e, uaddr);
		break;
	}
	case EV_PTRACE:
		e->a = BPF_CORE_READ(regs, di);
		e->b = BPF_CORE_READ(regs, si);
		break;
	case EV_MOUNT:
		if (id == NR_mount) {
			/* source, target, fstype: user strings, laid out in str2 and str1 */
			bpf_probe_read_user_str(e->str1, PATH_MAX_B, (void *)BPF_CORE_READ(regs, si));
			e->off1 = 0;
			bpf_probe_read_user_str(e->str2, 64, (void *)BPF_CORE_READ(regs, dx));
			bpf_probe_read_user_str(e->str2 + 64, 128, (void *)BPF_CORE_READ(regs, di));
			e->c = BPF_CORE_READ(regs, r10);
		} else if (id == NR_fsopen) {
			bpf_probe_read_user_str(e->str2, 64, (void *)BPF_CORE_READ(regs, di));
		}
		break;
	case EV_MODULE:
		e->a = id == NR_finit_module ? 1 : 2;
		break;
	case EV_BPF:
		e->a = BPF_CORE_READ(regs, di);
		break;
	case EV_CAPSET: {
		/* struct __user_cap_data_struct[2]: effective is the first word of each */
		void *data = (void *)BPF_CORE_READ(regs, si);
		__u32 lo = 0, hi = 0;

		bpf_probe_read_user(&lo, 4, data);
		bpf_probe_read_user(&hi, 4, data + 12);
		e->c = ((__u64)hi << 32) | lo;
		break;
	}
	default: /* setuid family: the ids asked for, and the effective uid now */
		e->a = BPF_CORE_READ(regs, di);
		e->b = BPF_CORE_READ(regs, si);
		e->c = BPF_CORE_READ(regs, dx);
		break;
	}
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/*
 * One program per watched system call, on its own tracepoint
 * (tracefs events/syscalls/sys_exit_NAME): the kernel runs a program only
 * for the calls it is attached to, so the calls nobody watches (read,
 * write, stat, close...) run no BPF at all.  A kernel without a call (no
 * module support: no sys_exit_finit_module) has no tracepoint for it; the
 * guard attaches what exists and says what it could not.
 */
#define EXIT_PROG(name, nr)						\
	SEC("tracepoint/syscalls/sys_exit_" #name)			\
	int guard_x_##name(struct trace_event_raw_sys_exit *ctx)	\
	{								\
		return on_exit(nr, ctx->ret);				\
	}

EXIT_PROG(open, NR_open)
EXIT_PROG(openat, NR_openat)
EXIT_PROG(openat2, NR_openat2)
EXIT_PROG(creat, NR_creat)
EXIT_PROG(execve, NR_execve)
EXIT_PROG(execveat, NR_execveat)
EXIT_PROG(bind, NR_bind)
EXIT_PROG(listen, NR_listen)
EXIT_PROG(ptrace, NR_ptrace)
EXIT_PROG(mount, NR_mount)
EXIT_PROG(move_mount, NR_move_mount)
EXIT_PROG(fsopen, NR_fsopen)
EXIT_PROG(init_module, NR_init_module)
EXIT_PROG(finit_module, NR_finit_module)
EXIT_PROG(bpf, NR_bpf)
EXIT_PROG(setuid, NR_setuid)
EXIT_PROG(setreuid, NR_setreuid)
EXIT_PROG(setresuid, NR_setresuid)
EXIT_PROG(setfsuid, NR_setfsuid)
EXIT_PROG(capset, NR_capset)
