package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/internal/kerneltest"
)

// These tests run the real binary as a user would: as root, with the
// program loaded into the running kernel, stopped by a signal.

var binary string // built once by TestMain, or PORTLIFE_BINARY

// freshMountsEnv makes the test binary the wrapper inFreshMounts.
const freshMountsEnv = "PORTLIFE_TEST_FRESH_MOUNTS"

func TestMain(m *testing.M) {
	if os.Getenv(freshMountsEnv) != "" {
		os.Exit(inFreshMounts(os.Args[1:]))
	}
	if os.Getenv(churnEnv) != "" {
		os.Exit(churnHelper(os.Args[len(os.Args)-2:]))
	}
	// A prebuilt binary, for where there is no Go toolchain: the kernel
	// matrix (test/kernels) runs these tests inside other kernels.
	if binary = os.Getenv("PORTLIFE_BINARY"); binary != "" {
		if _, err := os.Stat(binary); err != nil {
			fmt.Fprintf(os.Stderr, "PORTLIFE_BINARY: %v\n", err)
			os.Exit(1)
		}
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "portlife-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Chmod(dir, 0o755) // the unprivileged test runs it as nobody
	binary = filepath.Join(dir, "portlife")
	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building portlife: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var requireRoot = kerneltest.RequireRoot

// process is a running portlife.
type process struct {
	cmd        *exec.Cmd
	stdout     bytes.Buffer
	stderr     stderrText    // written as stderr is read; a test may look at it meanwhile
	stderrDone chan struct{} // closed once stderr was read to its end
	started    chan struct{}
}

// stderrText is text one goroutine writes while another reads it.
type stderrText struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *stderrText) WriteString(s string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.WriteString(s)
}

func (b *stderrText) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// start runs portlife with args and waits for "tracing started".
func start(t *testing.T, args ...string) *process {
	t.Helper()
	p := &process{cmd: exec.Command(binary, args...), started: make(chan struct{})}
	p.cmd.Stdout = &p.stdout
	return p.begin(t)
}

// begin starts p.cmd and waits for "tracing started", or fails as soon as
// portlife exits without it.
func (p *process) begin(t *testing.T) *process {
	t.Helper()
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.stderr.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), "tracing started") {
				close(p.started)
			}
		}
	}()
	p.stderrDone = exited
	select {
	case <-p.started:
	case <-exited:
		p.cmd.Wait()
		t.Fatalf("portlife exited before 'tracing started'; stderr:\n%s", p.stderr.String())
		return nil
	case <-time.After(20 * time.Second):
		p.cmd.Process.Kill()
		t.Fatalf("no 'tracing started' within 20s; stderr:\n%s", p.stderr.String())
	}
	t.Cleanup(func() { p.cmd.Process.Kill() })
	return p
}

// stop signals portlife and returns its exit code.
func (p *process) stop(t *testing.T, sig os.Signal) int {
	t.Helper()
	p.cmd.Process.Signal(sig)
	return p.wait(t)
}

// wait returns portlife's exit code once it has exited and all it wrote to
// stderr was read (Wait closes the pipe, so it must come after).
func (p *process) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-p.stderrDone:
	case <-time.After(20 * time.Second):
		p.cmd.Process.Kill()
		t.Fatal("portlife did not exit within 20s")
	}
	err := p.cmd.Wait()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0
}

// roundTrip makes one loopback connection that the client closes first.
func roundTrip(t *testing.T) (client, server net.Addr) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("ping"))
	io.ReadFull(s, make([]byte, 4))
	c.Close()
	s.Read(make([]byte, 1))
	s.Close()
	return c.LocalAddr(), ln.Addr()
}

// The schema's required fields, which other tooling depends on.
var required = map[string][]string{
	"open":           {"ts", "event", "proto", "family", "pid", "comm", "uid", "laddr", "lport", "raddr", "rport", "direction", "ephemeral"},
	"close":          {"ts", "event", "proto", "family", "pid", "comm", "uid", "laddr", "lport", "raddr", "rport", "direction", "ephemeral", "duration_ms", "tx_bytes", "rx_bytes", "closed_by"},
	"connect_failed": {"ts", "event", "proto", "family", "pid", "comm", "uid", "laddr", "lport", "raddr", "rport", "direction", "ephemeral", "reason", "errno"},
	"bind_failed":    {"ts", "event", "proto", "family", "pid", "comm", "uid", "laddr", "lport", "raddr", "rport", "direction", "ephemeral", "reason", "errno"},
	"released":       {"ts", "event", "proto", "family", "pid", "comm", "uid", "laddr", "lport", "raddr", "rport", "direction", "ephemeral", "start", "time_wait_ms", "release"},
}

func TestJSONOutputAndCleanExit(t *testing.T) {
	requireRoot(t)
	for _, sig := range []os.Signal{os.Interrupt, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			before := ourPrograms(t)
			p := start(t, "--output", "json", "--pid", fmt.Sprint(os.Getpid()), "--flush-interval", "10ms")
			loaded := newPrograms(t, before)
			if len(loaded) == 0 {
				t.Fatal("no portlife programs loaded while it runs: the check below would prove nothing")
			}
			client, server := roundTrip(t)
			time.Sleep(200 * time.Millisecond) // let the last events reach the ring
			if code := p.stop(t, sig); code != 0 {
				t.Fatalf("exit code %d after %v, want 0; stderr:\n%s", code, sig, p.stderr.String())
			}
			if left := stillLoaded(loaded); len(left) > 0 {
				t.Errorf("programs still loaded 5s after exit: %v", left)
			}

			cport, sport := client.(*net.TCPAddr).Port, server.(*net.TCPAddr).Port
			kinds := map[string]int{}
			sc := bufio.NewScanner(&p.stdout)
			for sc.Scan() {
				var ev map[string]any
				if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
					t.Fatalf("not a JSON line: %q: %v", sc.Text(), err)
				}
				lport, rport := int(ev["lport"].(float64)), int(ev["rport"].(float64))
				if !(lport == cport && rport == sport || lport == sport && rport == cport) {
					continue
				}
				kind := ev["event"].(string)
				kinds[kind+"/"+ev["direction"].(string)]++
				for _, f := range required[kind] {
					if _, ok := ev[f]; !ok {
						t.Errorf("%s event without %q: %s", kind, f, sc.Text())
					}
				}
				if ts, err := time.Parse(time.RFC3339Nano, ev["ts"].(string)); err != nil || time.Since(ts) > time.Minute {
					t.Errorf("ts %v is not a recent RFC 3339 time: %v", ev["ts"], err)
				}
				if int(ev["pid"].(float64)) != os.Getpid() {
					t.Errorf("pid %v, want ours, %d", ev["pid"], os.Getpid())
				}
			}
			want := map[string]int{"open/outbound": 1, "open/inbound": 1, "close/outbound": 1, "close/inbound": 1}
			if fmt.Sprint(kinds) != fmt.Sprint(want) {
				t.Errorf("events %v, want %v; stdout:\n%s", kinds, want, p.stdout.String())
			}
			stderr := p.stderr.String()
			if !strings.Contains(stderr, `"msg":"tracing stopped"`) || !strings.Contains(stderr, `"lost":0`) {
				t.Errorf("stderr has no 'tracing stopped' with lost 0:\n%s", stderr)
			}
		})
	}
}

// Even killed outright, portlife leaves no hook attached: every attachment
// is a BPF link owned by the process's file descriptors, which the kernel
// closes with it.
func TestKilledLeavesNothingAttached(t *testing.T) {
	requireRoot(t)
	before := ourPrograms(t)
	p := start(t, "--output", "json")
	loaded := newPrograms(t, before)
	names := map[string]bool{}
	for _, n := range loaded {
		names[n] = true
	}
	if !names["udp_release"] || !names["tcp_state"] || !names["connect_exit"] {
		t.Fatalf("loaded %v: want the TCP, the UDP (cgroup) and the syscall tracepoint programs", loaded)
	}
	p.cmd.Process.Kill()
	p.cmd.Wait()
	if left := stillLoaded(loaded); len(left) > 0 {
		t.Errorf("programs still loaded 5s after SIGKILL: %v", left)
	}
}

func TestTextOutput(t *testing.T) {
	requireRoot(t)
	p := start(t, "--output", "text", "--pid", fmt.Sprint(os.Getpid()), "--events", "close", "--flush-interval", "10ms")
	client, _ := roundTrip(t)
	time.Sleep(200 * time.Millisecond)
	if code := p.stop(t, os.Interrupt); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
	lines := strings.Split(strings.TrimSpace(p.stdout.String()), "\n")
	if len(lines) < 3 || !strings.HasPrefix(lines[0], "TIME") {
		t.Fatalf("want a header and two close lines, got:\n%s", p.stdout.String())
	}
	found := 0
	for _, l := range lines[1:] {
		if strings.Contains(l, client.String()) {
			found++
			if !strings.Contains(l, " close ") || !strings.Contains(l, "closed_by=") {
				t.Errorf("line is not a close with its notes: %q", l)
			}
		}
	}
	if found != 2 {
		t.Errorf("%d lines mention %v, want its two close events:\n%s", found, client, p.stdout.String())
	}
}

// Without the privileges, portlife says what to do, exits 1, and loads
// nothing.
func TestUnprivilegedExitsWithAdvice(t *testing.T) {
	requireRoot(t) // to drop privileges, and to see every loaded program
	before := ourPrograms(t)
	cmd := exec.Command(binary, "--output", "json")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("exit %v, want code 1; stderr:\n%s", err, stderr.String())
	}
	out := strings.TrimSpace(stderr.String())
	if strings.Count(out, "\n") != 0 || !strings.Contains(out, "run it with sudo") {
		t.Errorf("want one line that says to run it with sudo, got:\n%s", out)
	}
	if len(newPrograms(t, before)) != 0 {
		t.Errorf("an unprivileged run loaded programs")
	}
}

func TestUsageErrorsExit2(t *testing.T) {
	cases := [][]string{
		{"--lport", "99999"},
		{"--raddr", "not-a-net"},
		{"--output", "yaml"},
		{"--container", "web"},
		{"--no-such-flag"},
	}
	for _, args := range cases {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			cmd := exec.Command(binary, args...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 2 {
				t.Fatalf("exit %v, want code 2; stderr:\n%s", err, stderr.String())
			}
			if !strings.Contains(stderr.String(), args[0]) {
				t.Errorf("message does not name %s:\n%s", args[0], stderr.String())
			}
		})
	}
}

// portlife's program names, as in bpf/portlife.bpf.c.
var programNames = map[string]bool{
	"tcp_state": true, "tcp_rst_sent": true, "tcp_rst_recv": true, "tcp_destroy": true, "tcp_existing": true,
	"udp_bind4": true, "udp_bind6": true,
	"udp_send4": true, "udp_send6": true, "udp_sent": true, "udp_recvd": true, "udp_release": true,
	"udp_tx4": true, "udp_tx6": true, "udp_rx4": true, "udp_rx6": true,
	"connect_enter": true, "connect_exit": true, "bind_enter": true, "bind_exit": true,
}

// ourPrograms lists the loaded programs that bear portlife's names.
func ourPrograms(t *testing.T) map[ebpf.ProgramID]string {
	t.Helper()
	out := map[ebpf.ProgramID]string{}
	for id := ebpf.ProgramID(0); ; {
		next, err := ebpf.ProgramGetNextID(id)
		if err != nil {
			return out
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue // unloaded meanwhile
		}
		if info, err := p.Info(); err == nil && programNames[info.Name] {
			out[id] = info.Name
		}
		p.Close()
	}
}

func newPrograms(t *testing.T, before map[ebpf.ProgramID]string) map[ebpf.ProgramID]string {
	now := ourPrograms(t)
	for id := range before {
		delete(now, id)
	}
	return now
}

// stillLoaded lists which of progs exist. The kernel frees a program after
// an RCU grace period once its last link and fd are closed, so this waits
// up to 5s for them to go.
func stillLoaded(progs map[ebpf.ProgramID]string) []string {
	deadline := time.Now().Add(5 * time.Second)
	for {
		left := loaded(progs)
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func loaded(progs map[ebpf.ProgramID]string) []string {
	var left []string
	for id, name := range progs {
		if p, err := ebpf.NewProgramFromID(id); err == nil {
			p.Close()
			left = append(left, fmt.Sprintf("%s (id %d)", name, id))
		}
	}
	return left
}

// When whoever reads stdout goes away (`portlife | head -1`), portlife ends
// the run as on a signal: it detaches, logs its summary, and exits with
// its own code rather than dying of SIGPIPE.
func TestClosedStdoutEndsTheRun(t *testing.T) {
	requireRoot(t)
	before := ourPrograms(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: exec.Command(binary, "--output", "json", "--pid", fmt.Sprint(os.Getpid()), "--flush-interval", "10ms"), started: make(chan struct{})}
	p.cmd.Stdout = w
	p.begin(t)
	w.Close() // portlife holds the only write end now
	loaded := newPrograms(t, before)

	roundTrip(t)
	if _, err := bufio.NewReader(r).ReadString('\n'); err != nil {
		t.Fatalf("reading the first event: %v", err)
	}
	r.Close() // as head does after its line
	// More events, so portlife writes into the closed pipe.
	for i := 0; i < 3; i++ {
		roundTrip(t)
		time.Sleep(50 * time.Millisecond)
	}
	if code := p.wait(t); code != exitOutputClosed {
		t.Fatalf("exit code %d, want %d (exitOutputClosed); stderr:\n%s", code, exitOutputClosed, p.stderr.String())
	}
	stderr := p.stderr.String()
	for _, want := range []string{`"msg":"tracing stopped"`, "stdout was closed"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %s:\n%s", want, stderr)
		}
	}
	if left := stillLoaded(loaded); len(left) > 0 {
		t.Errorf("programs still loaded after exit: %v", left)
	}
}

// A host may not mount tracefs, which the connect() and bind() tracepoints
// are attached through. portlife then mounts it, says so, and unmounts it
// at exit. It runs here under a shell in a mount namespace of its own,
// where tracefs was unmounted first; the shell outlives portlife to check
// that nothing was left mounted where portlife mounted it. (A host that
// mounts debugfs gets tracefs back under /sys/kernel/debug/tracing when
// anything looks there: that one is the kernel's automount, not portlife's.)
func TestMountsTracefsWhenMissing(t *testing.T) {
	requireRoot(t)
	const leftMounted = 98
	script := `umount -a -t tracefs || exit 97
"$0" "$@"; code=$?
if grep -q " /sys/kernel/tracing .* - tracefs " /proc/self/mountinfo; then exit ` + fmt.Sprint(leftMounted) + `; fi
exit $code`
	cmd := exec.Command("sh", "-c", script, binary, "--output", "json", "--log-format", "json",
		"--pid", fmt.Sprint(os.Getpid()), "--events", "connect_failed", "--flush-interval", "10ms")
	// Go makes the new namespace's mounts private: the host's stay.
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	p := &process{cmd: cmd, started: make(chan struct{})}
	p.cmd.Stdout = &p.stdout
	p.begin(t)
	portlife := childOf(t, p.cmd.Process.Pid)
	mountinfo, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", portlife))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(mountinfo), "/sys/kernel/tracing") || !strings.Contains(string(mountinfo), " - tracefs ") {
		t.Errorf("tracefs is not mounted at /sys/kernel/tracing in portlife's namespace:\n%s", mountinfo)
	}

	// A connect that fails in the call: the tracepoints are attached.
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	// Loopback's broadcast address, without SO_BROADCAST.
	if err := syscall.Connect(fd, &syscall.SockaddrInet4{Port: 9, Addr: [4]byte{127, 255, 255, 255}}); err != syscall.EACCES {
		t.Fatalf("connect to 127.255.255.255: %v, want EACCES", err)
	}
	time.Sleep(200 * time.Millisecond)
	syscall.Kill(portlife, syscall.SIGINT)
	switch code := p.wait(t); code {
	case 0:
	case leftMounted:
		t.Errorf("tracefs was left mounted after portlife exited")
	default:
		t.Fatalf("exit code %d, want 0; stderr:\n%s", code, p.stderr.String())
	}
	if !strings.Contains(p.stderr.String(), `"msg":"mounted tracefs`) {
		t.Errorf("no log line says tracefs was mounted:\n%s", p.stderr.String())
	}
	if !strings.Contains(p.stdout.String(), `"event":"connect_failed"`) || !strings.Contains(p.stdout.String(), `"raddr":"127.255.255.255"`) {
		t.Errorf("no connect_failed for 127.255.255.255 in:\n%s", p.stdout.String())
	}
}

// childOf returns the only child of process pid.
func childOf(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	if len(f) != 1 {
		t.Fatalf("process %d has children %q, want one", pid, f)
	}
	child, err := strconv.Atoi(f[0])
	if err != nil {
		t.Fatal(err)
	}
	return child
}

// Run with only the capabilities it needs (CAP_BPF, CAP_PERFMON,
// CAP_NET_ADMIN), as another user, portlife still names the owner of a
// socket that existed at start and belongs to another user, and warns once
// at start of each capability it uses but lacks, with what that costs.
func TestWithoutOptionalCapabilities(t *testing.T) {
	requireRoot(t) // to give the capabilities, and to hold root's socket
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	p := &process{
		cmd:     exec.Command(binary, "--output", "json", "--log-format", "json", "--flush-interval", "10ms", "--pid", fmt.Sprint(os.Getpid())),
		started: make(chan struct{}),
	}
	p.cmd.Stdout = &p.stdout
	p.cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential:  &syscall.Credential{Uid: 65534, Gid: 65534},
		AmbientCaps: []uintptr{unix.CAP_BPF, unix.CAP_PERFMON, unix.CAP_NET_ADMIN},
	}
	// Kernels before 5.11 charge eBPF memory to RLIMIT_MEMLOCK, which
	// only CAP_SYS_RESOURCE may raise: the limit a service manager would
	// set (LimitMEMLOCK=infinity), inherited. Later kernels ignore it, and
	// a root without CAP_SYS_RESOURCE (some containers) cannot raise it.
	var memlock unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &memlock); err != nil {
		t.Fatal(err)
	}
	infinite := unix.Rlimit{Cur: unix.RLIM_INFINITY, Max: unix.RLIM_INFINITY}
	if err := unix.Setrlimit(unix.RLIMIT_MEMLOCK, &infinite); err == nil {
		defer unix.Setrlimit(unix.RLIMIT_MEMLOCK, &memlock)
	} else {
		t.Logf("memlock limit left at %d: %v", memlock.Cur, err)
	}
	p.begin(t)
	c.Close()
	s.Read(make([]byte, 1)) // EOF
	s.Close()
	time.Sleep(200 * time.Millisecond) // let the closes reach the ring
	if code := p.stop(t, os.Interrupt); code != 0 {
		t.Fatalf("exit code %d; stderr:\n%s", code, p.stderr.String())
	}

	ports := map[float64]bool{float64(c.LocalAddr().(*net.TCPAddr).Port): true, float64(ln.Addr().(*net.TCPAddr).Port): true}
	closes := 0
	sc := bufio.NewScanner(&p.stdout)
	for sc.Scan() {
		var ev map[string]any
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("not a JSON line: %q: %v", sc.Text(), err)
		}
		if ev["event"] != "close" || !ports[ev["lport"].(float64)] || !ports[ev["rport"].(float64)] {
			continue
		}
		closes++
		if int(ev["pid"].(float64)) != os.Getpid() || ev["pid_source"] != "fd_owner" {
			t.Errorf("close of root's socket with pid %v (%v), want %d (fd_owner): %s", ev["pid"], ev["pid_source"], os.Getpid(), sc.Text())
		}
	}
	if closes != 2 {
		t.Errorf("%d close events of the connection, want 2; stdout:\n%s", closes, p.stdout.String())
	}

	warnings := 0
	for _, line := range strings.Split(p.stderr.String(), "\n") {
		var l map[string]any
		if json.Unmarshal([]byte(line), &l) != nil || l["level"] != "warn" {
			continue
		}
		if _, ok := l["CAP_SYS_PTRACE"]; !ok {
			continue
		}
		warnings++
		for _, cap := range []string{"CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_SYS_NICE", "CAP_DAC_READ_SEARCH"} {
			if cost, _ := l[cap].(string); !strings.Contains(cost, "counted as") {
				t.Errorf("the warning gives %s %q, want what it costs", cap, cost)
			}
		}
	}
	if warnings != 1 {
		t.Errorf("%d warnings naming the missing capabilities, want 1; stderr:\n%s", warnings, p.stderr.String())
	}
}

// On a host where cgroup v2 is not mounted, portlife mounts one for the UDP
// hooks under /run/portlife, and at exit leaves nothing of it behind. The
// host is a mount namespace of the test's own, where every cgroup v2 mount
// is gone and /run is a fresh tmpfs.
func TestOwnCgroupMountRemoved(t *testing.T) {
	requireRoot(t)
	p := &process{
		cmd: exec.Command(os.Args[0], binary, "--output", "json", "--log-format", "json",
			"--flush-interval", "10ms", "--pid", fmt.Sprint(os.Getpid())),
		started: make(chan struct{}),
	}
	p.cmd.Env = append(os.Environ(), freshMountsEnv+"=1")
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS} // with private propagation
	p.cmd.Stdout = &p.stdout
	p.begin(t)
	if !strings.Contains(p.stderr.String(), "mounted cgroup v2 for the cgroup hooks") {
		t.Fatalf("portlife did not mount cgroup v2: the test does not test what it says; stderr:\n%s", p.stderr.String())
	}

	// The UDP hooks work on the cgroup v2 root it mounted.
	srv, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// Unconnected, sending with an address: the send hook opens it on every
	// kernel (before Linux 6.3 a connected one is seen at its close alone).
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteTo([]byte("ping"), srv.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := srv.ReadFrom(make([]byte, 8)); err != nil {
		t.Fatal(err)
	}
	c.Close()
	srv.Close()
	time.Sleep(200 * time.Millisecond) // let the events reach the ring
	if code := p.stop(t, os.Interrupt); code != 0 {
		t.Fatalf("exit code %d; stderr:\n%s", code, p.stderr.String())
	}

	port := float64(c.LocalAddr().(*net.UDPAddr).Port)
	kinds := map[string]int{}
	sc := bufio.NewScanner(&p.stdout)
	for sc.Scan() {
		var ev map[string]any
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("not a JSON line: %q: %v", sc.Text(), err)
		}
		if ev["proto"] == "udp" && ev["lport"] == port {
			kinds[ev["event"].(string)]++
		}
	}
	if kinds["open"] != 1 || kinds["close"] != 1 {
		t.Errorf("UDP events of the client socket %v, want an open and a close; stdout:\n%s", kinds, p.stdout.String())
	}
	if !strings.Contains(p.stderr.String(), "left under /run: []") {
		t.Errorf("portlife left something under /run; stderr:\n%s", p.stderr.String())
	}
}

// inFreshMounts runs a command (args) in this process's mount namespace,
// which must be its own, once every cgroup v2 mount is gone and /run is an
// empty tmpfs; then it writes to stderr what is left under /run, and exits
// as the command did. It passes SIGINT and SIGTERM on.
func inFreshMounts(args []string) int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "fresh mounts:", err)
		return 1
	}
	mounts, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return fail(err)
	}
	var cgroups []string
	for _, line := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(line); len(f) > 2 && f[2] == "cgroup2" {
			cgroups = append(cgroups, f[1])
		}
	}
	for i := len(cgroups) - 1; i >= 0; i-- {
		if err := unix.Unmount(cgroups[i], unix.MNT_DETACH); err != nil {
			return fail(fmt.Errorf("unmounting %s: %w", cgroups[i], err))
		}
	}
	if err := unix.Mount("tmpfs", "/run", "tmpfs", 0, "mode=0755"); err != nil {
		return fail(fmt.Errorf("mounting a tmpfs on /run: %w", err))
	}

	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	if err := cmd.Start(); err != nil {
		return fail(err)
	}
	go func() {
		for sig := range signals {
			cmd.Process.Signal(sig)
		}
	}()
	err = cmd.Wait()
	var left []string
	filepath.WalkDir("/run", func(path string, d fs.DirEntry, err error) error {
		if path != "/run" {
			left = append(left, path)
		}
		return nil
	})
	fmt.Fprintf(os.Stderr, "left under /run: %q\n", left)
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.ExitCode()
	}
	if err != nil {
		return fail(err)
	}
	return 0
}
