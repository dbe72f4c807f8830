package main

import (
	"bufio"
	"bytes"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/portlife/portlife/internal/kerneltest"
)

// The store's tests run portlife trace --store, make connections from
// processes of known names (this test binary, run under another name, so
// that its comm is that name), and ask portlife query who held which port
// when.

const storeHelperEnv = "PORTLIFE_TEST_STORE_HELPER"

func init() {
	// Before TestMain: a helper is not a test run.
	if role := os.Getenv(storeHelperEnv); role != "" {
		if err := storeHelper(role, os.Args[1:]); err != nil {
			fmt.Fprintf(os.Stderr, "helper %s: %v\n", role, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
}

// storeHelper is one role of a helper process:
//   - tcp ADDR: connect to ADDR, print the local port, and close first
//     (so the port goes into TIME_WAIT) once stdin closes;
//   - udp ADDR: the same with a connected UDP socket that sends one datagram;
//   - churn ADDR N REFUSED M: N connections to ADDR and M refused ones to
//     REFUSED, each closed at once; then print "done".
func storeHelper(role string, args []string) error {
	switch role {
	case "tcp", "udp":
		c, err := net.Dial(role+"4", args[0])
		if err != nil {
			return err
		}
		if role == "udp" {
			if _, err := c.Write([]byte("ping")); err != nil {
				return err
			}
		}
		_, port, _ := net.SplitHostPort(c.LocalAddr().String())
		fmt.Println(port)
		io.Copy(io.Discard, os.Stdin)
		return c.Close()
	case "churn":
		n, _ := strconv.Atoi(args[1])
		m, _ := strconv.Atoi(args[3])
		for range n {
			c, err := net.Dial("tcp4", args[0])
			if err != nil {
				return err
			}
			c.Close()
		}
		for range m {
			if c, err := net.Dial("tcp4", args[2]); err == nil {
				c.Close()
				return fmt.Errorf("%s accepted a connection: want it refused", args[2])
			}
		}
		fmt.Println("done")
		return nil
	}
	return fmt.Errorf("unknown role %q", role)
}

// storeHelperProc is a running helper.
type storeHelperProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Scanner
}

// startNamed runs this test binary as a helper whose comm is name.
func startNamed(t *testing.T, name, role string, args ...string) *storeHelperProc {
	t.Helper()
	link := filepath.Join(t.TempDir(), name)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(self, link); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(link, args...)
	cmd.Env = append(os.Environ(), storeHelperEnv+"="+role)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &storeHelperProc{cmd: cmd, stdin: stdin, out: bufio.NewScanner(stdout)}
	t.Cleanup(func() { stdin.Close(); cmd.Process.Kill(); cmd.Wait() })
	return h
}

func (h *storeHelperProc) line(t *testing.T) string {
	t.Helper()
	if !h.out.Scan() {
		t.Fatalf("helper %s ended without a line: %v", h.cmd.Path, h.out.Err())
	}
	return h.out.Text()
}

// end closes the helper's stdin and waits for it to exit.
func (h *storeHelperProc) end(t *testing.T) {
	t.Helper()
	h.stdin.Close()
	if err := h.cmd.Wait(); err != nil {
		t.Fatalf("helper %s: %v", h.cmd.Path, err)
	}
}

// queryResult is one run of portlife query.
type queryResult struct {
	code           int
	stdout, stderr string
}

func runPortlifeQuery(t *testing.T, args ...string) queryResult {
	t.Helper()
	cmd := exec.Command(binary, append([]string{"query"}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := queryResult{stdout: stdout.String(), stderr: stderr.String()}
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		r.code = exit.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return r
}

// lifetimes runs a JSON query and decodes its events.
func lifetimes(t *testing.T, args ...string) []map[string]any {
	t.Helper()
	r := runPortlifeQuery(t, append(args, "--output", "json")...)
	if r.code != 0 {
		t.Fatalf("query %v: exit %d; stderr:\n%s", args, r.code, r.stderr)
	}
	var evs []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		if line == "" {
			continue
		}
		var ev map[string]any
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("query %v: not a JSON line %q: %v", args, line, err)
		}
		evs = append(evs, ev)
	}
	return evs
}

// waitForRows runs the query until it finds want lifetimes: the store
// commits once a second.
func waitForRows(t *testing.T, want int, args ...string) []map[string]any {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		evs := lifetimes(t, args...)
		if len(evs) >= want || time.Now().After(deadline) {
			return evs
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func at(t time.Time) string { return t.Format(time.RFC3339Nano) }

// port returns the port of a "host:port".
func port(t *testing.T, addr string) int {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(p)
	return n
}

// `query --port P --at T` names the process that held P at T: over a TCP
// connection's life, in its TIME_WAIT after it, and for UDP; before it,
// nothing. `--top comm` ranks the process that churned first.
func TestStoreQuery(t *testing.T) {
	requireRoot(t)
	db := filepath.Join(t.TempDir(), "history.db")
	p := start(t, "--output", "json", "--log-format", "json", "--flush-interval", "10ms", "--store", db, "--raddr", "127.0.0.1")

	// A server that closes second, so that the clients keep TIME_WAIT.
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	udpSrv, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udpSrv.Close()
	// A port nothing listens on: bound, never listening, so it stays ours.
	refused, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(refused)
	if err := syscall.Bind(refused, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, _ := syscall.Getsockname(refused)
	refusedAddr := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)

	before := time.Now()
	time.Sleep(100 * time.Millisecond)
	holder := startNamed(t, "pl-tcp-holder", "tcp", ln.Addr().String())
	tcpPort := holder.line(t)
	time.Sleep(300 * time.Millisecond)
	tcpDuring := time.Now()
	time.Sleep(300 * time.Millisecond)
	holder.end(t)
	tcpClosed := time.Now()

	udpHolder := startNamed(t, "pl-udp-holder", "udp", udpSrv.LocalAddr().String())
	udpPort := udpHolder.line(t)
	if _, _, err := udpSrv.ReadFrom(make([]byte, 16)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	udpDuring := time.Now()
	time.Sleep(300 * time.Millisecond)
	udpHolder.end(t)

	churner := startNamed(t, "pl-churner", "churn", ln.Addr().String(), "40", refusedAddr, "10")
	if got := churner.line(t); got != "done" {
		t.Fatalf("churner said %q", got)
	}
	churner.end(t)
	inTimeWait := tcpClosed.Add(2 * time.Second) // TIME_WAIT lasts 60s
	time.Sleep(time.Until(inTimeWait))
	// Every lifetime is in the store once the churner's are.
	waitForRows(t, 50, "--store", db, "--comm", "pl-churner")

	for _, tc := range []struct {
		name     string
		args     []string
		wantComm string // "": no lifetime
		wantPID  int
		check    func(ev map[string]any) error
	}{
		{"tcp while connected", []string{"--lport", tcpPort, "--at", at(tcpDuring)}, "pl-tcp-holder", holder.cmd.Process.Pid, nil},
		{"tcp in TIME_WAIT", []string{"--port", tcpPort, "--at", at(inTimeWait)}, "pl-tcp-holder", holder.cmd.Process.Pid, func(ev map[string]any) error {
			if ev["time_wait"] != true || ev["event"] != "close" {
				return fmt.Errorf("not a close in TIME_WAIT")
			}
			return nil
		}},
		{"tcp before", []string{"--port", tcpPort, "--at", at(before)}, "", 0, nil},
		{"udp while open", []string{"--proto", "udp", "--port", udpPort, "--at", at(udpDuring)}, "pl-udp-holder", udpHolder.cmd.Process.Pid, nil},
		{"udp after its close", []string{"--proto", "udp", "--port", udpPort, "--at", at(inTimeWait)}, "", 0, nil},
	} {
		tc.args = append([]string{"--store", db}, tc.args...)
		t.Run(tc.name, func(t *testing.T) {
			if tc.wantComm == "" {
				r := runPortlifeQuery(t, tc.args...)
				if r.code != 0 || r.stdout != "" || !strings.Contains(r.stderr, "no lifetimes match") {
					t.Errorf("exit %d, stdout %q, stderr %q: want exit 0, nothing on stdout, and says so on stderr", r.code, r.stdout, r.stderr)
				}
				return
			}
			evs := lifetimes(t, tc.args...)
			if len(evs) != 1 {
				t.Fatalf("%d lifetimes, want one: %v", len(evs), evs)
			}
			ev := evs[0]
			if ev["comm"] != tc.wantComm || int(ev["pid"].(float64)) != tc.wantPID {
				t.Errorf("held by %v (pid %v), want %s (pid %d): %v", ev["comm"], ev["pid"], tc.wantComm, tc.wantPID, ev)
			}
			if tc.check != nil {
				if err := tc.check(ev); err != nil {
					t.Errorf("%v: %v", err, ev)
				}
			}
		})
	}

	t.Run("top comm", func(t *testing.T) {
		lport := strconv.Itoa(port(t, ln.Addr().String()))
		r := runPortlifeQuery(t, "--store", db, "--top", "comm", "--since", "5m", "--rport", lport+","+strconv.Itoa(port(t, refusedAddr)), "--output", "text")
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		if r.code != 0 || len(lines) < 3 {
			t.Fatalf("exit %d; stdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
		}
		first, second := strings.Fields(lines[1]), strings.Fields(lines[2])
		if first[0] != "pl-churner" || first[1] != "50" || first[2] != "10" {
			t.Errorf("first %q, want pl-churner with 50 lifetimes, 10 failed:\n%s", lines[1], r.stdout)
		}
		if second[0] != "pl-tcp-holder" || second[1] != "1" {
			t.Errorf("second %q, want pl-tcp-holder with 1:\n%s", lines[2], r.stdout)
		}
	})

	if code := p.stop(t, os.Interrupt); code != 0 {
		t.Fatalf("exit code %d; stderr:\n%s", code, p.stderr.String())
	}
	if t.Failed() {
		t.Logf("every lifetime of port %s, after the stop: %v\nstderr:\n%s", tcpPort, lifetimes(t, "--store", db, "--port", tcpPort), p.stderr.String())
	}
	if !strings.Contains(p.stderr.String(), `"store":{"rows_written":`) {
		t.Errorf("tracing stopped does not report the store's counters:\n%s", p.stderr.String())
	}
}

// Killed outright while it writes, portlife leaves a store that the next
// run opens, and that keeps every lifetime committed before the kill: what
// was written before an idle second is there.
func TestStoreSurvivesKill(t *testing.T) {
	requireRoot(t)
	db := filepath.Join(t.TempDir(), "history.db")
	srv := kerneltest.NewChurnServer(t)
	lport := strconv.Itoa(int(srv.Addr.Port()))
	churn := func(n int) {
		if _, err := srv.Churn(n); err != nil {
			t.Error(err)
		}
	}
	// The client ends: one row per connection.
	closes := func() int {
		return len(lifetimes(t, "--store", db, "--rport", lport, "--events", "close", "--pid", strconv.Itoa(os.Getpid())))
	}
	args := []string{"--output", "json", "--flush-interval", "10ms", "--store", db, "--rport", lport, "--events", "close"}

	p := start(t, args...)
	churn(300)
	// Idle: the store commits within its flush interval (1s).
	time.Sleep(3 * time.Second)
	committed := closes()
	if committed != 300 {
		t.Fatalf("%d lifetimes in the store after an idle 3s, want 300", committed)
	}
	// Churn on while portlife is killed in the middle of it.
	var made atomic.Int64
	stop := make(chan struct{})
	churned := make(chan struct{})
	go func() {
		defer close(churned)
		for {
			select {
			case <-stop:
				return
			default:
			}
			churn(1)
			made.Add(1)
		}
	}()
	time.Sleep(1500 * time.Millisecond)
	p.cmd.Process.Kill()
	p.wait(t)
	close(stop)
	<-churned
	during := int(made.Load())

	// The next run opens it, and writes to it.
	p = start(t, args...)
	after := closes()
	if after < committed || after > committed+during {
		t.Errorf("%d lifetimes after the kill, want from %d (committed) to %d (every one made)", after, committed, committed+during)
	}
	churn(10)
	time.Sleep(200 * time.Millisecond)
	if code := p.stop(t, os.Interrupt); code != 0 {
		t.Fatalf("exit code %d; stderr:\n%s", code, p.stderr.String())
	}
	if n := closes(); n != after+10 {
		t.Errorf("%d lifetimes after the second run, want %d: its 10 added to %d", n, after+10, after)
	}
	conn, err := sql.Open("sqlite", db+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var check string
	if err := conn.QueryRow("PRAGMA integrity_check").Scan(&check); err != nil || check != "ok" {
		t.Errorf("integrity_check: %q %v", check, err)
	}
	t.Logf("%d committed, %d made while it was killed, %d of them kept", committed, during, after-committed)
}

// A missing or unreadable store is one line and exit 1; a bad flag, exit 2.
func TestQueryErrors(t *testing.T) {
	dir := t.TempDir()
	notDB := filepath.Join(dir, "not.db")
	if err := os.WriteFile(notDB, bytes.Repeat([]byte("not a database\n"), 100), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"missing", []string{"--store", filepath.Join(dir, "none.db")}, exitError, "no store at"},
		{"not a database", []string{"--store", notDB}, exitError, "not a database"},
		{"bad port", []string{"--store", notDB, "--port", "70000"}, exitUsage, "--port"},
		{"bad time", []string{"--store", notDB, "--at", "yesterday-ish"}, exitUsage, "--at"},
		{"at with since", []string{"--store", notDB, "--at", "1h", "--since", "2h"}, exitUsage, "--at"},
		{"bad top", []string{"--store", notDB, "--top", "uid"}, exitUsage, "--top"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runPortlifeQuery(t, tc.args...)
			if r.code != tc.code || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("exit %d, stderr %q: want exit %d and one line saying %q", r.code, r.stderr, tc.code, tc.want)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "none.db")); err == nil {
		t.Errorf("querying a missing store created it")
	}
}

// With a tiny budget, the store of a real run stays under it while the
// churn goes on: the newest lifetimes are kept, the oldest deleted, and
// tracing stopped counts them.
func TestStoreRetentionBySize(t *testing.T) {
	requireRoot(t)
	db := filepath.Join(t.TempDir(), "history.db")
	srv := kerneltest.NewChurnServer(t)
	lport := strconv.Itoa(int(srv.Addr.Port()))
	const budget = 1 << 20
	p := start(t, "--output", "json", "--log-format", "json", "--flush-interval", "10ms", "--store", db,
		"--store-max-size", "1MiB", "--rport", lport, "--events", "close")
	sizes := func() (db_, wal int64) {
		if fi, err := os.Stat(db); err == nil {
			db_ = fi.Size()
		}
		if fi, err := os.Stat(db + "-wal"); err == nil {
			wal = fi.Size()
		}
		return db_, wal
	}
	size := func() string {
		d, w := sizes()
		if d+w <= budget {
			return ""
		}
		return fmt.Sprintf("%d bytes (database %d, WAL %d)", d+w, d, w)
	}
	// Each round's lifetimes are newer than every one before: the newest
	// must be there, and the store must stay under the budget.
	var lastPort float64
	for round := range 10 {
		newest, err := srv.Churn(1000)
		if err != nil {
			t.Fatal(err)
		}
		want := float64(newest.Port())
		deadline := time.Now().Add(15 * time.Second)
		for {
			evs := lifetimes(t, "--store", db, "--lport", strconv.Itoa(int(want)), "--rport", lport)
			if len(evs) > 0 || time.Now().After(deadline) {
				if len(evs) == 0 {
					t.Fatalf("round %d: the newest lifetime (port %v) is not in the store", round, want)
				}
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if s := size(); s != "" {
			t.Errorf("round %d: the store is %s, over its %d budget", round, s, budget)
		}
		lastPort = want
	}
	if code := p.stop(t, os.Interrupt); code != 0 {
		t.Fatalf("exit code %d; stderr:\n%s", code, p.stderr.String())
	}
	if s := size(); s != "" {
		t.Errorf("after the run, the store is %s, over its %d budget", s, budget)
	}
	all := lifetimes(t, "--store", db, "--rport", lport)
	if len(all) == 0 || len(all) >= 10*1000 {
		t.Errorf("%d lifetimes kept of %d: want the oldest deleted", len(all), 10*1000)
	}
	kept := false
	for _, ev := range all {
		kept = kept || ev["lport"] == lastPort
	}
	if !kept {
		t.Errorf("the newest lifetime (port %v) is gone", lastPort)
	}
	if strings.Contains(p.stderr.String(), `"deleted_by_size":0`) || !strings.Contains(p.stderr.String(), `"deleted_by_size":`) {
		t.Errorf("tracing stopped does not count rows deleted for size:\n%s", p.stderr.String())
	}
}

// Another user who may read the file reads root's store, whether a writer
// has it open or not (a reader in WAL mode would otherwise need to create
// files beside it, in a directory it cannot write).
func TestQueryAsAnotherUser(t *testing.T) {
	requireRoot(t) // to be another user
	dir := t.TempDir()
	os.Chmod(filepath.Dir(dir), 0o755)
	os.Chmod(dir, 0o755)
	db := filepath.Join(dir, "history.db")
	p := start(t, "--output", "json", "--flush-interval", "10ms", "--store", db, "--pid", strconv.Itoa(os.Getpid()), "--events", "close")
	client, _ := roundTrip(t)
	lport := strconv.Itoa(client.(*net.TCPAddr).Port)
	waitForRows(t, 1, "--store", db, "--lport", lport)
	asNobody := func(when string) {
		cmd := exec.Command(binary, "query", "--store", db, "--lport", lport, "--output", "json")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), `"lport":`+lport) {
			t.Errorf("%s: query as nobody: %v\n%s", when, err, out)
		}
	}
	asNobody("while portlife writes")
	if code := p.stop(t, os.Interrupt); code != 0 {
		t.Fatalf("exit code %d; stderr:\n%s", code, p.stderr.String())
	}
	asNobody("after portlife stopped")
}
