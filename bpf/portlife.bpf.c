//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR MIT)
/*
 * portlife's kernel side: follows every TCP and UDP socket and sends one
 * event when a connection opens, when it closes, and when a connect fails.
 * State that must survive between hooks lives in socket-local storage, which
 * the kernel frees with the socket: no table to leak or evict, and no
 * confusion with a later socket at the same address.
 *
 * This file holds only the entry points, one call each. The handlers live
 * by concern: common.bpf.h (configuration, maps, the rules every event
 * goes through), tcp.bpf.h, udp.bpf.h, existing.bpf.h (sockets that
 * existed before tracing) and syscalls.bpf.h (calls that fail before the
 * protocol takes over).
 */
#include "common.bpf.h"
#include "syscalls.bpf.h"
#include "tcp.bpf.h"
#include "udp.bpf.h"
#include "existing.bpf.h"
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* Emit the enums to BTF, so bpf2go generates their Go constants. */
const enum event_kind *unused_event_kind __attribute__((unused));
const enum direction *unused_direction __attribute__((unused));
const enum pid_source *unused_pid_source __attribute__((unused));
const enum closed_by *unused_closed_by __attribute__((unused));
const enum event_flag *unused_event_flag __attribute__((unused));
const enum drop_reason *unused_drop_reason __attribute__((unused));
const enum traced_proto *unused_traced_proto __attribute__((unused));
const enum kernel_gap *unused_kernel_gap __attribute__((unused));

/* TCP */

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(tcp_state, struct sock *sk, int oldstate, int newstate)
{
	return tcp_state_changed(sk, oldstate, newstate);
}

SEC("tp_btf/tcp_send_reset")
int BPF_PROG(tcp_rst_sent, struct sock *sk)
{
	return tcp_reset_sent(sk);
}

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(tcp_rst_recv, struct sock *sk)
{
	return tcp_reset_received(sk);
}

SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(tcp_destroy, struct sock *sk)
{
	return tcp_destroyed(sk);
}

/* Cookies before Linux 5.12: an accepted child gets the kernel's (tcp_child_cookie). */
SEC("sockops")
int tcp_accepted(struct bpf_sock_ops *ctx)
{
	return tcp_child_cookie(ctx);
}

/* Cookies before Linux 5.12: every new TCP socket gets the kernel's (give_cookie). */
SEC("cgroup/sock_create")
int sock_cookie(struct bpf_sock *ctx)
{
	return give_cookie(ctx);
}

/* UDP */

SEC("cgroup/bind4")
int udp_bind4(struct bpf_sock_addr *ctx)
{
	return udp_bind(ctx);
}

SEC("cgroup/bind6")
int udp_bind6(struct bpf_sock_addr *ctx)
{
	return udp_bind(ctx);
}

SEC("cgroup/connect4")
int udp_connect4(struct bpf_sock_addr *ctx)
{
	return udp_connecting(ctx);
}

SEC("cgroup/connect6")
int udp_connect6(struct bpf_sock_addr *ctx)
{
	return udp_connecting(ctx);
}

SEC("cgroup/post_bind4")
int udp_bound4(struct bpf_sock *ctx)
{
	return udp_bound(ctx);
}

SEC("cgroup/post_bind6")
int udp_bound6(struct bpf_sock *ctx)
{
	return udp_bound(ctx);
}

SEC("cgroup/sendmsg4")
int udp_send4(struct bpf_sock_addr *ctx)
{
	return udp_sendmsg4(ctx);
}

SEC("cgroup/sendmsg6")
int udp_send6(struct bpf_sock_addr *ctx)
{
	return udp_sendmsg6(ctx);
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(udp_sent, struct sock *sk, int ret, int flags)
{
	return udp_datagram_sent(sk, ret);
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(udp_recvd, struct sock *sk, int ret, int flags)
{
	return udp_datagram_received(sk, ret, flags);
}

/*
 * Where the kernel runs fexit programs: UDP's own send and receive
 * functions in place of the two tracepoints above, which run for every
 * send and receive on the host, TCP included.
 */
SEC("fexit/udp_sendmsg")
int BPF_PROG(udp_tx4, struct sock *sk, struct msghdr *msg, unsigned long len, int ret)
{
	/* udpv6_sendmsg hands a send to a v4-mapped peer to udp_sendmsg: counted there. */
	if (sk->__sk_common.skc_family == AF_INET6)
		return 0;
	return udp_datagram_sent(sk, ret);
}

SEC("fexit/udpv6_sendmsg")
int BPF_PROG(udp_tx6, struct sock *sk, struct msghdr *msg, unsigned long len, int ret)
{
	return udp_datagram_sent(sk, ret);
}

/*
 * udp_recvmsg(sk, msg, len, noblock, flags, addr_len) lost noblock in Linux
 * 5.19 and addr_len in 6.18: user space reads how many arguments this
 * kernel's takes from its BTF, and the verifier keeps only that shape's
 * loads (udp_recvmsg_args is read-only).
 */
const volatile __u8 udp_recvmsg_args = 5;

static __always_inline int udp_recvmsg_returned(unsigned long long *ctx)
{
	struct sock *sk = (struct sock *)ctx[0];

	switch (udp_recvmsg_args) {
	case 4:
		return udp_datagram_received(sk, (int)ctx[4], (int)ctx[3]);
	case 5:
		return udp_datagram_received(sk, (int)ctx[5], (int)ctx[3]);
	default:
		return udp_datagram_received(sk, (int)ctx[6], (int)ctx[4]);
	}
}

SEC("fexit/udp_recvmsg")
int udp_rx4(unsigned long long *ctx)
{
	return udp_recvmsg_returned(ctx);
}

SEC("fexit/udpv6_recvmsg")
int udp_rx6(unsigned long long *ctx)
{
	return udp_recvmsg_returned(ctx);
}

SEC("cgroup/sock_release")
int udp_release(struct bpf_sock *ctx)
{
	return udp_released(ctx);
}

/* connect() and bind() that fail before the protocol takes over, TCP and UDP. */

SEC("tracepoint/syscalls/sys_enter_connect")
int connect_enter(struct syscall_enter_args *ctx)
{
	return call_entered(ctx, EVENT_CONNECT_FAILED);
}

SEC("tracepoint/syscalls/sys_exit_connect")
int connect_exit(struct syscall_exit_args *ctx)
{
	return call_exited(ctx, EVENT_CONNECT_FAILED);
}

SEC("tracepoint/syscalls/sys_enter_bind")
int bind_enter(struct syscall_enter_args *ctx)
{
	return call_entered(ctx, EVENT_BIND_FAILED);
}

SEC("tracepoint/syscalls/sys_exit_bind")
int bind_exit(struct syscall_exit_args *ctx)
{
	return call_exited(ctx, EVENT_BIND_FAILED);
}

/* Sockets from before tracing: run once at start (existing.bpf.h). */

SEC("iter/task_file")
int find_owners(struct bpf_iter__task_file *ctx)
{
	return find_owner(ctx);
}

SEC("iter/tcp")
int tcp_existing(struct bpf_iter__tcp *ctx)
{
	return adopt_tcp(ctx->sk_common);
}

SEC("iter/udp")
int udp_existing(struct bpf_iter__udp *ctx)
{
	return adopt_udp((struct sock *)ctx->udp_sk);
}
