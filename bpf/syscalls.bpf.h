/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * Calls that fail before the protocol takes over. A connect() that routing
 * or policy refuses (ENETUNREACH, EACCES, EPERM, EINVAL), or a UDP connect()
 * that finds no local port (EAGAIN), never reaches a state any socket hook
 * sees, and a failed bind() changes nothing at all: only the call's return
 * says so. The per-syscall tracepoints syscalls:sys_{enter,exit}_connect and
 * sys_{enter,exit}_bind see it, and run for these two calls alone.
 *
 * A TCP connect() that gets as far as SYN_SENT is the TCP state machine's
 * from there (tcp.bpf.h reports SYN_SENT -> CLOSE, no_ephemeral_port
 * included): it hands the call over, and its exit reports nothing.
 *
 * Where tracepoint programs may not use task storage (GAP_TASK_STORAGE,
 * Linux 5.10), a hash keyed by thread id takes its place.
 */
#ifndef __PORTLIFE_SYSCALLS_BPF_H
#define __PORTLIFE_SYSCALLS_BPF_H

#include "common.bpf.h"

/* include/uapi/asm-generic/errno*.h, include/linux/errno.h */
#define EINTR 4
#define EISCONN 106
#define EALREADY 114
#define EINPROGRESS 115
#define ERESTARTSYS 512
#define ERESTARTNOINTR 513
#define ERESTARTNOHAND 514
#define ERESTART_RESTARTBLOCK 516

/* A connect() or bind() on an inet socket, from entry to exit. */
struct call {
	__u64 sk;       /* the struct sock, found at entry */
	__u64 addr;     /* the sockaddr argument, in the caller's memory */
	__u64 start_ns; /* CLOCK_BOOTTIME at entry */
	__u32 addrlen;
	__u8 kind;      /* EVENT_CONNECT_FAILED or EVENT_BIND_FAILED */
	__u8 active;    /* between entry and exit (or a TCP connect's SYN_SENT) */
	__u8 _pad[2];
};

/*
 * The call a thread is in: a thread is in one call at a time. Task-local
 * storage, so there is one entry per thread that ever made an inet
 * connect() or bind() while tracing, freed by the kernel with the thread:
 * bounded by the host's threads, and nothing to leak or evict. Entry sets
 * active; the exit clears it, or a TCP connect()'s move to SYN_SENT does,
 * from where the state machine reports the outcome. The exit hook is
 * attached before the entry hook and detached after it, so every entry
 * meets its exit. A lookup is a per-task cache hit: cheaper than a hash
 * insert and delete per call.
 */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct call);
} calls SEC(".maps");

/*
 * The calls in flight where task storage does not serve (GAP_TASK_STORAGE;
 * user space then makes calls a one-entry hash, a type every kernel has).
 * An entry lives from the call's entry to its exit. A thread that never
 * returns from its call (it died in it) leaves its entry behind until its
 * thread id is reused; user space sizes the table well above the calls
 * that can be in flight at once, and a full one is counted. Preallocated:
 * Linux 5.10 warns of tracepoint programs that allocate map entries as
 * they run.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct call);
} calls_by_tid SEC(".maps");

/* A blank entry, copied into calls_by_tid to create one. */
const volatile struct call blank_call = {};

/* The current thread's call, created if create is set; NULL if none. */
static __always_inline struct call *current_call(bool create)
{
	__u32 tid;
	struct call *c;

	if (!(cfg.gaps & GAP_TASK_STORAGE)) {
		c = bpf_task_storage_get(&calls, bpf_get_current_task_btf(), 0,
					 create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
		if (!c && create)
			count_drop(DROP_STORAGE_FULL);
		return c;
	}
	tid = (__u32)bpf_get_current_pid_tgid();
	c = bpf_map_lookup_elem(&calls_by_tid, &tid);
	if (c || !create)
		return c;
	if (bpf_map_update_elem(&calls_by_tid, &tid, (void *)&blank_call, BPF_NOEXIST) ||
	    !(c = bpf_map_lookup_elem(&calls_by_tid, &tid)))
		count_drop(DROP_STORAGE_FULL);
	return c;
}

/* The current thread's call is over. */
static __always_inline void current_call_done(void)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();

	if (cfg.gaps & GAP_TASK_STORAGE)
		bpf_map_delete_elem(&calls_by_tid, &tid);
}

/*
 * The inet socket behind the current task's descriptor fd, or NULL if it
 * is not one. The caller is inside a syscall on fd, which holds the file.
 * Everything is read with CO-RE probe reads, from bpf_get_current_task(),
 * which every kernel has. A file is a socket if its private_data is a
 * struct socket that points back at it.
 */
static __always_inline struct socket *inet_socket_of_fd(__u64 fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds, *file = 0;
	struct socket *sock;
	struct sock *sk;
	__u16 family;

	if (!fdt || fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	fds = BPF_CORE_READ(fdt, fd);
	if (bpf_core_read(&file, sizeof(file), &fds[fd]) || !file)
		return 0;
	sock = BPF_CORE_READ(file, private_data);
	if (!sock || BPF_CORE_READ(sock, file) != file)
		return 0;
	sk = BPF_CORE_READ(sock, sk);
	if (!sk)
		return 0;
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return 0;
	return sock;
}

/* sys_enter_connect, sys_enter_bind: remember a call on an inet socket. */
static __always_inline int call_entered(struct syscall_enter_args *ctx, __u8 kind)
{
	struct socket *sock;
	struct call *c;

	if (!(cfg.events & (1 << kind)))
		return 0;
	sock = inet_socket_of_fd(ctx->args[0]);
	if (!sock)
		return 0;
	/*
	 * Connecting or connected already: EALREADY, EISCONN, or the error of
	 * an earlier non-blocking TCP connect, which the state machine reported
	 * when it happened. (A UDP socket stays SS_UNCONNECTED.)
	 */
	if (kind == EVENT_CONNECT_FAILED && BPF_CORE_READ(sock, state) != SS_UNCONNECTED)
		return 0;
	c = current_call(true);
	if (!c)
		return 0;
	c->sk = (__u64)BPF_CORE_READ(sock, sk);
	c->addr = ctx->args[1];
	c->addrlen = ctx->args[2];
	c->start_ns = bpf_ktime_get_boot_ns();
	c->kind = kind;
	c->active = 1;
	return 0;
}

/*
 * CLOSE -> SYN_SENT inside connect(): the TCP state machine reports the
 * outcome from here on, so the call's exit must not.
 */
static __always_inline void connect_handed_over(struct sock *sk)
{
	struct call *c;

	if (!(cfg.events & (1 << EVENT_CONNECT_FAILED)))
		return;
	c = current_call(false);
	if (c && c->active && c->sk == (__u64)sk)
		c->active = 0;
}

/*
 * Whether a call's return is a failure. A non-blocking connect() in progress
 * is not, nor one already connecting or connected; an interrupted one goes
 * on in the background (or is restarted).
 */
static __always_inline bool call_failed(__s64 ret)
{
	switch (ret) {
	case -EINPROGRESS:
	case -EALREADY:
	case -EISCONN:
	case -EINTR:
	case -ERESTARTSYS:
	case -ERESTARTNOINTR:
	case -ERESTARTNOHAND:
	case -ERESTART_RESTARTBLOCK:
		return false;
	}
	return ret < 0;
}

/* The address a call was given, read from the caller's memory. */
struct sockaddr_any {
	union {
		__u16 family;
		struct sockaddr_in v4;
		struct sockaddr_in6 v6;
	};
};

/*
 * Reads the address a call was given into addr and port. It is read at the
 * exit, on failure only: the kernel has just copied it, so it is in memory.
 * Returns the family on the wire (4, or 6 unless v4-mapped), or 0 if the
 * address is not an inet one or could not be read.
 */
static __always_inline __u8 call_addr(const struct call *call, __u8 *addr, __u16 *port, __u16 *family)
{
	struct sockaddr_any sa = {};
	__u32 len = call->addrlen;

	if (len > sizeof(sa))
		len = sizeof(sa);
	if (len < sizeof(sa.family) || bpf_probe_read_user(&sa, len, (void *)call->addr))
		return 0;
	*family = sa.family;
	if (sa.family == AF_INET && len >= 8) {
		v4_mapped(addr, sa.v4.sin_addr);
		*port = bpf_ntohs(sa.v4.sin_port);
		return 4;
	}
	if (sa.family == AF_INET6 && len >= 24) {
		__builtin_memcpy(addr, sa.v6.sin6_addr, 16);
		*port = bpf_ntohs(sa.v6.sin6_port);
		return is_v4_mapped(addr) ? 4 : 6;
	}
	return 0;
}

/* The socket's local address now: for connect(), bound or chosen, or none. */
static __always_inline void call_local(struct sock *sk, struct event *e)
{
	e->lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	if (e->family == 6)
		BPF_CORE_READ_INTO(&e->laddr, sk, __sk_common.skc_v6_rcv_saddr);
	else
		v4_mapped(e->laddr, BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr));
}

/* A failed call's event, through the same filters as every other. */
static __always_inline void call_report(const struct call *call, __s32 err)
{
	struct sock *sk = (struct sock *)call->sk;
	struct event e = {};
	__u8 addr[16] = {};
	__u16 port = 0, sa_family = AF_UNSPEC, proto, type;
	__u8 family;

	proto = BPF_CORE_READ(sk, sk_protocol);
	type = BPF_CORE_READ(sk, sk_type);
	if (proto == IPPROTO_TCP && type == SOCK_STREAM) {
		if (!(cfg.protos & TRACED_TCP))
			return;
	} else if (proto == IPPROTO_UDP && type == SOCK_DGRAM) {
		if (!(cfg.protos & TRACED_UDP))
			return;
	} else {
		return; /* raw, SCTP, MPTCP, UDP-Lite, ICMP: not traced */
	}
	family = call_addr(call, addr, &port, &sa_family);
	if (call->kind == EVENT_CONNECT_FAILED && sa_family == AF_UNSPEC)
		return; /* connect(AF_UNSPEC) dissolves an association: not a connect */
	if (!family)
		family = BPF_CORE_READ(sk, __sk_common.skc_family) == AF_INET6 ? 6 : 4;

	set_owner(&e, call->kind == EVENT_CONNECT_FAILED ? PID_SOURCE_CONNECT : PID_SOURCE_BIND);
	e.proto = proto;
	e.family = family;
	e.error = err;
	e.start_ns = call->start_ns;
	e.end_ns = bpf_ktime_get_boot_ns();
	e.cookie = BPF_CORE_READ(sk, __sk_common.skc_cookie.counter);
	e.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	e.flags = EVENT_F_SYSCALL;
	if (call->kind == EVENT_CONNECT_FAILED) {
		__builtin_memcpy(e.raddr, addr, 16);
		e.rport = port;
		e.direction = DIRECTION_OUTBOUND;
		call_local(sk, &e);
	} else {
		/* As for UDP's bind(): a port by number is a server's. */
		__builtin_memcpy(e.laddr, addr, 16);
		e.lport = port;
		e.direction = port ? DIRECTION_INBOUND : DIRECTION_OUTBOUND;
		/* The port asked for lies in the range the kernel hands out. */
		if (port && in_ephemeral_range(sk, port))
			e.flags |= EVENT_F_EPHEMERAL;
	}
	if (owner_wanted(&e) && tuple_wanted(sk, &e))
		emit(sk, &e, call->kind);
}

/* sys_exit_connect, sys_exit_bind: report the call if it failed. */
static __always_inline int call_exited(struct syscall_exit_args *ctx, __u8 kind)
{
	struct call *c = current_call(false);
	struct call call;

	if (!c)
		return 0;
	__builtin_memcpy(&call, c, sizeof(call));
	c->active = 0;
	current_call_done();
	if (!call.active || call.kind != kind || !call_failed(ctx->ret))
		return 0;
	call_report(&call, -ctx->ret);
	return 0;
}

#endif /* __PORTLIFE_SYSCALLS_BPF_H */
