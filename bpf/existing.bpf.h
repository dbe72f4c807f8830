/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * Start-up adoption. The TCP and UDP socket iterators run once in each
 * network namespace, after the hooks are attached, and adopt the sockets
 * that existed before tracing, so that their children and their closes are
 * reported too.
 */
#ifndef __PORTLIFE_EXISTING_BPF_H
#define __PORTLIFE_EXISTING_BPF_H

#include "common.bpf.h"
#include "udp.bpf.h"

/*
 * Owners of the sockets that existed at start, by socket inode. User space
 * fills it from /proc before the start-up iterator runs and empties it after.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MAX_FD_OWNERS);
	__type(key, __u64);
	__type(value, struct owner);
} fd_owners SEC(".maps");

struct listen_key {
	__u32 netns;
	__u16 port;
	__u16 pad;
};

/*
 * Listening ports the start-up iterator saw. It visits listeners before
 * connections, so a connection on a listening port was accepted. Emptied
 * by user space with fd_owners.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MAX_FD_OWNERS);
	__type(key, struct listen_key);
	__type(value, __u8);
} listen_ports SEC(".maps");

/* The owner /proc showed for a socket that existed at start, if any. */
static __always_inline void fd_owner(struct sock *sk, struct event *e)
{
	struct socket *sock = sk->sk_socket;
	struct owner *o;
	__u64 ino;

	if (!sock || !sock->file)
		return; /* orphaned: no process holds it */
	ino = sock->file->f_inode->i_ino;
	o = bpf_map_lookup_elem(&fd_owners, &ino);
	if (!o)
		return;
	e->pid = o->pid;
	e->tid = o->pid;
	e->uid = o->uid;
	e->cgroup_id = o->cgroup_id;
	__builtin_memcpy(e->comm, o->comm, sizeof(e->comm));
	e->pid_source = PID_SOURCE_FD_OWNER;
}

/* iter/tcp: one TCP socket of the namespace, listeners first. */
static __always_inline int adopt_tcp(struct sock_common *skc)
{
	struct listen_key lk = {};
	struct event owner = {};
	struct tcp_sock *tp;
	struct sock *sk;
	struct conn *c;
	__u8 state, one = 1;

	if (!skc)
		return 0;
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0; /* timewait and request sockets hold no process */
	sk = (struct sock *)tp;
	if (bpf_sk_storage_get(&conns, sk, 0, 0))
		return 0; /* a hook got to it first */

	fd_owner(sk, &owner);
	read_tuple(sk, &owner);
	lk.netns = sk->__sk_common.skc_net.net->ns.inum;
	lk.port = owner.lport;
	state = skc->skc_state;
	switch (state) {
	case TCP_LISTEN:
		/* Tracked whatever the filters: its children are filtered. */
		if (bpf_map_update_elem(&listen_ports, &lk, &one, BPF_ANY))
			count_drop(DROP_TABLE_FULL);
		c = bpf_sk_storage_get(&conns, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (!c) {
			count_drop(DROP_STORAGE_FULL);
			return 0;
		}
		begin(c, sk, &owner, DIRECTION_INBOUND, PHASE_LISTENER);
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

	owner.direction = bpf_map_lookup_elem(&listen_ports, &lk) ? DIRECTION_INBOUND : DIRECTION_OUTBOUND;
	if (!owner_wanted(&owner) || !tuple_wanted(sk, &owner))
		return 0;
	c = bpf_sk_storage_get(&conns, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!c) {
		count_drop(DROP_STORAGE_FULL);
		return 0;
	}
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
	struct conn *c;
	__u16 rport;

	if (!sk || bpf_sk_storage_get(&conns, sk, 0, 0))
		return 0;
	fd_owner(sk, &owner);
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
	c = bpf_sk_storage_get(&conns, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!c) {
		count_drop(DROP_STORAGE_FULL);
		return 0;
	}
	__builtin_memcpy(&c->e, &owner, sizeof(owner));
	c->e.cookie = bpf_get_socket_cookie(sk);
	c->e.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	c->e.flags |= EVENT_F_PRE_EXISTING;
	c->phase = PHASE_OPEN;
	return 0;
}

#endif /* __PORTLIFE_EXISTING_BPF_H */
