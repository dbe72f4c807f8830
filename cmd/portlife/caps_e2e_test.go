package main

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/portlife/portlife/internal/kerneltest"
)

// Once its hooks are attached, every thread of portlife holds only the
// capabilities it still uses (keptOnceAttached), in its effective,
// permitted and bounding sets. And it still does what needs them: port
// accounting enters a network namespace that appears after the drop
// (setns) to read its port range, and the exit detaches everything.
func TestCapabilitiesDroppedOnceAttached(t *testing.T) {
	requireRoot(t)
	before := ourPrograms(t)
	p := start(t, "--output", "json", "--log-format", "json", "--pid", fmt.Sprint(os.Getpid()), "--flush-interval", "10ms")
	loaded := newPrograms(t, before)
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(p.stderr.String(), "capabilities dropped"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no 'capabilities dropped' within 5s of the start; stderr:\n%s", p.stderr.String())
		}
	}

	var want uint64
	for _, v := range keptOnceAttached {
		want |= 1 << v
	}
	want &= capsOf(t, "/proc/self/status", "CapEff") // the test's own, which portlife started with
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", p.cmd.Process.Pid))
	if err != nil || len(tasks) == 0 {
		t.Fatalf("portlife's threads: %v %v", tasks, err)
	}
	for _, status := range tasks {
		for _, set := range []string{"CapEff", "CapPrm", "CapBnd"} {
			if got := capsOf(t, status, set); got != want {
				t.Errorf("%s %s = %#x, want %#x", status, set, got, want)
			}
		}
	}

	// A namespace made after the drop, with 10 ports: 5 TIME_WAITs to one
	// destination are 50% of it only if accounting read its range there.
	ns := kerneltest.NewNetns(t, map[string]string{"ip_local_port_range": "40000 40009", "tcp_tw_reuse": "0"})
	dst := netip.MustParseAddrPort("127.0.0.1:5000")
	if err := ns.Do(func() error {
		ln, err := tcpListen(dst)
		if err != nil {
			return err
		}
		for range 5 {
			if err := timeWait(ln, dst, false); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // the events through the ring, and a Flush
	if code := p.stop(t, os.Interrupt); code != 0 {
		t.Fatalf("exit code %d; stderr:\n%s", code, p.stderr.String())
	}
	if left := stillLoaded(loaded); len(left) > 0 {
		t.Errorf("programs still loaded after exit: %v", left)
	}
	var pressed bool
	for _, e := range parseEvents(t, p.stdout.Bytes()) {
		if e.Event == "pressure" && e.NetNS == ns.Inode && e.Capacity == 10 && e.Used == 5 {
			pressed = true
		}
	}
	if !pressed {
		t.Errorf("no pressure event at 5 of 10 ports in the namespace made after the drop; stdout:\n%s\nstderr:\n%s", p.stdout.String(), p.stderr.String())
	}
}

// capsOf reads a capability set (CapEff, CapPrm, CapBnd) from a status file.
func capsOf(t *testing.T, status, set string) uint64 {
	t.Helper()
	b, err := os.ReadFile(status)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if hex, ok := strings.CutPrefix(line, set+":"); ok {
			v, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	t.Fatalf("%s has no %s", status, set)
	return 0
}
