/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * The event portlife's kernel side sends to user space, shared by both sides:
 * bpf2go generates the Go type from this struct's BTF, so it is never
 * mirrored by hand. Fields are fixed width, largest first, with no implicit
 * padding, so the layout is the same for C and Go.
 */
#ifndef __PORTLIFE_H
#define __PORTLIFE_H

#define COMM_LEN 16

enum event_kind {
	EVENT_OPEN = 1,           /* handshake done (TCP) or local port bound (UDP) */
	EVENT_CLOSE = 2,          /* the port's lifetime ended */
	EVENT_CONNECT_FAILED = 3, /* an outbound connect never got established */
	EVENT_BIND_FAILED = 4,    /* bind() failed */
};

enum direction {
	DIRECTION_UNKNOWN = 0,
	DIRECTION_OUTBOUND = 1, /* we connected: the local port is ephemeral */
	DIRECTION_INBOUND = 2,  /* we accepted, or bound explicitly */
};

/* How the process in an event was learned. */
enum pid_source {
	PID_SOURCE_UNKNOWN = 0,
	PID_SOURCE_CONNECT = 1,  /* the task that called connect() */
	PID_SOURCE_LISTENER = 2, /* the task that called listen() on the parent socket */
	PID_SOURCE_CLOSE = 3,    /* the task that called close() or shutdown(); for an accepted connection, one outside the listener's process */
	PID_SOURCE_SOCKET = 4,   /* UDP: the task that created, bound or first used it */
	PID_SOURCE_FD_OWNER = 5, /* a process holding the socket's fd when tracing started */
	PID_SOURCE_BIND = 6,     /* the task that called bind() */
	/* 7 was PID_SOURCE_READER: an accepted connection's owner now comes from its close (PID_SOURCE_CLOSE) */
	PID_SOURCE_LISTENER_FD_OWNER = 8, /* accepted by a listener from before tracing: its fd owner */
};

enum closed_by {
	CLOSED_BY_UNKNOWN = 0,
	CLOSED_BY_LOCAL = 1,  /* we sent the first FIN or a reset */
	CLOSED_BY_REMOTE = 2, /* the peer sent the first FIN or a reset */
};

enum event_flag {
	EVENT_F_RESET_SENT = 1 << 0,
	EVENT_F_RESET_RECEIVED = 1 << 1,
	EVENT_F_TIME_WAIT = 1 << 2,    /* the local port now waits in TIME_WAIT */
	EVENT_F_PRE_EXISTING = 1 << 3, /* the socket existed before tracing started */
	EVENT_F_CONNECTED = 1 << 4,    /* UDP: connect() fixed the peer */
	EVENT_F_EPHEMERAL = 1 << 5,    /* the ephemeral-side port is in its netns's ip_local_port_range */
	EVENT_F_SYSCALL = 1 << 6,      /* connect_failed, bind_failed: seen at the syscall's return, before the protocol sent anything */
	EVENT_F_BIND_BEFORE_CONNECT = 1 << 7, /* TCP: bind() to port 0 gave the port, then connect(): it came from the bind pool */
};

/* The protocols traced, for hooks that see both (enum traced_proto bits). */
enum traced_proto {
	TRACED_TCP = 1 << 0,
	TRACED_UDP = 1 << 1,
};

/* Why the kernel side could not deliver or track something; indexes drops. */
enum drop_reason {
	DROP_RINGBUF_FULL = 0,  /* an event found the ring buffer full */
	DROP_STORAGE_FULL = 1,  /* no per-socket state could be allocated */
	DROP_TABLE_FULL = 2,    /* a bounded table evicted or refused an entry */
	DROP_REASON_MAX = 3,
};

struct event {
	__u8 laddr[16];     /* local address: IPv6, or IPv4 as ::ffff:a.b.c.d; network order */
	__u8 raddr[16];     /* remote address, as laddr */
	__u64 cookie;       /* socket cookie: the same for all events of one socket */
	__u64 start_ns;     /* CLOCK_BOOTTIME: connect(), SYN received, or bind; 0 if before tracing */
	__u64 established_ns; /* CLOCK_BOOTTIME: handshake completed; 0 if never */
	__u64 end_ns;       /* CLOCK_BOOTTIME: the event itself (close: the port was released) */
	__u64 tx_bytes;     /* TCP: bytes acked by the peer; UDP: payload bytes sent */
	__u64 rx_bytes;     /* TCP: bytes received; UDP: payload bytes received */
	__u64 cgroup_id;    /* cgroup v2 id of the owning task */
	__u32 pid;          /* owning process (tgid), as enum pid_source says */
	__u32 tid;
	__u32 uid;
	__u32 netns;        /* network namespace inode number */
	__u32 tx_packets;   /* TCP: segments sent; UDP: datagrams sent */
	__u32 rx_packets;   /* TCP: segments received; UDP: datagrams received */
	__u32 retransmits;  /* TCP: segments retransmitted */
	__u32 destinations; /* UDP: distinct destinations sent to (saturates) */
	__s32 error;        /* connect_failed, bind_failed: the error (an errno), 0 if none */
	__u32 listener_pid; /* inbound TCP: the process that called listen(); 0 if not known */
	__u32 _pad;         /* explicit: the record stays a multiple of 8 bytes */
	__u16 lport;        /* host order; 0 if none was allocated */
	__u16 rport;        /* host order */
	__u8 kind;          /* enum event_kind */
	__u8 proto;         /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 family;        /* 4 or 6: the family on the wire (v4-mapped IPv6 is 4) */
	__u8 direction;     /* enum direction */
	__u8 pid_source;    /* enum pid_source */
	__u8 closed_by;     /* enum closed_by */
	__u8 flags;         /* enum event_flag */
	__u8 last_state;    /* TCP: the state left for TCP_CLOSE */
	char comm[COMM_LEN];   /* the owning process's name: its thread group leader's comm */
	char thread[COMM_LEN]; /* the name of the thread that did it (tid); empty if not seen */
};

/*
 * What this kernel lacks, found by user space's probes at start
 * (tracer/features.go). Each bit turns the kernel side to the next best
 * mechanism; the verifier prunes the path not taken, so a helper this kernel
 * does not have is never seen by it.
 */
enum kernel_gap {
	GAP_SK_STORAGE = 1 << 0,    /* tracing programs may not use socket storage (Linux 5.11) */
	GAP_SOCKET_COOKIE = 1 << 1, /* tracing programs may not ask for a socket's cookie (5.12) */
	GAP_TASK_STORAGE = 1 << 2,  /* tracepoint programs may not use task storage (5.11) */
	GAP_SOCK_FROM_FILE = 1 << 3, /* no bpf_sock_from_file() (5.11) */
	GAP_DATAGRAM_HOOKS = 1 << 4, /* no sock_send_length and sock_recv_length tracepoints (6.3) */
};

#define MAX_PORT_RANGES 8
#define MAX_RADDR_NETS 64

struct port_range {
	__u16 lo;
	__u16 hi;
};

/* Filters and tuning, set once by user space before the program loads. */
struct config {
	__u64 min_duration_ns; /* drop close events of shorter lifetimes */
	__u64 wakeup_bytes;    /* wake the reader once this much is queued; 0: every event */
	__u32 pid;             /* 0: any process */
	__u32 events;          /* bit (1 << enum event_kind) per kind to send */
	struct port_range lports[MAX_PORT_RANGES];
	struct port_range rports[MAX_PORT_RANGES];
	__u8 n_lports;         /* 0: any local port */
	__u8 n_rports;         /* 0: any remote port */
	__u8 family;           /* 0: any; 4 or 6 */
	__u8 direction;        /* 0: any; enum direction */
	__u8 ephemeral_only;
	__u8 match_raddr;      /* the remote address must be in raddr_nets */
	__u8 match_comm;
	__u8 protos;           /* enum traced_proto bits: for the hooks that see every protocol */
	char comm[COMM_LEN];
	__u8 gaps;             /* enum kernel_gap bits */
	__u8 _pad[7];
};

#endif /* __PORTLIFE_H */
