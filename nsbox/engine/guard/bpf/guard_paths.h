// SPDX-License-Identifier: GPL-2.0
/*
 * nsbox guard: the paths of the files a watched container opens or runs,
 * for guard.bpf.c (which includes this after its maps and struct event).
 *
 * walk_path() goes up the dentries to the task's root, crossing mounts, and
 * records where each component's name is; path_keys() hashes those names
 * in place, a word at a time, and ORs the values of the container's keys
 * that match; build_path() makes the string only when an event reports it.
 */
#ifndef NSBOX_GUARD_PATHS_H
#define NSBOX_GUARD_PATHS_H

/*
 * Kernel structures are read with direct loads through BTF-typed pointers
 * (the current task from bpf_get_current_task_btf, a file made one with the
 * bpf_rdonly_cast kfunc), which the verifier turns into guarded loads in
 * place: a bpf_probe_read_kernel call per field cost ~15 ns each, and a
 * watched open reads a dozen of them.
 */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;

/*
 * 8 bytes of kernel memory at ADDR.  Where the kernel lets bpf_rdonly_cast
 * make any address read-only memory (6.16 and later: BPF_FEAT_RDONLY_CAST_TO_VOID
 * in its BTF), a load it guards in place; elsewhere a helper call (~10 ns
 * more).  libbpf turns the test into a constant when it loads the program,
 * and the verifier drops the branch not taken.
 */
static __always_inline __u64 read_u64(__u64 addr)
{
	__u64 v = 0;

	if (bpf_core_enum_value_exists(enum bpf_features, BPF_FEAT_RDONLY_CAST_TO_VOID))
		return *(const __u64 *)bpf_rdonly_cast((void *)addr, 0);
	bpf_probe_read_kernel(&v, sizeof(v), (void *)addr);
	return v;
}

/* Where paths are built: one per CPU (a program runs to its end on one CPU). */
struct scratch {
	char path[2 * PATH_MAX_B];  /* the verifier bounds offset + length separately */
	__u64 name[MAX_DEPTH];      /* the path's components, last first: d_name.name ... */
	__u32 len[MAX_DEPTH];       /* ... and d_name.len */
	/*
	 * The walk's and the hashing's positions live here, not on the stack:
	 * the verifier tracks a constant kept on the stack exactly, so every
	 * (component, offset) pair would be a state of its own to verify.
	 */
	__u32 n;     /* components recorded */
	__u32 chars; /* their lengths, plus one '/' each */
	__u32 comp;  /* the component being hashed (counting down to 0, the last) */
	__u32 off;   /* the next character of it */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} guard_scratch SEC(".maps");

static __always_inline struct scratch *scratch(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&guard_scratch, &zero);
}

struct walk {
	struct dentry *d;
	struct vfsmount *vm;
	struct mount *mnt;
	struct dentry *root_d;
	struct vfsmount *root_m;
};

/* P as a read-only BTF pointer to struct TYPE: direct loads (the verifier makes the cast a move) */
#define AS(type, p) ((struct type *)bpf_rdonly_cast((void *)(p), bpf_core_type_id_kernel(struct type)))

/*
 * One step up (bpf_loop callback): a component recorded (where its name is,
 * not a copy: hashing reads it in place), or a mount crossed; 1 stops.
 */
static long walk_step(__u32 index, struct walk *w)
{
	struct scratch *s = scratch();
	struct dentry *d = AS(dentry, w->d), *parent, *mroot;
	struct vfsmount *vm = AS(vfsmount, w->vm);
	struct mount *mnt = AS(mount, w->mnt);
	__u32 len, n;

	if (!s || (d == w->root_d && vm == w->root_m))
		return 1;
	mroot = vm->mnt_root;
	parent = d->d_parent;
	if (d == mroot || d == parent) {
		struct mount *up = mnt->mnt_parent;

		if (up == mnt)
			return 1;
		w->d = mnt->mnt_mountpoint;
		w->mnt = up;
		w->vm = &up->mnt;
		return 0;
	}
	len = d->d_name.len;
	n = s->n;
	/* what build_path can hold: the path loses its top components, not its end */
	if (len == 0 || s->chars + len + 1 > PATH_MAX_B - 1 || n >= MAX_DEPTH)
		return 1;
	s->name[n & (MAX_DEPTH - 1)] = (__u64)d->d_name.name;
	s->len[n & (MAX_DEPTH - 1)] = len;
	s->n = n + 1;
	s->chars += len + 1;
	w->d = parent;
	return 0;
}

/*
 * The components of DENTRY on VM's path as the task sees it (up to its
 * root, crossing mounts), recorded last first in the scratch buffer; how
 * many.
 */
static __always_inline __u32 walk_path(struct dentry *d, struct vfsmount *vm)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct fs_struct *fs = task->fs;
	struct walk w = {
		.d = d, .vm = vm, .mnt = container_of(vm, struct mount, mnt),
		.root_d = fs->root.dentry,
		.root_m = fs->root.mnt,
	};
	struct scratch *s = scratch();

	if (!s)
		return 0;
	s->n = 0;
	s->chars = 0;
	bpf_loop(MAX_DEPTH, walk_step, &w, 0);
	return s->n;
}

struct building {
	__u32 pos;
};

/* One component into the path, right-aligned (bpf_loop callback over them, last first). */
static long build_step(__u32 index, struct building *b)
{
	struct scratch *s = scratch();
	__u32 len, pos = b->pos;

	if (!s)
		return 1;
	len = s->len[index & (MAX_DEPTH - 1)];
	if (len + 1 > pos || pos > PATH_MAX_B - 1)
		return 1;
	pos -= len;
	bpf_probe_read_kernel(&s->path[pos & (PATH_MAX_B - 1)], len & (PATH_MAX_B - 1),
			      (void *)s->name[index & (MAX_DEPTH - 1)]);
	pos -= 1;
	s->path[pos & (PATH_MAX_B - 1)] = '/';
	b->pos = pos;
	return 0;
}

/*
 * The path whose components walk_path recorded, built right-aligned in the
 * scratch buffer; returns where it starts.  A path too deep or too long
 * loses its top components (and then does not start at the root: user
 * space marks it truncated).
 */
static __always_inline __u32 build_path(__u32 n)
{
	struct scratch *s = scratch();
	struct building b = { .pos = PATH_MAX_B - 1 };

	if (!s)
		return PATH_MAX_B - 1;
	s->path[PATH_MAX_B - 1] = 0;
	bpf_loop(n, build_step, &b, 0);
	if (b.pos == PATH_MAX_B - 1) {  /* the root itself */
		b.pos -= 1;
		s->path[PATH_MAX_B - 2] = '/';
	}
	return b.pos;
}

/* The path of the N components walk_path found into e->str1 (from e->off1). */
static __always_inline void path_into(struct event *e, __u32 n)
{
	__u32 off = build_path(n);
	struct scratch *s = scratch();

	if (!s)
		return;
	bpf_probe_read_kernel(e->str1, PATH_MAX_B, s->path);
	e->off1 = off;
}

static __always_inline void walk_dentries(struct event *e, struct dentry *d, struct vfsmount *vm)
{
	path_into(e, walk_path(d, vm));
}

/*
 * The path hash, a word at a time: a '/' and then each component's name in
 * 8-byte little-endian words (the last one zero-padded) are mixed in, so a
 * path of n components costs about n + its length / 8 multiplications
 * (FNV-1a, a multiplication per character, took twice as long: the bpf
 * run-time stats of bench/guard_bench.py).  record.key_hash() in user space
 * computes the same.
 */
#define MIX_K 0xff51afd7ed558ccdULL
#define SLASH '/'

static __always_inline __u64 mix(__u64 h, __u64 v)
{
	h = (h ^ v) * MIX_K;
	return h ^ (h >> 32);
}

struct hashing {
	__u64 full, name, ext;
	__u32 slot, found, has_ext, dot;
};

/* A mask of a word's first LEFT bytes (all 8 from 8 on): the part of it that is a name's */
static __always_inline __u64 first_bytes(__u32 left)
{
	return left < 8 ? (1ULL << ((8 * left) & 63)) - 1 : ~0ULL;
}

/* 8 bytes of a name of LEN from OFF (read_u64), the bytes past its end cleared */
static __always_inline __u64 name_word(__u64 name, __u32 off, __u32 len)
{
	return read_u64(name + off) & first_bytes(len - off);
}

/*
 * A component's start: its '/', then the directory prefix before it looked
 * up (not before the first component: no rule's prefix is "/" alone).
 */
static __always_inline void component_start(struct hashing *h, int first)
{
	h->full = mix(h->full, SLASH);
	if (!first)
		h->found |= key_value(h->slot, K_OPEN_PREFIX, h->full);
}

/* One word of a directory component (bpf_loop callback). */
static long hash_step(__u32 index, struct hashing *h)
{
	struct scratch *s = scratch();
	__u32 comp, off, len;

	if (!s)
		return 1;
	comp = s->comp;
	off = s->off;
	if (comp == 0 || comp >= MAX_DEPTH)
		return 1;
	len = s->len[comp & (MAX_DEPTH - 1)];
	if (off == 0)
		component_start(h, comp == s->n - 1);
	h->full = mix(h->full, name_word(s->name[comp & (MAX_DEPTH - 1)], off, len));
	off += 8;
	if (off < len) {
		s->off = off;
		return 0;
	}
	s->comp = comp - 1;
	s->off = 0;
	return comp - 1 == 0;
}

#define DOTS 0x2e2e2e2e2e2e2e2eULL
#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

/*
 * One word of the last component (bpf_loop callback), which also feeds the
 * name hash and finds the last '.' (a byte-parallel test for zero bytes of
 * word ^ "........": exact here, as a name holds no '/').
 */
static long hash_last_step(__u32 index, struct hashing *h)
{
	struct scratch *s = scratch();
	__u32 off, len, at;
	__u64 word, dots;

	if (!s)
		return 1;
	off = s->off;
	len = s->len[0];
	if (off == 0)
		component_start(h, s->n == 1);
	word = name_word(s->name[0], off, len);
	h->full = mix(h->full, word);
	h->name = mix(h->name, word);
	word ^= DOTS;
	dots = (word - ONES) & ~word & HIGHS & first_bytes(len - off);
	if (dots) {
		at = 0;
		if (dots >> 32) {
			at += 4;
			dots >>= 32;
		}
		if (dots >> 16) {
			at += 2;
			dots >>= 16;
		}
		if (dots >> 8)
			at += 1;
		h->dot = off + at + 1;
		h->has_ext = 1;
	}
	off += 8;
	s->off = off;
	return off >= len;
}

/* One word of the extension, after the last '.' (bpf_loop callback). */
static long hash_ext_step(__u32 index, struct hashing *h)
{
	struct scratch *s = scratch();
	__u32 off, len;

	if (!s)
		return 1;
	off = s->off;
	len = s->len[0];
	if (off >= len)
		return 1;
	h->ext = mix(h->ext, name_word(s->name[0], off, len));
	s->off = off + 8;
	return 0;
}

/*
 * The OR of the values of the container's keys matching the path walk_path
 * found: exact, each directory prefix (looked up as its '/' is passed),
 * last component, its extension.  The same string as build_path's, so a
 * path too long or too deep is matched as user space sees it.
 */
static __always_inline __u32 path_keys(__u32 n, __u32 slot)
{
	struct hashing h = {
		.full = HASH_BASIS, .name = HASH_BASIS, .ext = HASH_BASIS, .slot = slot,
	};
	struct scratch *s = scratch();

	if (!s)
		return 0;
	if (n == 0) {  /* the root itself: "/" */
		h.full = mix(h.full, SLASH);
	} else {
		s->comp = n - 1;
		s->off = 0;
		if (n > 1)
			bpf_loop(PATH_MAX_B, hash_step, &h, 0);
		s->off = 0;
		bpf_loop(PATH_MAX_B / 8, hash_last_step, &h, 0);
		if (h.has_ext) {
			s->off = h.dot;
			bpf_loop(PATH_MAX_B / 8, hash_ext_step, &h, 0);
		}
	}
	h.found |= key_value(slot, K_OPEN_EXACT, h.full);
	h.found |= key_value(slot, K_OPEN_NAME, h.name);
	if (h.has_ext)
		h.found |= key_value(slot, K_OPEN_EXT, h.ext);
	return h.found;
}

static __always_inline struct file *fd_file(int fd)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct fdtable *fdt = task->files->fdt;
	__u64 f;

	if (fd < 0 || (unsigned int)fd >= fdt->max_fds)
		return NULL;
	f = read_u64((__u64)fdt->fd + 8 * (__u64)fd);
	if (!f)
		return NULL;
	return bpf_rdonly_cast((void *)f, bpf_core_type_id_kernel(struct file));
}

#endif /* NSBOX_GUARD_PATHS_H */
