package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/internal/kerneltest"
)

// tmuxSession runs a command in a detached tmux session of its own server
// (a socket named for the test, so no one else's tmux is touched), in a
// terminal of the given size.
type tmuxSession struct {
	t      *testing.T
	socket string
}

func newTmux(t *testing.T, width, height int, command string) *tmuxSession {
	t.Helper()
	if _, err := exec.LookPath("tmux"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("tmux is missing: make test installs it")
		}
		t.Skip("tmux is missing: run make deps")
	}
	s := &tmuxSession{t: t, socket: fmt.Sprintf("portlife-test-%d", os.Getpid())}
	s.run("new-session", "-d", "-s", "top", "-x", fmt.Sprint(width), "-y", fmt.Sprint(height), command)
	t.Cleanup(func() { exec.Command("tmux", "-L", s.socket, "kill-server").Run() })
	return s
}

func (s *tmuxSession) run(args ...string) (string, error) {
	out, err := exec.Command("tmux", append([]string{"-L", s.socket}, args...)...).CombinedOutput()
	return string(out), err
}

func (s *tmuxSession) keys(keys ...string) {
	s.t.Helper()
	if out, err := s.run(append([]string{"send-keys", "-t", "top"}, keys...)...); err != nil {
		s.t.Fatalf("send-keys %q: %v %s", keys, err, out)
	}
}

// waitFor captures the pane until ok holds, and returns it.
func (s *tmuxSession) waitFor(what string, ok func(pane string) bool) string {
	s.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	var pane string
	for time.Now().Before(deadline) {
		out, err := s.run("capture-pane", "-p", "-t", "top")
		if err == nil {
			pane = out
			if ok(pane) {
				return pane
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("waited 15s for %s; the pane:\n%s", what, pane)
	return ""
}

// rows are the pane's lines below the column header.
func rows(pane string) []string {
	lines := strings.Split(pane, "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, "PROCESS") || strings.HasPrefix(l, "DESTINATION") {
			var out []string
			for _, r := range lines[i+1:] {
				if strings.TrimSpace(r) != "" {
					out = append(out, r)
				}
			}
			return out
		}
	}
	return nil
}

// top in a real terminal (tmux, 80×24): the rows of a known workload
// appear, per process and per destination; sorting and the filter prompt
// work; the view follows a resize; q exits 0 and leaves nothing behind.
func TestTopInTmux(t *testing.T) {
	requireRoot(t)
	// The workload: connections to one port, refusals from another, for as
	// long as the test runs.
	srv := kerneltest.NewChurnServer(t)
	dead, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	okPort, deadPort := int(srv.Addr.Port()), dead.Addr().(*net.TCPAddr).Port
	dead.Close()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			srv.Churn(1) // a connection that fails is a row that does not show
			if c, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", deadPort)); err == nil {
				c.Close()
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })

	exitFile := t.TempDir() + "/exit"
	comm, _ := os.ReadFile("/proc/self/comm")
	ourComm := strings.TrimSpace(string(comm))
	tm := newTmux(t, 80, 24, fmt.Sprintf("%s top --pid %d --interval 500ms; echo $? > %s", binary, os.Getpid(), exitFile))

	okDest, deadDest := fmt.Sprintf("127.0.0.1:%d", okPort), fmt.Sprintf("127.0.0.1:%d", deadPort)
	pane := tm.waitFor("our process's row", func(p string) bool {
		r := rows(p)
		return len(r) > 0 && strings.HasPrefix(r[0], ourComm)
	})
	if !strings.Contains(pane, "per process") || !strings.Contains(pane, "host: new") {
		t.Errorf("no header:\n%s", pane)
	}
	for _, l := range strings.Split(pane, "\n") {
		if len([]rune(l)) > 80 {
			t.Errorf("a line wider than the terminal: %q", l)
		}
	}

	tm.keys("d")
	tm.waitFor("the destinations", func(p string) bool {
		return strings.Contains(p, "per destination") && strings.Contains(p, "tcp out "+okDest) &&
			strings.Contains(p, "tcp out "+deadDest) && strings.Contains(p, fmt.Sprintf("tcp in :%d", okPort))
	})

	tm.keys("f")
	tm.waitFor("the refused destination first, by failures", func(p string) bool {
		r := rows(p)
		return strings.Contains(p, "sort: failures") && len(r) > 0 && strings.Contains(r[0], deadDest)
	})
	tm.keys("n")
	tm.waitFor("a destination that opens first, by new connections", func(p string) bool {
		r := rows(p)
		return strings.Contains(p, "sort: new") && len(r) > 0 && !strings.Contains(r[0], deadDest)
	})

	tm.keys("/")
	tm.keys("-l", fmt.Sprintf(":%d", okPort))
	tm.keys("Enter")
	tm.waitFor("only the filtered rows", func(p string) bool {
		r := rows(p)
		if !strings.Contains(p, fmt.Sprintf("filter: :%d", okPort)) || len(r) != 2 {
			return false
		}
		for _, l := range r {
			if !strings.Contains(l, fmt.Sprintf(":%d", okPort)) {
				return false
			}
		}
		return true
	})

	tm.run("resize-window", "-t", "top", "-x", "100", "-y", "30")
	tm.waitFor("the view at 100 columns", func(p string) bool {
		for _, l := range strings.Split(p, "\n") {
			if strings.HasPrefix(l, "DESTINATION") {
				return len(strings.TrimRight(l, " ")) == 99
			}
		}
		return false
	})

	tm.keys("q")
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := tm.run("has-session", "-t", "top"); err != nil {
			break // the session ended with top
		}
		if time.Now().After(deadline) {
			t.Fatal("top did not exit on q")
		}
		time.Sleep(100 * time.Millisecond)
	}
	code, err := os.ReadFile(exitFile)
	if err != nil || strings.TrimSpace(string(code)) != "0" {
		t.Errorf("exit code %q (%v), want 0", code, err)
	}
	if out, err := exec.Command("pgrep", "-f", binary+" top --pid "+fmt.Sprint(os.Getpid())).Output(); err == nil {
		t.Errorf("top still runs: %s", out)
	}
}

// On a pipe, top refuses in one line that points to trace --summary, and
// loads nothing.
func TestTopRefusesNonTerminal(t *testing.T) {
	cmd := exec.Command(binary, "top")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 {
		t.Fatalf("exit %v, want code 2", err)
	}
	msg := stderr.String()
	if strings.Count(msg, "\n") != 1 || !strings.Contains(msg, "trace --summary") {
		t.Errorf("want one line pointing to trace --summary, got %q", msg)
	}
}

// The destination rows show their port key's pressure: in a namespace of
// the test's own with 100 ports, 37 connections to one destination held
// open while one more comes and goes (the server closes first, so no
// TIME_WAIT is left on the client's side): 37% (38% while the extra one is
// open). A process row has no key: "-".
func TestTopPressureColumn(t *testing.T) {
	requireRoot(t)
	ns := kerneltest.NewNetns(t, map[string]string{"ip_local_port_range": "40000 40099", "tcp_tw_reuse": "0"})
	dst := netip.MustParseAddrPort("127.0.0.1:5000")
	var ln int
	if err := ns.Do(func() (err error) {
		if ln, err = tcpListen(dst); err != nil {
			return err
		}
		for range 37 {
			if _, err := connectTo(dst, false); err != nil { // held until the namespace goes
				return err
			}
			if _, _, err := unix.Accept4(ln, unix.SOCK_CLOEXEC); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	churned := make(chan error, 1)
	go func() {
		churned <- ns.Do(func() error {
			for {
				select {
				case <-stop:
					return nil
				case <-time.After(20 * time.Millisecond):
				}
				c, err := connectTo(dst, false)
				if err != nil {
					return err
				}
				s, _, err := unix.Accept4(ln, unix.SOCK_CLOEXEC)
				if err != nil {
					return err
				}
				unix.Close(s) // the server's FIN first
				unix.Close(c)
			}
		})
	}()
	t.Cleanup(func() {
		close(stop)
		if err := <-churned; err != nil {
			t.Error(err)
		}
	})

	tm := newTmux(t, 80, 24, fmt.Sprintf("%s top --pid %d --interval 500ms", binary, os.Getpid()))
	comm, _ := os.ReadFile("/proc/self/comm")
	ourComm := strings.TrimSpace(string(comm))
	tm.waitFor("our process's row, without a pressure", func(p string) bool {
		for _, r := range rows(p) {
			if f := strings.Fields(r); strings.HasPrefix(r, ourComm) && f[len(f)-1] == "-" {
				return strings.Contains(p, "PRESS")
			}
		}
		return false
	})
	tm.keys("d")
	tm.waitFor("the destination at 37% (38% with the extra one open)", func(p string) bool {
		for _, r := range rows(p) {
			if f := strings.Fields(r); strings.HasPrefix(r, "tcp out "+dst.String()) && (f[len(f)-1] == "37%" || f[len(f)-1] == "38%") {
				return true
			}
		}
		return false
	})
	tm.keys("p")
	tm.waitFor("sorted by pressure, the pressed destination first", func(p string) bool {
		r := rows(p)
		return strings.Contains(p, "sort: pressure") && len(r) > 0 && strings.HasPrefix(r[0], "tcp out "+dst.String())
	})
	tm.keys("q")
}
