package tracer

//go:generate go tool bpf2go -tags linux -type event -type owner -type sock_file -type drop_reason -type event_kind -type direction -type pid_source -type closed_by -type event_flag -type traced_proto -type kernel_gap portlife ../bpf/portlife.bpf.c -- -I../bpf -Wall -Werror
