package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"go.uber.org/zap"
	"kernel.org/pub/linux/libs/security/libcap/cap"

	"github.com/portlife/portlife/tracer"
)

// keptOnceAttached are the capabilities portlife still uses once its hooks
// are attached (what it needs to start, and what lacking each costs, is
// the tracer's to say: tracer/errors.go):
//   - CAP_SYS_ADMIN: port accounting and the TIME_WAIT tracker enter network
//     namespaces (setns) as they appear, and Close unmounts what portlife
//     mounted;
//   - CAP_SYS_PTRACE: they find a namespace through any user's
//     /proc/PID/ns/net;
//   - CAP_DAC_READ_SEARCH: the reader names cgroups by id
//     (open_by_handle_at);
//   - CAP_DAC_OVERRIDE: sinks and the store reopen files (rotation, SIGHUP)
//     in directories that root may not own;
//   - CAP_BPF: reading the loss counters and the programs' run counts is a
//     bpf() call, which kernels before 6.5 refuse without it (or
//     CAP_SYS_ADMIN) while unprivileged eBPF is disabled, as distributions
//     set it.
var keptOnceAttached = []cap.Value{cap.SYS_ADMIN, cap.SYS_PTRACE, cap.DAC_READ_SEARCH, cap.DAC_OVERRIDE, cap.BPF}

// dropCapabilities keeps, of the capabilities portlife holds, only those it
// uses once attached, in every thread (libcap's psx), and out of the
// bounding set too, and says which it kept.
func dropCapabilities(log *zap.Logger) error {
	have := cap.GetProc()
	keep := cap.NewSet()
	var kept, dropped []string
	var bound []cap.Value
	for v := cap.Value(0); v < cap.MaxBits(); v++ {
		if on, err := have.GetFlag(cap.Permitted, v); err != nil || !on {
			continue
		}
		if slices.Contains(keptOnceAttached, v) {
			kept = append(kept, capName(v))
			if err := keep.SetFlag(cap.Permitted, true, v); err != nil {
				return err
			}
			if err := keep.SetFlag(cap.Effective, true, v); err != nil {
				return err
			}
			continue
		}
		dropped = append(dropped, capName(v))
		bound = append(bound, v)
	}
	// The bounding set first, while CAP_SETPCAP may still be effective:
	// then not even an exec could regain what was dropped.
	var errs []error
	if setpcap, _ := have.GetFlag(cap.Effective, cap.SETPCAP); setpcap {
		errs = append(errs, cap.DropBound(bound...))
	}
	errs = append(errs, cap.ResetAmbient(), keep.SetProc())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("dropping capabilities: %w", err)
	}
	log.Info("capabilities dropped: the hooks are attached", zap.Strings("kept", kept), zap.Strings("dropped", dropped))
	return nil
}

// capName is a capability as the kernel's headers and systemd spell it.
func capName(v cap.Value) string { return strings.ToUpper(v.String()) }

// dropWhenAttached drops capabilities once t reads its ring, or gives up
// when ctx ends. The caller runs it in a goroutine and joins it.
func dropWhenAttached(ctx context.Context, t *tracer.Tracer, log *zap.Logger) {
	select {
	case <-t.Reading():
		if err := dropCapabilities(log); err != nil {
			log.Warn("portlife keeps every capability it started with", zap.Error(err))
		}
	case <-ctx.Done():
	}
}
