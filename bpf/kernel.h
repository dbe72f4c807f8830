/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * The few kernel types portlife reads, instead of a multi-megabyte vmlinux.h.
 *
 * Kernel-internal structs carry preserve_access_index, so every field access
 * is relocated by CO-RE against the running kernel's BTF: only the field
 * names and types here must match, not their offsets. The uapi part (map
 * types, flags, struct bpf_sock*) is ABI and copied as is.
 */
#ifndef __PORTLIFE_KERNEL_H
#define __PORTLIFE_KERNEL_H

typedef signed char __s8;
typedef unsigned char __u8;
typedef short __s16;
typedef unsigned short __u16;
typedef int __s32;
typedef unsigned int __u32;
typedef long long __s64;
typedef unsigned long long __u64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef _Bool bool;
#define true 1
#define false 0

/* uapi: linux/bpf.h */
enum {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_LPM_TRIE = 11,
	BPF_MAP_TYPE_SK_STORAGE = 24,
	BPF_MAP_TYPE_RINGBUF = 27,
	BPF_MAP_TYPE_TASK_STORAGE = 29,
};
enum {
	BPF_ANY = 0,
	BPF_NOEXIST = 1,
	BPF_F_NO_PREALLOC = 1,
	BPF_F_CLONE = 512,
	BPF_SK_STORAGE_GET_F_CREATE = 1,
	BPF_LOCAL_STORAGE_GET_F_CREATE = 1,
	BPF_RB_NO_WAKEUP = 1,
	BPF_RB_FORCE_WAKEUP = 2,
	BPF_RB_AVAIL_DATA = 0,
};

struct bpf_sock {
	__u32 bound_dev_if;
	__u32 family;
	__u32 type;
	__u32 protocol;
	__u32 mark;
	__u32 priority;
	__u32 src_ip4;
	__u32 src_ip6[4];
	__u32 src_port;
	__be16 dst_port;
	__u32 dst_ip4;
	__u32 dst_ip6[4];
	__u32 state;
	__s32 rx_queue_mapping;
};

/* Only op is read; the rest of the context is not declared. */
struct bpf_sock_ops {
	__u32 op;
};
enum {
	BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB = 5,
};

struct bpf_sock_addr {
	__u32 user_family;
	__u32 user_ip4;
	__u32 user_ip6[4];
	__u32 user_port;
	__u32 family;
	__u32 type;
	__u32 protocol;
	__u32 msg_src_ip4;
	__u32 msg_src_ip6[4];
	union {
		struct bpf_sock *sk;
		__u64 : 64;
	} __attribute__((aligned(8)));
};

/* uapi: errno */
#define EEXIST 17

/* uapi: socket families and protocols */
#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define AF_UNSPEC 0

/* include/uapi/linux/net.h: struct socket's state */
typedef enum {
	SS_FREE = 0,
	SS_UNCONNECTED = 1,
	SS_CONNECTING = 2,
	SS_CONNECTED = 3,
	SS_DISCONNECTING = 4,
} socket_state;

/*
 * The records of the per-syscall tracepoints syscalls:sys_enter_* and
 * sys_exit_* (events/syscalls/<name>/format in tracefs): the common header,
 * the syscall number, then each argument, or the return value, in 8 bytes.
 * A classic tracepoint's record is not relocated by CO-RE; this layout has
 * not changed since the syscall tracepoints were added.
 */
struct syscall_enter_args {
	__u64 common;
	__s32 nr;
	__u32 pad;
	__u64 args[6];
};

struct syscall_exit_args {
	__u64 common;
	__s32 nr;
	__u32 pad;
	__s64 ret;
};

/* include/uapi/linux/in.h, in6.h: what connect() and bind() are given. */
struct sockaddr_in {
	__u16 sin_family;
	__be16 sin_port;
	__be32 sin_addr;
	__u8 pad[8];
};

struct sockaddr_in6 {
	__u16 sin6_family;
	__be16 sin6_port;
	__be32 sin6_flowinfo;
	__u8 sin6_addr[16];
	__u32 sin6_scope_id;
};

/* include/net/tcp_states.h */
enum {
	TCP_ESTABLISHED = 1,
	TCP_SYN_SENT = 2,
	TCP_SYN_RECV = 3,
	TCP_FIN_WAIT1 = 4,
	TCP_FIN_WAIT2 = 5,
	TCP_TIME_WAIT = 6,
	TCP_CLOSE = 7,
	TCP_CLOSE_WAIT = 8,
	TCP_LAST_ACK = 9,
	TCP_LISTEN = 10,
	TCP_CLOSING = 11,
};

/* Kernel-internal types: CO-RE relocated. */
#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

struct in6_addr {
	union {
		__u8 u6_addr8[16];
		__be32 u6_addr32[4];
	} in6_u;
};

struct ns_common {
	unsigned int inum;
};

/*
 * A namespace's net.ipv4.ip_local_port_range (include/net/netns/ipv4.h).
 * Since Linux 6.8 it is one u32, lo in the low 16 bits and hi in the high
 * 16. Before, it was int range[2] behind a seqlock: the ___old flavour,
 * which CO-RE also matches to the kernel's struct local_ports. Each flavour
 * matches only the kernel whose range has its type, so
 * bpf_core_field_exists() on the old one tells the layouts apart.
 */
struct local_ports {
	__u32 range;
};

struct local_ports___old {
	int range[2];
};

struct netns_ipv4 {
	struct local_ports ip_local_ports;
};

struct net {
	struct ns_common ns;
	struct netns_ipv4 ipv4;
};

typedef struct {
	struct net *net;
} possible_net_t;

typedef struct {
	__s64 counter;
} atomic64_t;

struct sock_common {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	volatile unsigned char skc_state;
	possible_net_t skc_net;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
	atomic64_t skc_cookie; /* 0 until someone asks for the socket's cookie */
};

struct inode {
	unsigned short i_mode;
	unsigned long i_ino;
};

/* include/uapi/linux/stat.h */
#define S_IFMT 00170000
#define S_IFSOCK 0140000

struct file {
	struct inode *f_inode;
	void *private_data; /* a socket's file: its struct socket */
};

struct sock;
struct msghdr; /* an argument of the UDP functions' fexit programs, never read */

struct socket {
	socket_state state;
	struct sock *sk;
	struct file *file;
};

/* A task's descriptors: current->files->fdt->fd[fd]. */
struct fdtable {
	unsigned int max_fds;
	struct file **fd;
};

struct files_struct {
	struct fdtable *fdt;
};

struct task_struct {
	int tgid;
	__u64 start_time;
	struct files_struct *files;
	struct task_struct *group_leader;
	const struct cred *cred;
	char comm[16];
	struct nsproxy *nsproxy;
	struct css_set *cgroups;
};

struct sock {
	struct sock_common __sk_common;
	struct socket *sk_socket;
	int sk_err;
	__u16 sk_protocol;
	__u16 sk_type;
	__u8 sk_userlocks; /* a 4-bit bitfield before 5.13: read with BPF_CORE_READ_BITFIELD */
};

/* sk_userlocks: bind() was given a port by number (include/net/sock.h). */
#define SOCK_BINDPORT_LOCK 8

struct inet_sock {
	struct sock sk;
	__be16 inet_sport;
};

struct tcp_sock {
	__u32 segs_in;
	__u32 segs_out;
	__u32 total_retrans;
	__u64 bytes_received;
	__u64 bytes_acked;
};

struct bpf_iter_meta {
	struct seq_file *seq;
	__u64 session_id;
	__u64 seq_num;
};

struct udp_sock {
	struct inet_sock inet;
	__u16 gso_size; /* UDP_SEGMENT set on the socket; 0: none */
};

struct bpf_iter__udp {
	struct bpf_iter_meta *meta;
	struct udp_sock *udp_sk;
	__u32 uid;
	int bucket;
};

struct bpf_iter__tcp {
	struct bpf_iter_meta *meta;
	struct sock_common *sk_common;
	__u32 uid;
};

/* Processes, for the owners of the sockets that existed at start. */
typedef struct {
	__u32 val;
} kuid_t;

struct cred {
	kuid_t uid;
};

struct kernfs_node {
	__u64 id;
};

struct cgroup {
	struct kernfs_node *kn;
};

struct css_set {
	struct cgroup *dfl_cgrp;
};

struct nsproxy {
	struct net *net_ns;
};

struct bpf_iter__task_file {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
	__u32 fd;
	struct file *file;
};

#pragma clang attribute pop

#endif /* __PORTLIFE_KERNEL_H */
