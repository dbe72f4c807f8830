//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR MIT)
/*
 * portlife's kernel side: follows every TCP socket through its states and
 * sends one event when a connection opens, when it closes, and when a
 * connect fails. State that must survive between hooks lives in socket-local
 * storage, which the kernel frees with the socket: no table to leak or evict,
 * and no confusion with a later socket at the same address.
 */
#include "kernel.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "portlife.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* Emit the enums to BTF, so bpf2go generates their Go constants. */
const enum event_kind *unused_event_kind __attribute__((unused));
const enum direction *unused_direction __attribute__((unused));
const enum pid_source *unused_pid_source __attribute__((unused));
const enum closed_by *unused_closed_by __attribute__((unused));
const enum event_flag *unused_event_flag __attribute__((unused));
const enum drop_reason *unused_drop_reason __attribute__((unused));

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
	PHASE_PENDING = 7, /* UDP: owned, but the local port is not known yet */
	PHASE_IGNORED = 8, /* UDP: left out by the filters */
};

#define UDP_DEST_SLOTS 8

struct conn {
	struct event e; /* the event under construction */
	__u32 dests[UDP_DEST_SLOTS]; /* UDP: hashes of the last distinct destinations */
	__u8 phase;
	__u8 next_dest;
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

static __always_inline void count_drop(__u32 reason)
{
	__u64 *n = bpf_map_lookup_elem(&drops, &reason);

	if (n)
		(*n)++;
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

static __always_inline void emit(const struct event *src, __u8 kind)
{
	struct event *e;

	if (!(cfg.events & (1 << kind)))
		return;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_drop(DROP_RINGBUF_FULL);
		return;
	}
	__builtin_memcpy(e, src, sizeof(*e));
	e->kind = kind;
	bpf_ringbuf_submit(e, wakeup_flags());
}

/* The current task, as the owner of a socket. */
static __always_inline void set_owner(struct event *e, __u8 source)
{
	__u64 id = bpf_get_current_pid_tgid();

	e->pid = id >> 32;
	e->tid = (__u32)id;
	e->uid = (__u32)bpf_get_current_uid_gid();
	e->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(e->comm, sizeof(e->comm));
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
 * The ephemeral side is ours when we connected and the peer's when we
 * accepted. A connect that got no port at all failed to get an ephemeral one,
 * so it counts. Keep in step with Event.Ephemeral in Go.
 */
static __always_inline bool is_ephemeral(const struct event *e)
{
	__u16 port = e->direction == DIRECTION_INBOUND ? e->rport : e->lport;

	if (e->direction == DIRECTION_OUTBOUND && !port)
		return true;
	return port >= cfg.ephemeral.lo && port <= cfg.ephemeral.hi;
}

static __always_inline bool tuple_wanted(const struct event *e)
{
	if (cfg.family && e->family != cfg.family)
		return false;
	if (cfg.n_lports && !port_in(cfg.lports, cfg.n_lports, e->lport))
		return false;
	if (cfg.n_rports && !port_in(cfg.rports, cfg.n_rports, e->rport))
		return false;
	if (cfg.ephemeral_only && !is_ephemeral(e))
		return false;
	if (cfg.match_raddr) {
		struct raddr_key key = { .prefixlen = 128 };

		__builtin_memcpy(key.addr, e->raddr, sizeof(key.addr));
		if (!bpf_map_lookup_elem(&raddr_nets, &key))
			return false;
	}
	return true;
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

/* A fresh lifetime for sk, in the storage entry c. */
static __always_inline void begin(struct conn *c, struct sock *sk, const struct event *owner,
				  __u8 direction, __u8 phase)
{
	__builtin_memcpy(&c->e, owner, sizeof(c->e));
	c->e.proto = IPPROTO_TCP;
	c->e.direction = direction;
	c->e.start_ns = bpf_ktime_get_boot_ns();
	c->e.cookie = bpf_get_socket_cookie(sk);
	c->e.netns = sk->__sk_common.skc_net.net->ns.inum;
	c->phase = phase;
}

/* A socket's close event, once both its end and its destruction were seen. */
static __always_inline void emit_close(struct conn *c)
{
	if (cfg.min_duration_ns && c->e.start_ns &&
	    c->e.end_ns - c->e.start_ns < cfg.min_duration_ns)
		return;
	emit(&c->e, EVENT_CLOSE);
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
		c = bpf_sk_storage_get(&conns, sk, 0, 0);
		if (c && c->phase == PHASE_CLOSED)
			emit_close(c);
		if (c)
			bpf_sk_storage_delete(&conns, sk);
		return;
	}
	c = bpf_sk_storage_get(&conns, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!c) {
		count_drop(DROP_STORAGE_FULL);
		return;
	}
	if (c->phase == PHASE_CLOSED)
		emit_close(c);
	begin(c, sk, &owner, DIRECTION_OUTBOUND, PHASE_CONNECTING);
}

/* -> LISTEN: listen() runs in the owner's context; children inherit it. */
static __always_inline void on_listen(struct sock *sk)
{
	struct event owner = {};
	struct conn *c;

	c = bpf_sk_storage_get(&conns, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!c) {
		count_drop(DROP_STORAGE_FULL);
		return;
	}
	set_owner(&owner, PID_SOURCE_LISTENER);
	begin(c, sk, &owner, DIRECTION_INBOUND, PHASE_LISTENER);
}

/* LISTEN -> SYN_RECV: a child socket, cloned with its listener's entry. */
static __always_inline void on_child(struct sock *sk)
{
	struct event owner = {};
	struct conn *c;

	c = bpf_sk_storage_get(&conns, sk, 0, 0);
	if (!c || c->phase != PHASE_LISTENER)
		return; /* its listener is not traced */
	__builtin_memcpy(&owner, &c->e, sizeof(owner));
	if (!owner_wanted(&owner)) {
		bpf_sk_storage_delete(&conns, sk);
		return;
	}
	begin(c, sk, &owner, DIRECTION_INBOUND, PHASE_HANDSHAKE);
}

/* SYN_SENT or SYN_RECV -> ESTABLISHED: both ports are known now. */
static __always_inline void on_established(struct sock *sk)
{
	struct conn *c = bpf_sk_storage_get(&conns, sk, 0, 0);

	if (!c || (c->phase != PHASE_CONNECTING && c->phase != PHASE_HANDSHAKE))
		return;
	read_tuple(sk, &c->e);
	if (!tuple_wanted(&c->e)) {
		bpf_sk_storage_delete(&conns, sk);
		return;
	}
	c->e.established_ns = bpf_ktime_get_boot_ns();
	c->e.end_ns = c->e.established_ns;
	c->phase = PHASE_OPEN;
	emit(&c->e, EVENT_OPEN);
}

/* Into FIN_WAIT1, CLOSE_WAIT or LAST_ACK. */
static __always_inline void on_closing(struct sock *sk, int oldstate, int newstate)
{
	struct conn *c = bpf_sk_storage_get(&conns, sk, 0, 0);

	if (!c || c->phase != PHASE_OPEN)
		return;
	if (!c->e.closed_by) {
		if (newstate == TCP_FIN_WAIT1)
			c->e.closed_by = CLOSED_BY_LOCAL;
		else if (newstate == TCP_CLOSE_WAIT)
			c->e.closed_by = CLOSED_BY_REMOTE;
	}
	/*
	 * A socket from before tracing has no owner yet. FIN_WAIT1 and LAST_ACK
	 * are entered only by close() or shutdown(), in the owner's context.
	 */
	if (c->e.pid_source == PID_SOURCE_UNKNOWN &&
	    (newstate == TCP_FIN_WAIT1 || newstate == TCP_LAST_ACK))
		set_owner(&c->e, PID_SOURCE_CLOSE);
}

/* -> CLOSE: the port is released. */
static __always_inline void on_close(struct sock *sk, int oldstate)
{
	struct conn *c = bpf_sk_storage_get(&conns, sk, 0, 0);

	if (!c)
		return;
	if (c->phase == PHASE_CONNECTING) {
		read_tuple(sk, &c->e);
		c->e.error = sk->sk_err;
		c->e.end_ns = bpf_ktime_get_boot_ns();
		c->e.last_state = oldstate;
		if (tuple_wanted(&c->e))
			emit(&c->e, EVENT_CONNECT_FAILED);
		bpf_sk_storage_delete(&conns, sk);
		return;
	}
	if (c->phase == PHASE_HANDSHAKE) {
		/* Never established, so never accepted: not a lifetime. */
		bpf_sk_storage_delete(&conns, sk);
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

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(tcp_state, struct sock *sk, int oldstate, int newstate)
{
	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;

	switch (newstate) {
	case TCP_SYN_SENT:
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
		on_established(sk);
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

SEC("tp_btf/tcp_send_reset")
int BPF_PROG(tcp_rst_sent, struct sock *sk)
{
	struct conn *c;

	if (!sk)
		return 0; /* a reset for a packet that has no socket */
	c = bpf_sk_storage_get(&conns, sk, 0, 0);
	if (!c || (c->phase != PHASE_OPEN && c->phase != PHASE_CLOSED))
		return 0;
	c->e.flags |= EVENT_F_RESET_SENT;
	c->e.flags &= ~EVENT_F_TIME_WAIT;
	if (!c->e.closed_by)
		c->e.closed_by = CLOSED_BY_LOCAL;
	return 0;
}

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(tcp_rst_recv, struct sock *sk)
{
	struct conn *c = bpf_sk_storage_get(&conns, sk, 0, 0);

	if (!c || c->phase != PHASE_OPEN)
		return 0;
	c->e.flags |= EVENT_F_RESET_RECEIVED;
	if (!c->e.closed_by)
		c->e.closed_by = CLOSED_BY_REMOTE;
	return 0;
}

SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(tcp_destroy, struct sock *sk)
{
	struct conn *c = bpf_sk_storage_get(&conns, sk, 0, 0);

	if (!c || c->phase != PHASE_CLOSED)
		return 0;
	emit_close(c);
	c->phase = PHASE_DONE;
	return 0;
}

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

/*
 * Run at start-up in each network namespace, after the hooks are attached:
 * adopts the sockets that existed before tracing, so that their children
 * and their closes are reported too.
 */
SEC("iter/tcp")
int tcp_existing(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
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
	if (!owner_wanted(&owner) || !tuple_wanted(&owner))
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

/*
 * UDP. There is no state tracepoint: the cgroup socket hooks on the cgroup
 * v2 root see bind and unconnected sends with their addresses, and the
 * release of every socket; the sock_send_length and sock_recv_length
 * tracepoints count each datagram and show the peer of a connected socket. Every cgroup program returns 1: portlife
 * observes and never refuses a syscall.
 */

/* A small hash of an address and port, to tell destinations apart. */
static __always_inline __u32 dest_hash(const __u8 *addr, __u16 port)
{
	__u32 h = 2166136261u ^ port;

	for (int i = 0; i < 16; i++)
		h = (h ^ addr[i]) * 16777619u;
	return h;
}

/*
 * Records a destination. The first one, or the connected peer, becomes the
 * remote end. Distinct ones are counted exactly up to UDP_DEST_SLOTS; past
 * that a destination revisited after it left the slots counts again.
 */
static __always_inline void udp_dest(struct conn *c, const __u8 *addr, __u16 port, bool connected)
{
	__u32 h = dest_hash(addr, port);
	__u8 slot;

	if (connected || !c->e.destinations) {
		__builtin_memcpy(c->e.raddr, addr, 16);
		c->e.rport = port;
		c->e.family = is_v4_mapped(addr) ? 4 : 6;
	}
	for (int i = 0; i < UDP_DEST_SLOTS; i++)
		if (c->dests[i] == h && i < c->e.destinations)
			return;
	slot = c->next_dest++ % UDP_DEST_SLOTS;
	c->dests[slot] = h;
	if (c->e.destinations < 0xffffffff)
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
 * The local end of a UDP socket, once it has a port. sk may be a cgroup
 * hook's context, which only helper reads may follow.
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

/* The local port is known now: apply the filters and say so. */
static __always_inline void udp_open(struct sock *sk, struct conn *c)
{
	udp_local(sk, &c->e);
	if (!c->e.lport)
		return;
	if (!tuple_wanted(&c->e)) {
		c->phase = PHASE_IGNORED;
		return;
	}
	c->phase = PHASE_OPEN;
	c->e.end_ns = bpf_ktime_get_boot_ns();
	emit(&c->e, EVENT_OPEN);
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
	c = bpf_sk_storage_get(&conns, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!c) {
		count_drop(DROP_STORAGE_FULL);
		return 0;
	}
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

SEC("cgroup/bind4")
int udp_bind4(struct bpf_sock_addr *ctx) { return udp_bind(ctx); }

SEC("cgroup/bind6")
int udp_bind6(struct bpf_sock_addr *ctx) { return udp_bind(ctx); }

/* After bind() got its port. */
static __always_inline int udp_bound(struct bpf_sock *ctx)
{
	struct conn *c;

	if (ctx->protocol != IPPROTO_UDP)
		return 1;
	c = bpf_sk_storage_get(&conns, ctx, 0, 0);
	if (c && c->phase == PHASE_PENDING)
		udp_open((struct sock *)ctx, c);
	return 1;
}

SEC("cgroup/post_bind4")
int udp_bound4(struct bpf_sock *ctx) { return udp_bound(ctx); }

SEC("cgroup/post_bind6")
int udp_bound6(struct bpf_sock *ctx) { return udp_bound(ctx); }

/* sendto() and sendmsg() with an address: the port is bound by now. */
static __always_inline int udp_send(struct bpf_sock_addr *ctx, const __u8 *addr)
{
	struct conn *c;

	if (is_udp(ctx) && (c = udp_conn(ctx, DIRECTION_OUTBOUND)))
		udp_dest(c, addr, bpf_ntohs(ctx->user_port), false);
	return 1;
}

SEC("cgroup/sendmsg4")
int udp_send4(struct bpf_sock_addr *ctx)
{
	__u8 addr[16];

	v4_mapped(addr, ctx->user_ip4);
	return udp_send(ctx, addr);
}

SEC("cgroup/sendmsg6")
int udp_send6(struct bpf_sock_addr *ctx)
{
	__u32 addr[4];

	addr[0] = ctx->user_ip6[0];
	addr[1] = ctx->user_ip6[1];
	addr[2] = ctx->user_ip6[2];
	addr[3] = ctx->user_ip6[3];
	return udp_send(ctx, (__u8 *)addr);
}

/*
 * The peer a connect() fixed, if any. Read here rather than in a cgroup
 * connect hook, which would run, with the socket locked, for every TCP
 * connect on the host too.
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
	udp_dest(c, (__u8 *)addr, port, true);
	c->e.flags |= EVENT_F_CONNECTED;
}

/* Every datagram sent, connected or not. */
SEC("tp_btf/sock_send_length")
int BPF_PROG(udp_sent, struct sock *sk, int ret, int flags)
{
	struct conn *c;

	if (ret <= 0 || sk->sk_protocol != IPPROTO_UDP)
		return 0;
	c = bpf_sk_storage_get(&conns, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!c) {
		count_drop(DROP_STORAGE_FULL);
		return 0;
	}
	if (!c->phase)
		udp_begin(c, bpf_get_socket_cookie(sk), DIRECTION_OUTBOUND);
	if (c->phase == PHASE_IGNORED)
		return 0;
	udp_peer(sk, c);
	c->e.tx_packets++;
	c->e.tx_bytes += ret;
	if (c->phase == PHASE_PENDING)
		udp_open(sk, c);
	return 0;
}

#define MSG_PEEK 2

/* Every datagram received; a peek is not a receive. */
SEC("tp_btf/sock_recv_length")
int BPF_PROG(udp_recvd, struct sock *sk, int ret, int flags)
{
	struct conn *c;

	if (ret <= 0 || (flags & MSG_PEEK) || sk->sk_protocol != IPPROTO_UDP)
		return 0;
	c = bpf_sk_storage_get(&conns, sk, 0, 0);
	if (!c || c->phase == PHASE_IGNORED)
		return 0;
	c->e.rx_packets++;
	c->e.rx_bytes += ret;
	if (c->phase == PHASE_PENDING)
		udp_open(sk, c);
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
	struct in6_addr r6;

	udp_local(sk, &e);
	e.rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (!e.lport || !e.rport)
		return;
	if (BPF_CORE_READ(sk, __sk_common.skc_family) == AF_INET6) {
		BPF_CORE_READ_INTO(&r6, sk, __sk_common.skc_v6_daddr);
		__builtin_memcpy(e.raddr, &r6, 16);
	} else {
		v4_mapped(e.raddr, BPF_CORE_READ(sk, __sk_common.skc_daddr));
	}
	e.family = is_v4_mapped(e.raddr) ? 4 : 6;
	set_owner(&e, PID_SOURCE_CLOSE);
	e.proto = IPPROTO_UDP;
	e.direction = DIRECTION_OUTBOUND;
	e.destinations = 1;
	e.flags = EVENT_F_CONNECTED;
	e.cookie = bpf_get_socket_cookie(ctx);
	e.end_ns = bpf_ktime_get_boot_ns();
	if (owner_wanted(&e) && tuple_wanted(&e))
		emit(&e, EVENT_CLOSE);
}

/* close() of the last descriptor: the port's lifetime ends. */
SEC("cgroup/sock_release")
int udp_release(struct bpf_sock *ctx)
{
	struct conn *c;

	if (ctx->protocol != IPPROTO_UDP)
		return 1;
	c = bpf_sk_storage_get(&conns, ctx, 0, 0);
	if (!c) {
		udp_unused(ctx);
		return 1;
	}
	if (c->phase == PHASE_PENDING) {
		/* Bound, never used: the port is read here, with no open. */
		udp_local((struct sock *)ctx, &c->e);
		if (!c->e.lport || !tuple_wanted(&c->e))
			return 1;
		c->phase = PHASE_OPEN;
	}
	if (c->phase != PHASE_OPEN)
		return 1;
	c->e.end_ns = bpf_ktime_get_boot_ns();
	c->phase = PHASE_DONE;
	emit_close(c);
	return 1;
}

/* Adopts the UDP sockets that existed before tracing, like tcp_existing. */
SEC("iter/udp")
int udp_existing(struct bpf_iter__udp *ctx)
{
	struct event owner = {};
	struct sock *sk = (struct sock *)ctx->udp_sk;
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
	owner.direction = rport || (owner.lport >= cfg.ephemeral.lo && owner.lport <= cfg.ephemeral.hi) ?
		DIRECTION_OUTBOUND : DIRECTION_INBOUND;
	if (!owner_wanted(&owner) || !tuple_wanted(&owner))
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
