/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * TCP lifetimes: every TCP socket is followed through its states by the
 * inet_sock_set_state tracepoint; resets and the socket's destruction
 * complete the close event.
 */
#ifndef __PORTLIFE_TCP_BPF_H
#define __PORTLIFE_TCP_BPF_H

#include "common.bpf.h"
#include "syscalls.bpf.h"

static __always_inline void read_counters(struct sock *sk, struct event *e)
{
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);

	if (!tp)
		return;
	e->tx_bytes = tp->bytes_acked;
	e->rx_bytes = tp->bytes_received;
	e->tx_packets = tp->segs_out;
	e->rx_packets = tp->segs_in;
	e->retransmits = tp->total_retrans;
}

/* CLOSE -> SYN_SENT: connect() runs in the caller's context. */
static __always_inline void on_connect(struct sock *sk)
{
	struct event owner = {};
	struct conn *c;

	set_owner(&owner, PID_SOURCE_CONNECT);
	owner.direction = DIRECTION_OUTBOUND;
	if (!owner_wanted(&owner)) {
		/* A socket reconnected after disconnect may hold a stale lifetime. */
		c = conn_of(sk, false);
		if (c && c->phase == PHASE_CLOSED)
			emit_close(sk, c);
		if (c)
			conn_forget(sk);
		return;
	}
	c = conn_of(sk, true);
	if (!c)
		return;
	if (c->phase == PHASE_CLOSED)
		emit_close(sk, c);
	begin(c, sk, &owner, DIRECTION_OUTBOUND, PHASE_CONNECTING);
	/*
	 * connect() moves to SYN_SENT before it picks a port, so a port here
	 * was bound before; bind() leaves SOCK_BINDPORT_LOCK unset only when
	 * asked for port 0 (and IP_BIND_ADDRESS_NO_PORT binds no port at all).
	 */
	if (sk->__sk_common.skc_num && !(BPF_CORE_READ_BITFIELD(sk, sk_userlocks) & SOCK_BINDPORT_LOCK))
		c->e.flags |= EVENT_F_BIND_BEFORE_CONNECT;
}

/* -> LISTEN: listen() runs in the owner's context; children inherit it. */
static __always_inline void on_listen(struct sock *sk)
{
	struct event owner = {};
	struct conn *c;

	c = conn_of(sk, true);
	if (!c)
		return;
	set_owner(&owner, PID_SOURCE_LISTENER);
	begin(c, sk, &owner, DIRECTION_INBOUND, PHASE_LISTENER);
	note_listener(sk, c);
}

/*
 * The entry of a child socket of a listener: cloned with the listener's by
 * socket storage (BPF_F_CLONE). Without socket storage (GAP_SK_STORAGE), a
 * copy of the listener's entry made from listeners, the child being on its
 * listener's port.
 */
static __always_inline struct conn *child_conn(struct sock *sk)
{
	struct listener_key key = {};
	struct conn *l, *c;

	if (!(cfg.gaps & GAP_SK_STORAGE))
		return conn_of(sk, false);
	key.netns = sk->__sk_common.skc_net.net->ns.inum;
	key.port = sk->__sk_common.skc_num;
	l = bpf_map_lookup_elem(&listeners, &key);
	if (!l)
		return 0;
	c = conn_of(sk, true);
	if (c)
		__builtin_memcpy(c, l, sizeof(*c));
	return c;
}

/* LISTEN -> SYN_RECV: a child socket, with its listener's entry. */
static __always_inline void on_child(struct sock *sk)
{
	struct event owner = {};
	struct conn *c;

	c = child_conn(sk);
	if (!c || c->phase != PHASE_LISTENER)
		return; /* its listener is not traced */
	__builtin_memcpy(&owner, &c->e, sizeof(owner));
	if (!owner_wanted(&owner)) {
		conn_forget(sk);
		return;
	}
	owner.listener_pid = owner.pid; /* kept when a worker takes it over (on_owner_closing) */
	begin(c, sk, &owner, DIRECTION_INBOUND, PHASE_HANDSHAKE);
}

/*
 * The entry of a connection whose move into SYN_SENT or SYN_RECV the kernel
 * skipped (Stats.SkippedRuns counts the run), made at ESTABLISHED so that
 * the lifetime is not lost with it. A child of a traced listener gets its
 * listener's owner, as on_child would have given it. An outbound one is
 * made in the softirq that took the SYN-ACK, where its caller is unknown:
 * it opens with pid_source unknown, and its close() names the owner
 * (on_owner_closing). owner_wanted passes no unknown owner (pid 0, no
 * name) through --pid or --comm.
 */
static __always_inline struct conn *missed_opening(struct sock *sk, int oldstate)
{
	struct event owner = {};
	struct conn *c;

	if (oldstate == TCP_SYN_RECV) {
		on_child(sk);
		return conn_of(sk, false);
	}
	owner.direction = DIRECTION_OUTBOUND;
	if (oldstate != TCP_SYN_SENT || !owner_wanted(&owner))
		return 0;
	c = conn_of(sk, true);
	if (!c)
		return 0;
	begin(c, sk, &owner, DIRECTION_OUTBOUND, PHASE_CONNECTING);
	return c;
}

/* SYN_SENT or SYN_RECV -> ESTABLISHED: both ports are known now. */
static __always_inline void on_established(struct sock *sk, int oldstate)
{
	struct conn *c = conn_of(sk, false);

	if (!c || c->phase == PHASE_LISTENER)
		c = missed_opening(sk, oldstate);
	if (!c || (c->phase != PHASE_CONNECTING && c->phase != PHASE_HANDSHAKE))
		return;
	/*
	 * A child's cookie at LISTEN -> SYN_RECV is not its own yet: the clone
	 * copies the listener's, and only after that transition does
	 * inet_csk_clone_lock() set the request's (Linux 6.1 has events carry
	 * the listener's cookie otherwise). With GAP_SOCKET_COOKIE it may be 0,
	 * and tcp_child_cookie gave the child the kernel's own just before
	 * this transition. No event carried the earlier one.
	 */
	if (c->phase == PHASE_HANDSHAKE)
		c->e.cookie = sk_cookie(sk);
	read_tuple(sk, &c->e);
	if (!tuple_wanted(sk, &c->e)) {
		conn_forget(sk);
		return;
	}
	c->e.established_ns = bpf_ktime_get_boot_ns();
	c->e.end_ns = c->e.established_ns;
	c->phase = PHASE_OPEN;
	emit(sk, &c->e, EVENT_OPEN);
}

/*
 * The process closing or shutting down a connection it holds. A socket
 * from before tracing has no owner yet: this is it. An accepted
 * connection is named after the listener until now; the process that
 * ends it is the one that served it: under a prefork server a worker,
 * where listen() named the master; under a server whose master accepts
 * and forks (postgres), the child. It becomes the owner, and listener_pid
 * keeps the listener's. A server that serves its own connections keeps
 * its listener's name. Learned here, from a transition every connection
 * makes anyway, rather than from a hook on each read, which would run a
 * program for every TCP read on the host. What that misses: a connection
 * a process aborts (SO_LINGER 0, or unread data, goes straight to CLOSE)
 * and one the peer resets keep the listener's name.
 */
static __always_inline void on_owner_closing(struct conn *c)
{
	if (c->e.pid_source == PID_SOURCE_UNKNOWN) {
		set_owner(&c->e, PID_SOURCE_CLOSE);
		return;
	}
	if (c->e.direction != DIRECTION_INBOUND || (c->e.flags & EVENT_F_PRE_EXISTING) ||
	    bpf_get_current_pid_tgid() >> 32 == c->e.pid)
		return;
	set_owner(&c->e, PID_SOURCE_CLOSE);
}

/* Into FIN_WAIT1, CLOSE_WAIT or LAST_ACK. */
static __always_inline void on_closing(struct sock *sk, int oldstate, int newstate)
{
	struct conn *c = conn_of(sk, false);

	if (!c || c->phase != PHASE_OPEN)
		return;
	if (!c->e.closed_by) {
		if (newstate == TCP_FIN_WAIT1)
			c->e.closed_by = CLOSED_BY_LOCAL;
		else if (newstate == TCP_CLOSE_WAIT)
			c->e.closed_by = CLOSED_BY_REMOTE;
	}
	/*
	 * FIN_WAIT1 and LAST_ACK are entered only by close() or shutdown(), in
	 * the context of the process that holds the socket.
	 */
	if (newstate == TCP_FIN_WAIT1 || newstate == TCP_LAST_ACK)
		on_owner_closing(c);
}

/* -> CLOSE: the port is released. */
static __always_inline void on_close(struct sock *sk, int oldstate)
{
	struct conn *c = conn_of(sk, false);

	if (!c)
		return;
	if (c->phase == PHASE_CONNECTING && oldstate != TCP_SYN_SENT) {
		/* Established, but the hook was skipped then (see missed_close). */
		read_tuple(sk, &c->e);
		if (!tuple_wanted(sk, &c->e)) {
			conn_forget(sk);
			return;
		}
		c->phase = PHASE_OPEN;
	}
	if (c->phase == PHASE_CONNECTING) {
		read_tuple(sk, &c->e);
		c->e.error = sk->sk_err;
		c->e.end_ns = bpf_ktime_get_boot_ns();
		c->e.last_state = oldstate;
		if (tuple_wanted(sk, &c->e))
			emit(sk, &c->e, EVENT_CONNECT_FAILED);
		conn_forget(sk);
		return;
	}
	if (c->phase == PHASE_HANDSHAKE) {
		/* Never established, so never accepted: not a lifetime. */
		conn_forget(sk);
		return;
	}
	if (c->phase != PHASE_OPEN)
		return;
	c->e.end_ns = bpf_ktime_get_boot_ns();
	c->e.last_state = oldstate;
	read_counters(sk, &c->e);
	/*
	 * The kernel moves the connection to a timewait socket just before this,
	 * unless a reset ended it; a reset sent after this point clears the flag.
	 */
	if ((oldstate == TCP_FIN_WAIT2 || oldstate == TCP_CLOSING) &&
	    !(c->e.flags & (EVENT_F_RESET_SENT | EVENT_F_RESET_RECEIVED)))
		c->e.flags |= EVENT_F_TIME_WAIT;
	/*
	 * Resets sent on close (unread data, SO_LINGER 0) come after this
	 * transition, so the event waits for the socket's destruction.
	 */
	c->phase = PHASE_CLOSED;
}

/* sock:inet_sock_set_state, for every socket of every protocol. */
static __always_inline int tcp_state_changed(struct sock *sk, int oldstate, int newstate)
{
	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;

	switch (newstate) {
	case TCP_SYN_SENT:
		connect_handed_over(sk);
		on_connect(sk);
		break;
	case TCP_LISTEN:
		on_listen(sk);
		break;
	case TCP_SYN_RECV:
		if (oldstate == TCP_LISTEN)
			on_child(sk);
		break;
	case TCP_ESTABLISHED:
		on_established(sk, oldstate);
		break;
	case TCP_CLOSE:
		on_close(sk, oldstate);
		break;
	case TCP_FIN_WAIT1:
	case TCP_CLOSE_WAIT:
	case TCP_LAST_ACK:
		on_closing(sk, oldstate, newstate);
		break;
	}
	/* FIN_WAIT2 and CLOSING tell nothing new: no lookup for them. */
	return 0;
}

/* tcp:tcp_send_reset */
static __always_inline int tcp_reset_sent(struct sock *sk)
{
	struct conn *c;

	if (!sk)
		return 0; /* a reset for a packet that has no socket */
	c = conn_of(sk, false);
	if (!c || (c->phase != PHASE_OPEN && c->phase != PHASE_CLOSED))
		return 0;
	c->e.flags |= EVENT_F_RESET_SENT;
	c->e.flags &= ~EVENT_F_TIME_WAIT;
	if (!c->e.closed_by)
		c->e.closed_by = CLOSED_BY_LOCAL;
	return 0;
}

/* tcp:tcp_receive_reset */
static __always_inline int tcp_reset_received(struct sock *sk)
{
	struct conn *c = conn_of(sk, false);

	if (!c || c->phase != PHASE_OPEN)
		return 0;
	c->e.flags |= EVENT_F_RESET_RECEIVED;
	if (!c->e.closed_by)
		c->e.closed_by = CLOSED_BY_REMOTE;
	return 0;
}

/*
 * A socket destroyed before its move to TCP_CLOSE was seen. The kernel does
 * not run a tracing program that an interrupt finds already running on its
 * CPU: a softirq's state changes (the ACK of a FIN, a reset, a timeout)
 * that arrive while a process's close() or connect() runs the hook are
 * skipped, and counted only as the program's recursion misses. The socket
 * is destroyed in TCP_CLOSE all the same, so its end is reported now, as
 * the skipped changes would have: the counters are still there, and a
 * connection we closed first without a reset went through TIME_WAIT.
 * Stats.HookMissed in user space counts the skipped runs.
 */
static __always_inline void missed_close(struct sock *sk, struct conn *c)
{
	c->e.end_ns = bpf_ktime_get_boot_ns();
	if (c->phase == PHASE_CONNECTING) {
		read_tuple(sk, &c->e);
		c->e.error = sk->sk_err;
		c->e.last_state = TCP_SYN_SENT;
		if (tuple_wanted(sk, &c->e))
			emit(sk, &c->e, EVENT_CONNECT_FAILED);
		c->phase = PHASE_DONE;
		return;
	}
	read_counters(sk, &c->e);
	if (c->e.closed_by == CLOSED_BY_LOCAL && !(c->e.flags & (EVENT_F_RESET_SENT | EVENT_F_RESET_RECEIVED)))
		c->e.flags |= EVENT_F_TIME_WAIT;
	c->phase = PHASE_CLOSED;
}

/*
 * tcp:tcp_destroy_sock: the close event goes out now. The kernel frees the
 * socket's storage with it; an entry in conns_by_sk is dropped here.
 */
static __always_inline int tcp_destroyed(struct sock *sk)
{
	struct conn *c = conn_of(sk, false);

	if (!c)
		return 0;
	if (c->phase == PHASE_OPEN || c->phase == PHASE_CONNECTING)
		missed_close(sk, c);
	if (c->phase == PHASE_CLOSED) {
		emit_close(sk, c);
		c->phase = PHASE_DONE;
	}
	if (cfg.gaps & GAP_SK_STORAGE) {
		if (c->phase == PHASE_LISTENER)
			forget_listener(sk, c);
		conn_forget(sk);
	}
	return 0;
}

/*
 * sockops, attached only with GAP_SOCKET_COOKIE. An accepted child is a
 * clone of its listener, and the clone resets the cookie to 0, so no
 * socket() gave it one (give_cookie). The kernel calls this with
 * BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB before it moves the child from
 * SYN_RECV to ESTABLISHED, where on_established reads the cookie that
 * asking here gave it. Returns 1, as every sockops program should.
 */
static __always_inline int tcp_child_cookie(struct bpf_sock_ops *ctx)
{
	if (ctx->op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		bpf_get_socket_cookie(ctx);
	return 1;
}

#endif /* __PORTLIFE_TCP_BPF_H */
