/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * UDP lifetimes. There is no state tracepoint: the cgroup socket hooks on
 * the cgroup v2 root see bind and unconnected sends with their addresses,
 * and the release of every socket; fexit programs on UDP's own send and
 * receive functions, or where the kernel cannot attach them the
 * sock_send_length and sock_recv_length tracepoints, count each datagram
 * and show the peer of a connected socket. Every cgroup program returns
 * 1: portlife observes and never refuses a syscall.
 *
 * A socket's open waits until its remote end is known: the peer connect()
 * fixed, or the first destination it sent to, seen with its first datagram.
 * Only then can every filter be decided (a resolver binds port 0 before it
 * connects; a dual-stack socket's family on the wire is its peer's) and the
 * ephemeral side of a server, its peer's port, be judged, so that open and
 * close agree. Until then the socket is PHASE_PENDING: the filters on what
 * is known already (the owner, the local port) may leave it out early, and
 * one whose remote end never becomes known is judged at its release on what
 * is known, with a close and no open.
 */
#ifndef __PORTLIFE_UDP_BPF_H
#define __PORTLIFE_UDP_BPF_H

#include "common.bpf.h"

#define MSG_PEEK 2

/* Distinct destinations a socket counts exactly; a power of two. */
#define UDP_DEST_SLOTS 64

/* The hashes of a socket's distinct destinations: open addressing, 0 free. */
struct dest_set {
	__u32 slot[UDP_DEST_SLOTS];
};

/*
 * The destinations of each UDP socket that sent to more than one: created
 * at its second distinct destination, so that a socket with one peer (a DNS
 * query) costs nothing more, and freed by the kernel with the socket.
 */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct dest_set);
} dest_sets SEC(".maps");

/*
 * Without the datagram hooks (GAP_DATAGRAM_HOOKS), the open of a connected
 * UDP socket goes out at connect()'s return, from a tracepoint program that
 * may not reach socket storage; its start is kept here, by the socket's
 * cookie, for the socket's next cgroup hook (a send with an address, or its
 * release), which takes it: no second open, and a close that agrees on the
 * start. Preallocated (Linux 5.10 warns of tracepoint programs naming a map
 * that allocates as it runs); user space sizes it on those kernels.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u64);
	__type(value, __u64);
} udp_opened SEC(".maps");

/* A small hash of an address and port, to tell destinations apart; never 0. */
static __always_inline __u32 dest_hash(const __u8 *addr, __u16 port)
{
	__u32 h = 2166136261u ^ port;

	for (int i = 0; i < 16; i++)
		h = (h ^ addr[i]) * 16777619u;
	return h ? h : 1;
}

/* Adds h to s; true if it was not there yet. */
static __always_inline bool dest_set_add(struct dest_set *s, __u32 h)
{
	for (int i = 0; i < UDP_DEST_SLOTS; i++) {
		__u32 *slot = &s->slot[(h + i) & (UDP_DEST_SLOTS - 1)];

		if (*slot == h)
			return false;
		if (!*slot) {
			*slot = h;
			return true;
		}
	}
	return false;
}

/*
 * Records a destination of sk, a socket pointer of either kind the storage
 * helpers take. The first one, or the connected peer, becomes the remote
 * end. Distinct ones are counted exactly up to UDP_DEST_SLOTS, where the
 * count stops: past that, a new destination cannot be told from one seen.
 */
static __always_inline void udp_dest(void *sk, struct conn *c, const __u8 *addr, __u16 port, bool connected)
{
	__u32 h = dest_hash(addr, port);
	struct dest_set *s;

	/* A socket adopted at start knows its peer, but not the peer's hash. */
	if (c->e.destinations && !c->first_dest)
		c->first_dest = dest_hash(c->e.raddr, c->e.rport);
	if (connected || !c->e.destinations) {
		__builtin_memcpy(c->e.raddr, addr, 16);
		c->e.rport = port;
		c->e.family = is_v4_mapped(addr) ? 4 : 6;
	}
	if (!c->e.destinations) {
		c->first_dest = c->last_dest = h;
		c->e.destinations = 1;
		return;
	}
	/* Sending to the same peer again is the common case: no set to look up. */
	if (h == c->last_dest || c->e.destinations >= UDP_DEST_SLOTS)
		return;
	c->last_dest = h;
	if (c->e.destinations == 1 && h == c->first_dest)
		return;
	s = bpf_sk_storage_get(&dest_sets, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!s) {
		count_drop(DROP_STORAGE_FULL);
		return;
	}
	if (c->e.destinations == 1)
		dest_set_add(s, c->first_dest);
	if (dest_set_add(s, h))
		c->e.destinations++;
}

/* A UDP socket seen for the first time, by the current task. */
static __always_inline void udp_begin(struct conn *c, __u64 cookie, __u8 direction)
{
	struct event owner = {};

	set_owner(&owner, PID_SOURCE_SOCKET);
	owner.proto = IPPROTO_UDP;
	owner.direction = direction;
	owner.start_ns = bpf_ktime_get_boot_ns();
	owner.cookie = cookie;
	__builtin_memcpy(&c->e, &owner, sizeof(owner));
	c->phase = owner_wanted(&owner) ? PHASE_PENDING : PHASE_IGNORED;
}

/*
 * The local end of a UDP socket: the address it bound, or the one connect()
 * chose for it. sk may be a cgroup hook's context, which only helper reads
 * may follow.
 */
static __always_inline void udp_local(struct sock *sk, struct event *e)
{
	e->lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	e->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	if (BPF_CORE_READ(sk, __sk_common.skc_family) == AF_INET6) {
		BPF_CORE_READ_INTO(&e->laddr, sk, __sk_common.skc_v6_rcv_saddr);
		if (!e->destinations)
			e->family = 6;
	} else {
		v4_mapped(e->laddr, BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr));
		if (!e->destinations)
			e->family = 4;
	}
}

/*
 * The peer connect() fixed, read with helpers as udp_local reads: into e's
 * remote end, if the socket is connected.
 */
static __always_inline bool udp_read_peer(struct sock *sk, struct event *e)
{
	struct in6_addr r6;

	e->rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (!e->rport)
		return false;
	if (BPF_CORE_READ(sk, __sk_common.skc_family) == AF_INET6) {
		BPF_CORE_READ_INTO(&r6, sk, __sk_common.skc_v6_daddr);
		__builtin_memcpy(e->raddr, &r6, 16);
	} else {
		v4_mapped(e->raddr, BPF_CORE_READ(sk, __sk_common.skc_daddr));
	}
	return true;
}

/*
 * If connect()'s return sent this socket's open (udp_connect_returned), its
 * entry takes that lifetime over, with its start.
 */
static __always_inline bool udp_opened_by_connect(struct conn *c)
{
	__u64 *start;

	if (!(cfg.gaps & GAP_DATAGRAM_HOOKS))
		return false;
	start = bpf_map_lookup_elem(&udp_opened, &c->e.cookie);
	if (!start)
		return false;
	c->e.start_ns = *start;
	c->phase = PHASE_OPEN;
	bpf_map_delete_elem(&udp_opened, &c->e.cookie);
	return true;
}

/*
 * connect() returned 0 on the UDP socket sk (GAP_DATAGRAM_HOOKS): its port
 * and peer are fixed now, and no datagram hook will show them, so its open
 * goes out here. The connect cgroup hook made its entry, and its cookie,
 * moments ago in the same call; start is when the call began.
 */
static __always_inline void udp_connect_returned(struct sock *sk, __u64 start)
{
	struct event e = {};

	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_UDP)
		return;
	e.cookie = BPF_CORE_READ(sk, __sk_common.skc_cookie.counter);
	if (!e.cookie)
		return; /* no connect hook saw it */
	udp_local(sk, &e);
	if (!e.lport || !udp_read_peer(sk, &e))
		return;
	set_owner(&e, PID_SOURCE_SOCKET);
	e.proto = IPPROTO_UDP;
	e.direction = DIRECTION_OUTBOUND;
	e.family = is_v4_mapped(e.raddr) ? 4 : 6;
	e.destinations = 1;
	e.flags = EVENT_F_CONNECTED;
	e.start_ns = start;
	e.end_ns = bpf_ktime_get_boot_ns();
	if (!owner_wanted(&e) || !tuple_wanted(sk, &e))
		return;
	if (bpf_map_update_elem(&udp_opened, &e.cookie, &start, BPF_ANY)) {
		count_drop(DROP_TABLE_FULL);
		return;
	}
	emit(sk, &e, EVENT_OPEN);
}

/*
 * The remote end is known once a destination is: every filter can be
 * decided now, and the open goes out with both ends.
 */
static __always_inline void udp_try_open(struct sock *sk, struct conn *c)
{
	if (!c->e.destinations)
		return;
	udp_local(sk, &c->e);
	if (!c->e.lport)
		return;
	if (!tuple_wanted(sk, &c->e)) {
		c->phase = PHASE_IGNORED;
		return;
	}
	c->phase = PHASE_OPEN;
	c->e.end_ns = bpf_ktime_get_boot_ns();
	emit(sk, &c->e, EVENT_OPEN);
}

static __always_inline bool is_udp(const struct bpf_sock_addr *ctx)
{
	return ctx->type == SOCK_DGRAM && ctx->protocol == IPPROTO_UDP;
}

/* The entry of the socket behind a sock_addr hook, created if need be. */
static __always_inline struct conn *udp_conn(struct bpf_sock_addr *ctx, __u8 direction)
{
	struct bpf_sock *sk = ctx->sk;
	struct conn *c;

	if (!sk)
		return 0;
	c = conn_of(sk, true);
	if (!c)
		return 0;
	if (!c->phase)
		udp_begin(c, bpf_get_socket_cookie(ctx), direction);
	return c->phase == PHASE_IGNORED ? 0 : c;
}

/* bind(): a port asked for by number makes a server socket. */
static __always_inline int udp_bind(struct bpf_sock_addr *ctx)
{
	if (is_udp(ctx))
		udp_conn(ctx, ctx->user_port ? DIRECTION_INBOUND : DIRECTION_OUTBOUND);
	return 1;
}

/*
 * connect(), before the call: only where no datagram hook will see the
 * socket (GAP_DATAGRAM_HOOKS), so that the close of a connected socket that
 * never sends with an address still names the process that connected it
 * and when. The port is not bound yet: the rest is read at its release.
 * Runs for every inet connect() on the host, TCP included, on those kernels
 * alone.
 */
static __always_inline int udp_connecting(struct bpf_sock_addr *ctx)
{
	if ((cfg.gaps & GAP_DATAGRAM_HOOKS) && is_udp(ctx))
		udp_conn(ctx, DIRECTION_OUTBOUND);
	return 1;
}

/*
 * After bind() got its port: the filters on the socket's own end can leave
 * it out now, before any datagram costs a look at it.
 */
static __always_inline int udp_bound(struct bpf_sock *ctx)
{
	struct sock *sk = (struct sock *)ctx;
	struct conn *c;

	if (ctx->protocol != IPPROTO_UDP)
		return 1;
	c = conn_of(ctx, false);
	if (!c || c->phase != PHASE_PENDING)
		return 1;
	udp_local(sk, &c->e);
	if (c->e.lport && !local_wanted(sk, &c->e))
		c->phase = PHASE_IGNORED;
	return 1;
}

/*
 * sendto() and sendmsg() with an address: the port is bound by now. Without
 * the datagram hooks (GAP_DATAGRAM_HOOKS), which open a socket once its
 * first datagram is sent, the open goes out here, before the send.
 */
static __always_inline int udp_send(struct bpf_sock_addr *ctx, const __u8 *addr)
{
	struct conn *c;

	if (!is_udp(ctx) || !(c = udp_conn(ctx, DIRECTION_OUTBOUND)))
		return 1;
	udp_dest(ctx->sk, c, addr, bpf_ntohs(ctx->user_port), false);
	if ((cfg.gaps & GAP_DATAGRAM_HOOKS) && c->phase == PHASE_PENDING) {
		struct event peer = {};
		struct sock *sk;

		c->sk_addr = (__u64)ctx->sk;
		sk = (struct sock *)*(volatile __u64 *)&c->sk_addr;
		/*
		 * A connected IPv6 socket's sends to a v4-mapped peer come here
		 * too: udpv6_sendmsg hands them to udp_sendmsg with the address.
		 */
		if (udp_read_peer(sk, &peer)) {
			udp_dest(ctx->sk, c, peer.raddr, peer.rport, true);
			c->e.flags |= EVENT_F_CONNECTED;
		}
		if (udp_opened_by_connect(c))
			udp_local(sk, &c->e);
		else
			udp_try_open(sk, c);
	}
	return 1;
}

static __always_inline int udp_sendmsg4(struct bpf_sock_addr *ctx)
{
	__u8 addr[16];

	v4_mapped(addr, ctx->user_ip4);
	return udp_send(ctx, addr);
}

static __always_inline int udp_sendmsg6(struct bpf_sock_addr *ctx)
{
	__u32 addr[4];

	addr[0] = ctx->user_ip6[0];
	addr[1] = ctx->user_ip6[1];
	addr[2] = ctx->user_ip6[2];
	addr[3] = ctx->user_ip6[3];
	return udp_send(ctx, (__u8 *)addr);
}

/*
 * The peer a connect() fixed, if any, and the local address connect()
 * chose with it (a socket bound to the wildcard gets a real one). Read here
 * rather than in a cgroup connect hook, which would run, with the socket
 * locked, for every TCP connect on the host too.
 */
static __always_inline void udp_peer(struct sock *sk, struct conn *c)
{
	struct sock_common *skc = &sk->__sk_common;
	__u16 port = bpf_ntohs(skc->skc_dport);
	__u64 addr[2];
	__u64 *known = (__u64 *)c->e.raddr;

	if (!port)
		return; /* not connected */
	if (skc->skc_family == AF_INET6)
		__builtin_memcpy(addr, skc->skc_v6_daddr.in6_u.u6_addr32, 16);
	else
		v4_mapped((__u8 *)addr, skc->skc_daddr);
	if ((c->e.flags & EVENT_F_CONNECTED) && c->e.rport == port &&
	    known[0] == addr[0] && known[1] == addr[1])
		return; /* the same peer as before */
	udp_dest(sk, c, (__u8 *)addr, port, true);
	c->e.flags |= EVENT_F_CONNECTED;
	if (skc->skc_family == AF_INET6)
		__builtin_memcpy(c->e.laddr, skc->skc_v6_rcv_saddr.in6_u.u6_addr32, 16);
	else
		v4_mapped(c->e.laddr, skc->skc_rcv_saddr);
}

/*
 * The datagrams a send of len bytes left as. With UDP_SEGMENT set on the
 * socket, the kernel cuts a send longer than gso_size into segments of
 * gso_size bytes, each its own datagram on the wire. A UDP_SEGMENT control
 * message on one send is not visible from here: that send counts as one.
 */
static __always_inline __u32 udp_segments(struct sock *sk, int len)
{
	__u32 gso = BPF_CORE_READ((struct udp_sock *)sk, gso_size);

	if (!gso || len <= gso)
		return 1;
	return ((__u32)len + gso - 1) / gso;
}

/* A send returned ret (sock:sock_send_length, or fexit on udp_sendmsg): connected or not. */
static __always_inline int udp_datagram_sent(struct sock *sk, int ret)
{
	struct conn *c;

	if (ret <= 0 || sk->sk_protocol != IPPROTO_UDP)
		return 0;
	c = conn_of(sk, true);
	if (!c)
		return 0;
	if (!c->phase)
		udp_begin(c, bpf_get_socket_cookie(sk), DIRECTION_OUTBOUND);
	if (c->phase == PHASE_IGNORED)
		return 0;
	udp_peer(sk, c);
	c->e.tx_packets += udp_segments(sk, ret);
	c->e.tx_bytes += ret;
	if (c->phase == PHASE_PENDING)
		udp_try_open(sk, c);
	return 0;
}

/* A receive returned ret (sock:sock_recv_length, or fexit on udp_recvmsg); a peek is not a receive. */
static __always_inline int udp_datagram_received(struct sock *sk, int ret, int flags)
{
	struct conn *c;

	if (ret <= 0 || (flags & MSG_PEEK) || sk->sk_protocol != IPPROTO_UDP)
		return 0;
	c = conn_of(sk, false);
	if (!c || c->phase == PHASE_IGNORED)
		return 0;
	c->e.rx_packets++;
	c->e.rx_bytes += ret;
	if (c->phase == PHASE_PENDING) {
		/* A connected socket may hear from its peer before it speaks. */
		udp_peer(sk, c);
		udp_try_open(sk, c);
	}
	return 0;
}

/*
 * A socket that got a port by connect() and never sent a datagram has no
 * entry: its lifetime is seen only now, with the closing task as owner.
 */
static __always_inline void udp_unused(struct bpf_sock *ctx)
{
	struct sock *sk = (struct sock *)ctx;
	struct event e = {};

	udp_local(sk, &e);
	if (!e.lport || !udp_read_peer(sk, &e))
		return;
	e.family = is_v4_mapped(e.raddr) ? 4 : 6;
	set_owner(&e, PID_SOURCE_CLOSE);
	e.proto = IPPROTO_UDP;
	e.direction = DIRECTION_OUTBOUND;
	e.destinations = 1;
	e.flags = EVENT_F_CONNECTED;
	e.cookie = bpf_get_socket_cookie(ctx);
	if (cfg.gaps & GAP_DATAGRAM_HOOKS)
		bpf_map_delete_elem(&udp_opened, &e.cookie);
	e.end_ns = bpf_ktime_get_boot_ns();
	if (owner_wanted(&e) && tuple_wanted(sk, &e))
		emit(sk, &e, EVENT_CLOSE);
}

/* The close of a socket with an entry, if it is to be reported. */
static __always_inline void udp_end(struct bpf_sock *ctx, struct conn *c)
{
	struct sock *sk = (struct sock *)ctx;
	struct event peer = {};

	if (c->phase == PHASE_PENDING) {
		/*
		 * No datagram showed its remote end, so no open went out. It may
		 * be connected and unused; otherwise its remote end is unknown,
		 * and the filters judge it on what is known.
		 */
		udp_local(sk, &c->e);
		if (!c->e.lport)
			return;
		if (udp_read_peer(sk, &peer)) {
			udp_dest(ctx, c, peer.raddr, peer.rport, true);
			c->e.flags |= EVENT_F_CONNECTED;
		}
		if (!tuple_wanted(sk, &c->e))
			return;
		if (!udp_opened_by_connect(c))
			c->phase = PHASE_OPEN;
	}
	if (c->phase != PHASE_OPEN)
		return;
	c->e.end_ns = bpf_ktime_get_boot_ns();
	c->phase = PHASE_DONE;
	emit_close(sk, c);
}

/*
 * close() of the last descriptor: the port's lifetime ends. The kernel
 * frees the socket's storage with it; an entry in conns_by_sk is dropped
 * here.
 */
static __always_inline int udp_released(struct bpf_sock *ctx)
{
	struct conn *c;

	if (ctx->protocol != IPPROTO_UDP)
		return 1;
	c = conn_of(ctx, false);
	if (!c) {
		udp_unused(ctx);
		return 1;
	}
	udp_end(ctx, c);
	if (cfg.gaps & GAP_DATAGRAM_HOOKS)
		bpf_map_delete_elem(&udp_opened, &c->e.cookie);
	if (cfg.gaps & GAP_SK_STORAGE)
		conn_forget(ctx);
	return 1;
}

#endif /* __PORTLIFE_UDP_BPF_H */
