package tracer

import (
	"fmt"

	"github.com/cilium/ebpf"
)

// skippedRuns sums the runs the kernel skipped of the given programs. A
// tracing program does not run when it is already running on that CPU (an
// interrupt fired the same tracepoint while it ran); the kernel counts those
// runs as recursion misses (Linux 5.12 and later). A skipped run of a state
// hook may lose an event, so they count as lost.
func skippedRuns(progs []*ebpf.Program) (uint64, error) {
	var n uint64
	for _, p := range progs {
		if p == nil {
			continue
		}
		s, err := p.Stats()
		if err != nil {
			return n, fmt.Errorf("reading program stats of %s: %w", p, err)
		}
		n += s.RecursionMisses
	}
	return n, nil
}

// attachedPrograms are the programs whose skipped runs can lose events.
func (t *Tracer) attachedPrograms() []*ebpf.Program {
	hooks := t.hooks()
	progs := make([]*ebpf.Program, 0, len(hooks))
	for _, h := range hooks {
		progs = append(progs, h.prog)
	}
	return progs
}
