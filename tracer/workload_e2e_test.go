package tracer

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/portlife/portlife/internal/event"
)

const testContainerID = "5eed0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab"

// makeCgroup makes a cgroup v2 directory named name under a directory of
// the test's own, and returns a descriptor that starts a process in it
// (clone3's CLONE_INTO_CGROUP). The cleanup removes it once the test's
// helpers, stopped by earlier-run cleanups, have left it.
func makeCgroup(t *testing.T, name string) int {
	t.Helper()
	root, err := cgroup2Mount("/proc/mounts")
	if err != nil {
		t.Fatal(err)
	}
	base, err := os.MkdirTemp(root, "portlife-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(base, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		f.Close()
		if err := os.Remove(dir); err != nil {
			t.Errorf("removing cgroup: %v", err)
		}
		os.Remove(base)
	})
	return int(f.Fd())
}

// The tracer names the workload of each event from its cgroup: a systemd
// unit or a container id, and --unit, --container and --netns keep only
// the events of theirs. Clients in a unit's cgroup, a docker container's
// cgroup and a network namespace of their own each connect to a server in
// the test's cgroup; every event the tracer writes must pass the filter,
// and the workload's own must all be there.
func TestWorkloadNamesAndFilters(t *testing.T) {
	requireRoot(t)
	const conns = 20
	type client struct {
		name string
		attr func(t *testing.T) *syscall.SysProcAttr
		want event.Event // Unit and ContainerID of its events
	}
	web := client{"web", func(t *testing.T) *syscall.SysProcAttr {
		return &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: makeCgroup(t, "web.service")}
	}, event.Event{Unit: "web.service"}}
	box := client{"box", func(t *testing.T) *syscall.SysProcAttr {
		return &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: makeCgroup(t, "docker-"+testContainerID+".scope")}
	}, event.Event{ContainerID: testContainerID}}

	for _, tt := range []struct {
		name   string
		filter event.Filter
		// in: the clients whose events must be written; out: the ones whose
		// must not be.
		in, out []client
	}{
		{"no filter names both", event.Filter{}, []client{web, box}, nil},
		{"unit", event.Filter{Units: []string{"web.service"}}, []client{web}, []client{box}},
		{"container prefix", event.Filter{Containers: []string{testContainerID[:12]}}, []client{box}, []client{web}},
		{"netns", event.Filter{NetNS: []uint32{testNetns}}, []client{web, box}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := startTracer(t, tt.filter)
			server := startHelper(t, "server", "", nil)
			port, err := strconv.Atoi(server.line(t))
			if err != nil {
				t.Fatal(err)
			}
			// The network namespace filter's outsider: a process in a
			// namespace of its own, connecting over its loopback.
			var outsider *helper
			if len(tt.filter.NetNS) > 0 {
				outsider = startHelper(t, "netnsconns", "10000 10999", &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET})
				outsider.line(t) // its connections are done
			}
			// The ones left out first: once the wanted events are in, the
			// others would have been too.
			run := func(c client) *helper {
				h := startHelper(t, "client", fmt.Sprintf("%d@127.0.0.1:%d", conns, port), c.attr(t))
				for range conns {
					h.line(t)
				}
				return h
			}
			var outs []*helper
			for _, c := range tt.out {
				outs = append(outs, run(c))
			}
			for _, c := range tt.in {
				h := run(c)
				got, _ := r.waitCounted(t, 2*conns, func(e *event.Event) bool {
					return e.PID == h.pid() && e.Proto == event.ProtoTCP && e.Remote.Port() == uint16(port)
				})
				for _, e := range got {
					if e.Unit != c.want.Unit || e.ContainerID != c.want.ContainerID {
						t.Errorf("%s: event with unit %q, container %q; want %q, %q: %+v", c.name, e.Unit, e.ContainerID, c.want.Unit, c.want.ContainerID, e)
						break
					}
				}
			}
			for _, h := range outs {
				if got := r.events.matching(func(e *event.Event) bool { return e.PID == h.pid() }); len(got) > 0 {
					t.Errorf("%d events of a process the filter leaves out: %+v", len(got), got[0])
				}
			}
			if outsider != nil {
				if got := r.events.matching(func(e *event.Event) bool { return e.PID == outsider.pid() }); len(got) > 0 {
					t.Errorf("%d events of a process in another network namespace: %+v", len(got), got[0])
				}
			}
			for _, e := range r.events.matching(func(e *event.Event) bool { return !tt.filter.Keeps(e) }) {
				t.Errorf("an event the filter leaves out: %+v", e)
				break
			}
			r.requireNothingLost(t)
		})
	}
}
