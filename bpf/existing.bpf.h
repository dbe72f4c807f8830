/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * Start-up adoption: the sockets that existed before tracing, so that their
 * children and their ends are reported too. User space runs these
 * iterators after the hooks are attached:
 *  1. iter/task_file visits every open file of every process and tells user
 *     space of each TCP and UDP socket, with the process holding it.
 *  2. In batches of at most MAX_FD_OWNERS sockets, by inode number, user
 *     space fills fd_owners, and iter/tcp and iter/udp run in each network
 *     namespace holding a socket or a process, adopting the batch's
 *     sockets with their owners.
 * The batches keep the kernel's tables bounded however many sockets exist.
 */
#ifndef __PORTLIFE_EXISTING_BPF_H
#define __PORTLIFE_EXISTING_BPF_H

#include "common.bpf.h"
#include "udp.bpf.h"

/* The protocols being traced, whose sockets are adopted; set before load. */
const volatile bool adopt_tcp_sockets = true;
const volatile bool adopt_udp_sockets = true;

/* A socket a process holds, as iter/task_file tells user space of it. */
struct sock_file {
	__u64 ino;        /* the socket's inode number */
	__u64 start;      /* when the process started, in ns (CLOCK_MONOTONIC) */
	__u64 cgroup_id;  /* the process's cgroup v2 id */
	__u32 pid;
	__u32 uid;
	__u32 fd;         /* its descriptor in the process */
	__u32 netns;      /* the socket's network namespace */
	__u32 task_netns; /* the process's */
	__u16 lport;      /* host order; 0 if none */
	__u8 proto;       /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 state;       /* TCP: its state; UDP: 0 */
	char comm[COMM_LEN];
};

/* Emits struct sock_file to BTF, so bpf2go generates its Go type. */
const struct sock_file *unused_sock_file __attribute__((unused));

/* A process that held a socket when tracing started. */
struct owner {
	__u64 cgroup_id;
	__u32 pid;
	__u32 uid;
	char comm[COMM_LEN];
};

#define MAX_FD_OWNERS 65536

/*
 * The owners of one batch of the sockets that existed at start, by socket
 * inode. User space fills it before the batch's walks and empties it after.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MAX_FD_OWNERS);
	__type(key, __u64);
	__type(value, struct owner);
} fd_owners SEC(".maps");

/*
 * The batch being adopted: sockets whose inode lies in [lo, hi]. The
 * batches cover every inode number, 0 (no process holds the socket)
 * included, so each socket is adopted in exactly one. Set by user space.
 */
struct batch {
	__u64 lo;
	__u64 hi;
} adopt_batch;

struct listen_key {
	__u32 netns;
	__u16 port;
	__u16 pad;
};

/*
 * The listening ports of the namespace being walked, with the listener's
 * owner: user space puts in those that processes hold, and the walk adds
 * any other it meets, with no owner. iter/tcp visits listeners before
 * connections, so a connection on a listening port was accepted; one that
 * no process holds (not accept()ed yet, or closed and orphaned) gets the
 * listener's owner. Emptied by user space after each namespace, which has
 * at most 65,535 listening ports.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, struct listen_key);
	__type(value, struct owner);
} listen_ports SEC(".maps");

/* iter/task_file: one open file of one process. */
static __always_inline int find_owner(struct bpf_iter__task_file *ctx)
{
	struct task_struct *task = ctx->task, *leader;
	struct file *file = ctx->file;
	struct sock_file f = {};
	struct socket *sock;
	struct sock *sk;
	__u16 family, type;

	if (!task || !file)
		return 0;
	/*
	 * Without bpf_sock_from_file() (GAP_SOCK_FROM_FILE), a socket's file is
	 * told by its inode's type, and holds its struct socket where the helper
	 * finds it. The socket is read with CO-RE probe reads on either path: a
	 * pointer read from private_data carries no type for the verifier.
	 */
	if (!(cfg.gaps & GAP_SOCK_FROM_FILE))
		sock = bpf_sock_from_file(file);
	else if ((file->f_inode->i_mode & S_IFMT) == S_IFSOCK)
		sock = file->private_data;
	else
		sock = 0;
	if (!sock)
		return 0;
	sk = BPF_CORE_READ(sock, sk);
	if (!sk)
		return 0;
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return 0;
	f.proto = BPF_CORE_READ(sk, sk_protocol);
	type = BPF_CORE_READ(sk, sk_type);
	if (!(f.proto == IPPROTO_TCP && type == SOCK_STREAM && adopt_tcp_sockets) &&
	    !(f.proto == IPPROTO_UDP && type == SOCK_DGRAM && adopt_udp_sockets))
		return 0;
	if (f.proto == IPPROTO_TCP)
		f.state = BPF_CORE_READ(sk, __sk_common.skc_state);
	f.lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	f.ino = file->f_inode->i_ino;
	f.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	f.fd = ctx->fd;
	leader = task->group_leader;
	f.pid = task->tgid;
	f.start = leader->start_time;
	f.uid = task->cred->uid.val;
	f.cgroup_id = task->cgroups->dfl_cgrp->kn->id;
	f.task_netns = task->nsproxy->net_ns->ns.inum;
	bpf_probe_read_kernel(f.comm, sizeof(f.comm), leader->comm);
	bpf_seq_write(ctx->meta->seq, &f, sizeof(f));
	return 0;
}

/* The inode of sk's socket file; 0 if no process holds it. */
static __always_inline __u64 sock_ino(struct sock *sk)
{
	struct socket *sock = sk->sk_socket;

	if (!sock || !sock->file)
		return 0;
	return sock->file->f_inode->i_ino;
}

static __always_inline bool in_batch(__u64 ino)
{
	return ino >= adopt_batch.lo && ino <= adopt_batch.hi;
}

static __always_inline void owner_into(struct event *e, const struct owner *o, __u8 source)
{
	e->pid = o->pid;
	e->tid = o->pid;
	e->uid = o->uid;
	e->cgroup_id = o->cgroup_id;
	__builtin_memcpy(e->comm, o->comm, sizeof(e->comm));
	e->pid_source = source;
}

/* iter/tcp: one TCP socket of the namespace, listeners first. */
static __always_inline int adopt_tcp(struct sock_common *skc)
{
	struct listen_key lk = {};
	struct event owner = {};
	struct owner none = {}, *o;
	struct tcp_sock *tp;
	struct sock *sk;
	struct conn *c;
	__u64 ino;
	__u8 state;

	if (!skc)
		return 0;
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0; /* timewait and request sockets hold no process */
	sk = (struct sock *)tp;
	state = skc->skc_state;
	lk.netns = sk->__sk_common.skc_net.net->ns.inum;
	lk.port = skc->skc_num;
	/* Every batch notes every listener: the table is emptied per namespace. */
	if (state == TCP_LISTEN) {
		/*
		 * Compared as an int: kernels before 6.2 or so may hand an
		 * iterator the error zero-extended from 32 bits.
		 */
		int err = bpf_map_update_elem(&listen_ports, &lk, &none, BPF_NOEXIST);

		if (err && err != -EEXIST)
			count_drop(DROP_TABLE_FULL);
	}
	ino = sock_ino(sk);
	if (!in_batch(ino) || conn_of(sk, false))
		return 0; /* another batch's, or a hook got to it first */

	o = bpf_map_lookup_elem(&fd_owners, &ino);
	if (o)
		owner_into(&owner, o, PID_SOURCE_FD_OWNER);
	read_tuple(sk, &owner);
	switch (state) {
	case TCP_LISTEN:
		/* Tracked whatever the filters: its children are filtered. */
		c = conn_of(sk, true);
		if (!c)
			return 0;
		begin(c, sk, &owner, DIRECTION_INBOUND, PHASE_LISTENER);
		/*
		 * What the connections it accepts from now on say of their owner,
		 * until an accept() hook names the process that accepted each.
		 */
		if (o)
			c->e.pid_source = PID_SOURCE_LISTENER_FD_OWNER;
		note_listener(sk, c);
		return 0;
	case TCP_SYN_SENT:
		/* A connect in progress, perhaps retrying: its outcome is reported. */
		owner.direction = DIRECTION_OUTBOUND;
		if (!owner_wanted(&owner))
			return 0;
		c = conn_of(sk, true);
		if (!c)
			return 0;
		begin(c, sk, &owner, DIRECTION_OUTBOUND, PHASE_CONNECTING);
		c->e.start_ns = 0;
		c->e.flags |= EVENT_F_PRE_EXISTING;
		return 0;
	case TCP_ESTABLISHED:
	case TCP_FIN_WAIT1:
	case TCP_FIN_WAIT2:
	case TCP_CLOSE_WAIT:
	case TCP_LAST_ACK:
	case TCP_CLOSING:
		break;
	default:
		return 0;
	}

	o = bpf_map_lookup_elem(&listen_ports, &lk);
	owner.direction = o ? DIRECTION_INBOUND : DIRECTION_OUTBOUND;
	if (o && o->pid && owner.pid_source == PID_SOURCE_UNKNOWN)
		owner_into(&owner, o, PID_SOURCE_LISTENER_FD_OWNER);
	if (!owner_wanted(&owner) || !tuple_wanted(sk, &owner))
		return 0;
	c = conn_of(sk, true);
	if (!c)
		return 0;
	begin(c, sk, &owner, owner.direction, PHASE_OPEN);
	c->e.start_ns = 0;
	c->e.flags |= EVENT_F_PRE_EXISTING;
	if (state == TCP_FIN_WAIT1 || state == TCP_FIN_WAIT2 || state == TCP_CLOSING)
		c->e.closed_by = CLOSED_BY_LOCAL;
	else if (state == TCP_CLOSE_WAIT || state == TCP_LAST_ACK)
		c->e.closed_by = CLOSED_BY_REMOTE;
	return 0;
}

/* iter/udp: one UDP socket of the namespace. */
static __always_inline int adopt_udp(struct sock *sk)
{
	struct event owner = {};
	struct owner *o;
	struct conn *c;
	__u64 ino;
	__u16 rport;

	if (!sk)
		return 0;
	ino = sock_ino(sk);
	if (!in_batch(ino) || conn_of(sk, false))
		return 0;
	o = bpf_map_lookup_elem(&fd_owners, &ino);
	if (o)
		owner_into(&owner, o, PID_SOURCE_FD_OWNER);
	owner.proto = IPPROTO_UDP;
	rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (rport) {
		read_tuple(sk, &owner);
		owner.destinations = 1;
		owner.flags |= EVENT_F_CONNECTED;
	} else {
		udp_local(sk, &owner);
	}
	if (!owner.lport)
		return 0;
	/* Which side chose the port is not recorded anywhere: infer it. */
	owner.direction = rport || in_ephemeral_range(sk, owner.lport) ? DIRECTION_OUTBOUND : DIRECTION_INBOUND;
	if (!owner_wanted(&owner) || !tuple_wanted(sk, &owner))
		return 0;
	c = conn_of(sk, true);
	if (!c)
		return 0;
	__builtin_memcpy(&c->e, &owner, sizeof(owner));
	c->e.cookie = sk_cookie(sk);
	c->e.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	c->e.flags |= EVENT_F_PRE_EXISTING;
	c->phase = PHASE_OPEN;
	return 0;
}

#endif /* __PORTLIFE_EXISTING_BPF_H */
