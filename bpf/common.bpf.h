/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * What every part of the kernel side shares: the configuration, the maps
 * that carry events and per-socket state, and the rules applied to every
 * event (owner, filters, tuple, emission).
 */
#ifndef __PORTLIFE_COMMON_BPF_H
#define __PORTLIFE_COMMON_BPF_H

#include "kernel.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "portlife.h"

/* Set by user space before load; the verifier prunes what they disable. */
const volatile struct config cfg = {};

/* Every event, in order, for user space. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20); /* resized by user space before load */
	__type(value, struct event); /* emits the type to BTF for bpf2go */
} events SEC(".maps");

/* What the kernel side could not deliver or track, per enum drop_reason. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DROP_REASON_MAX);
	__type(key, __u32);
	__type(value, __u64);
} drops SEC(".maps");

/* --raddr networks. Keys are IPv6; IPv4 networks are stored v4-mapped. */
struct raddr_key {
	__u32 prefixlen;
	__u8 addr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MAX_RADDR_NETS);
	__type(key, struct raddr_key);
	__type(value, __u8);
} raddr_nets SEC(".maps");

enum phase {
	PHASE_LISTENER = 1,   /* a listening socket: holds the owner for its children */
	PHASE_CONNECTING = 2, /* SYN_SENT */
	PHASE_HANDSHAKE = 3,  /* an accepted child in SYN_RECV */
	PHASE_OPEN = 4,       /* established; the close event is being built */
	PHASE_CLOSED = 5,     /* the port was released; the close event waits for the socket's destruction */
	PHASE_DONE = 6,
	PHASE_PENDING = 7, /* UDP: owned, but the remote end is not known yet: no open sent */
	PHASE_IGNORED = 8, /* UDP: left out by the filters */
};

struct conn {
	struct event e; /* the event under construction */
	__u32 first_dest; /* UDP: hash of the first destination */
	__u32 last_dest;  /* UDP: hash of the latest destination */
	__u8 phase;
	/*
	 * UDP, without datagram hooks: the socket's address, stored and read
	 * back so that a cgroup hook gets a plain address that CO-RE reads may
	 * offset (the verifier forbids offsetting the socket pointer it gives).
	 */
	__u64 sk_addr;
};

/*
 * Per-socket state of every tracked socket.
 * TCP: created at SYN_SENT (connect), TCP_LISTEN (listen) and by the
 * start-up iterator for sockets that existed before tracing. BPF_F_CLONE
 * copies a listener's entry, and so its owner, into each accepted child.
 * UDP: created at bind or the first send, and by the iterator.
 * The kernel frees an entry with its socket; a socket without one is not
 * traced.
 */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_CLONE);
	__type(key, int);
	__type(value, struct conn);
} conns SEC(".maps");

static __always_inline void count_drop(__u32 reason)
{
	__u64 *n = bpf_map_lookup_elem(&drops, &reason);

	if (n)
		(*n)++;
}

/*
 * Where socket storage is not open to tracing programs (GAP_SK_STORAGE,
 * Linux 5.10), every socket's entry lives here instead, keyed by the
 * socket's address: created where socket storage would be, and deleted when
 * the socket is destroyed (tcp_destroy_sock, cgroup/sock_release), so it
 * holds the sockets alive and no more. User space sizes it, and leaves it at
 * one entry where socket storage serves.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1);
	__type(key, __u64);
	__type(value, struct conn);
} conns_by_sk SEC(".maps");

/* A blank entry, copied into conns_by_sk to create one. */
const volatile struct conn blank_conn = {};

/*
 * The entry of socket sk, created if create is set; NULL if it has none or
 * none could be made (counted). sk is a struct sock, or the struct bpf_sock
 * a cgroup hook gets, which is the same socket.
 */
static __always_inline struct conn *conn_of(void *sk, bool create)
{
	struct conn *c;
	__u64 key;

	if (!(cfg.gaps & GAP_SK_STORAGE)) {
		c = bpf_sk_storage_get(&conns, sk, 0, create ? BPF_SK_STORAGE_GET_F_CREATE : 0);
		if (!c && create)
			count_drop(DROP_STORAGE_FULL);
		return c;
	}
	key = (__u64)sk;
	c = bpf_map_lookup_elem(&conns_by_sk, &key);
	if (c || !create)
		return c;
	if (bpf_map_update_elem(&conns_by_sk, &key, (void *)&blank_conn, BPF_NOEXIST) ||
	    !(c = bpf_map_lookup_elem(&conns_by_sk, &key)))
		count_drop(DROP_STORAGE_FULL);
	return c;
}

/* Drops sk's entry: the socket is done with, or is not to be traced. */
static __always_inline void conn_forget(void *sk)
{
	__u64 key = (__u64)sk;

	if (!(cfg.gaps & GAP_SK_STORAGE))
		bpf_sk_storage_delete(&conns, sk);
	else
		bpf_map_delete_elem(&conns_by_sk, &key);
}

/*
 * The socket's cookie, the same in every event of one socket. Where tracing
 * programs may not ask for it (GAP_SOCKET_COOKIE, Linux 5.10 and 5.11), the
 * cookie the kernel already gave the socket: the programs below give every
 * TCP socket its cookie before its first state change (give_cookie,
 * tcp_child_cookie). Else, for a socket they missed (one from before
 * tracing, or made by the kernel itself), its address: unique among the
 * sockets alive, and read once per lifetime, so open and close agree.
 */
static __always_inline __u64 sk_cookie(struct sock *sk)
{
	__u64 cookie;

	if (!(cfg.gaps & GAP_SOCKET_COOKIE))
		return bpf_get_socket_cookie(sk);
	cookie = BPF_CORE_READ(sk, __sk_common.skc_cookie.counter);
	return cookie ? cookie : (__u64)sk;
}

/*
 * cgroup/sock_create, attached only with GAP_SOCKET_COOKIE: cgroup socket
 * programs may ask for a cookie on Linux 5.10, and asking makes the kernel
 * give the socket the cookie that sock_diag and SO_COOKIE will show, which
 * sk_cookie then reads. socket() runs this before connect() or listen()
 * can change the socket's state. Returns 1: the socket is allowed.
 */
static __always_inline int give_cookie(struct bpf_sock *ctx)
{
	if (ctx->protocol == IPPROTO_TCP)
		bpf_get_socket_cookie(ctx);
	return 1;
}

/*
 * Wake the reader once a batch has built up: a wakeup per event costs more
 * than the event. Only the events that cross the mark wake it. Above the
 * mark the reader is awake already, and each forced wakeup is an irq_work
 * (a self-IPI, which a hypervisor turns into a VM exit), so waking it for
 * every event while it catches up would slow it down further. User space
 * also drains on a timer, which bounds the delay of a quiet ring.
 */
static __always_inline __u64 wakeup_flags(void)
{
	__u64 avail;

	if (!cfg.wakeup_bytes)
		return 0; /* the kernel's default: wake a reader that has caught up */
	avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	if (avail >= cfg.wakeup_bytes && avail < cfg.wakeup_bytes + 4 * (sizeof(struct event) + 8))
		return BPF_RB_FORCE_WAKEUP;
	return BPF_RB_NO_WAKEUP;
}

/*
 * The current task, as the owner of a socket. comm is the process's name,
 * its thread group leader's, as /proc/PID/comm shows it and --comm matches
 * it: a thread may name itself (dig's isc-net-0000), and that name goes in
 * thread. bpf_get_current_task() is the one task helper every program type
 * here may call (tp_btf and the cgroup hooks alike).
 */
static __always_inline void set_owner(struct event *e, __u8 source)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u64 id = bpf_get_current_pid_tgid();

	e->pid = id >> 32;
	e->tid = (__u32)id;
	e->uid = (__u32)bpf_get_current_uid_gid();
	e->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(e->thread, sizeof(e->thread));
	if (BPF_CORE_READ_INTO(&e->comm, task, group_leader, comm))
		__builtin_memcpy(e->comm, e->thread, sizeof(e->comm));
	e->pid_source = source;
}

static __always_inline bool owner_wanted(const struct event *e)
{
	if (cfg.pid && e->pid != cfg.pid)
		return false;
	if (cfg.match_comm) {
		for (int i = 0; i < COMM_LEN; i++) {
			if (e->comm[i] != cfg.comm[i])
				return false;
			if (!e->comm[i])
				break;
		}
	}
	if (cfg.direction && e->direction != cfg.direction)
		return false;
	return true;
}

static __always_inline bool port_in(const volatile struct port_range *r, __u8 n, __u16 port)
{
	for (int i = 0; i < MAX_PORT_RANGES; i++) {
		if (i >= n)
			break;
		if (port >= r[i].lo && port <= r[i].hi)
			return true;
	}
	return false;
}

/*
 * Whether port is in net.ipv4.ip_local_port_range of sk's own network
 * namespace, as it is now: a container may have a range of its own, and the
 * range may change while portlife runs. BPF_CORE_READ works from every
 * program type here, the cgroup hooks included. Kernels before 6.8 guard
 * the two bounds with a seqlock, which this cannot take: a read racing a
 * sysctl write may mix the old and new bounds, for that one event.
 */
static __always_inline bool in_ephemeral_range(struct sock *sk, __u16 port)
{
	struct net *net = BPF_CORE_READ(sk, __sk_common.skc_net.net);
	struct local_ports *ports = &net->ipv4.ip_local_ports;
	__u16 lo, hi;

	if (bpf_core_field_exists(struct local_ports___old, range)) {
		struct local_ports___old *old = (void *)ports;

		lo = BPF_CORE_READ(old, range[0]);
		hi = BPF_CORE_READ(old, range[1]);
	} else {
		__u32 range = BPF_CORE_READ(ports, range);

		lo = range;
		hi = range >> 16;
	}
	return port >= lo && port <= hi;
}

/*
 * The ephemeral side is ours when we connected and the peer's when we
 * accepted. A connect that got no port at all failed to get an ephemeral one,
 * so it counts.
 */
static __always_inline bool is_ephemeral(struct sock *sk, const struct event *e)
{
	__u16 port = e->direction == DIRECTION_INBOUND ? e->rport : e->lport;

	if (!port)
		/* Outbound: no port could be had. Inbound: no peer is known yet. */
		return e->direction == DIRECTION_OUTBOUND;
	return in_ephemeral_range(sk, port);
}

/* Sends one event of sk, judging its ephemeral side now. */
static __always_inline void emit(struct sock *sk, const struct event *src, __u8 kind)
{
	struct event *e;
	__u8 flags;

	if (!(cfg.events & (1 << kind)))
		return;
	flags = src->flags;
	if (is_ephemeral(sk, src))
		flags |= EVENT_F_EPHEMERAL;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_drop(DROP_RINGBUF_FULL);
		return;
	}
	__builtin_memcpy(e, src, sizeof(*e));
	e->kind = kind;
	e->flags = flags;
	bpf_ringbuf_submit(e, wakeup_flags());
}

/*
 * The filters on a socket's own end, decidable once its local port is
 * known. The ephemeral side is the local port unless the socket is inbound.
 */
static __always_inline bool local_wanted(struct sock *sk, const struct event *e)
{
	if (cfg.n_lports && !port_in(cfg.lports, cfg.n_lports, e->lport))
		return false;
	if (cfg.ephemeral_only && e->direction != DIRECTION_INBOUND && !is_ephemeral(sk, e))
		return false;
	return true;
}

/*
 * The filters on the remote end, and on the family on the wire, which the
 * remote end decides (a dual-stack socket talking to a v4-mapped peer is
 * IPv4). A remote end that is not known (rport 0: a UDP socket that never
 * sent and never connected) is in no --rport range and no --raddr network,
 * and neither is an inbound socket's ephemeral side, its peer's port.
 */
static __always_inline bool remote_wanted(struct sock *sk, const struct event *e)
{
	if (cfg.family && e->family != cfg.family)
		return false;
	if (cfg.n_rports && (!e->rport || !port_in(cfg.rports, cfg.n_rports, e->rport)))
		return false;
	if (cfg.ephemeral_only && e->direction == DIRECTION_INBOUND && !is_ephemeral(sk, e))
		return false;
	if (cfg.match_raddr) {
		struct raddr_key key = { .prefixlen = 128 };

		if (!e->rport)
			return false;
		__builtin_memcpy(key.addr, e->raddr, sizeof(key.addr));
		if (!bpf_map_lookup_elem(&raddr_nets, &key))
			return false;
	}
	return true;
}

static __always_inline bool tuple_wanted(struct sock *sk, const struct event *e)
{
	return local_wanted(sk, e) && remote_wanted(sk, e);
}

static __always_inline bool is_v4_mapped(const __u8 *a)
{
	return !((const __u64 *)a)[0] && !a[8] && !a[9] && a[10] == 0xff && a[11] == 0xff;
}

static __always_inline void v4_mapped(__u8 *dst, __be32 addr)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(dst + 12, &addr, 4);
}

/*
 * Addresses and ports as they stand now. sk is a BTF pointer (tp_btf and
 * iterator programs), so fields are plain loads, relocated by CO-RE, rather
 * than helper calls. The local port reads 0 once the kernel has released it
 * (at TCP_CLOSE), but inet_sport keeps it.
 */
static __always_inline void read_tuple(struct sock *sk, struct event *e)
{
	struct sock_common *skc = &sk->__sk_common;

	e->lport = skc->skc_num;
	if (!e->lport)
		e->lport = bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
	e->rport = bpf_ntohs(skc->skc_dport);
	e->family = 4;
	if (skc->skc_family == AF_INET6) {
		__u32 *r6 = skc->skc_v6_daddr.in6_u.u6_addr32;

		/* A v4-mapped peer is IPv4 on the wire, and the v4 fields hold it. */
		if (r6[0] || r6[1] || r6[2] != bpf_htonl(0xffff)) {
			e->family = 6;
			__builtin_memcpy(e->raddr, r6, 16);
			__builtin_memcpy(e->laddr, skc->skc_v6_rcv_saddr.in6_u.u6_addr32, 16);
			return;
		}
	}
	v4_mapped(e->laddr, skc->skc_rcv_saddr);
	v4_mapped(e->raddr, skc->skc_daddr);
}

/* A fresh TCP lifetime for sk, in the storage entry c. */
static __always_inline void begin(struct conn *c, struct sock *sk, const struct event *owner,
				  __u8 direction, __u8 phase)
{
	__builtin_memcpy(&c->e, owner, sizeof(c->e));
	c->e.proto = IPPROTO_TCP;
	c->e.direction = direction;
	c->e.start_ns = bpf_ktime_get_boot_ns();
	c->e.cookie = sk_cookie(sk);
	c->e.netns = sk->__sk_common.skc_net.net->ns.inum;
	c->phase = phase;
}

struct listener_key {
	__u32 netns;
	__u16 port;
	__u16 _pad;
};

/*
 * Without socket storage (GAP_SK_STORAGE) no entry is cloned into a
 * listener's children: a copy of each listener's entry waits here for them,
 * by network namespace and port. Of two listeners on one port (one per
 * address, or SO_REUSEPORT), the latest names the children of both. User
 * space sizes it, and leaves it at one entry where socket storage serves.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1);
	__type(key, struct listener_key);
	__type(value, struct conn);
} listeners SEC(".maps");

static __always_inline void note_listener(struct sock *sk, struct conn *c)
{
	struct listener_key key = {};

	if (!(cfg.gaps & GAP_SK_STORAGE))
		return;
	key.netns = c->e.netns;
	key.port = sk->__sk_common.skc_num;
	if (bpf_map_update_elem(&listeners, &key, c, BPF_ANY))
		count_drop(DROP_TABLE_FULL);
}

/* A listener closes: its copy goes, unless a newer listener's replaced it. */
static __always_inline void forget_listener(struct sock *sk, struct conn *c)
{
	struct listener_key key = {};
	struct conn *l;

	key.netns = c->e.netns;
	key.port = sk->__sk_common.skc_num;
	l = bpf_map_lookup_elem(&listeners, &key);
	if (l && l->e.cookie == c->e.cookie)
		bpf_map_delete_elem(&listeners, &key);
}

/* A socket's close event, once both its end and its destruction were seen. */
static __always_inline void emit_close(struct sock *sk, struct conn *c)
{
	if (cfg.min_duration_ns && c->e.start_ns &&
	    c->e.end_ns - c->e.start_ns < cfg.min_duration_ns)
		return;
	emit(sk, &c->e, EVENT_CLOSE);
}

#endif /* __PORTLIFE_COMMON_BPF_H */
