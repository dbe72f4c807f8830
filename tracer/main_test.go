package tracer

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/internal/kerneltest"
)

// The test binary doubles as the separate processes some tests need: a
// server, a client, or a process in its own network namespace. The tracer
// must tell them apart from the test process by pid.
const helperEnv = "PORTLIFE_TEST_HELPER"

// testNetns is the network namespace the test process started in.
var testNetns uint32

func TestMain(m *testing.M) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &st); err == nil {
		testNetns = uint32(st.Ino)
	}
	if role := os.Getenv(helperEnv); role != "" {
		if err := runHelper(role, os.Args[len(os.Args)-1]); err != nil {
			fmt.Fprintf(os.Stderr, "helper %s: %v\n", role, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// helper is a running helper process and its stdout, one line at a time.
type helper struct {
	cmd   *exec.Cmd
	lines *bufio.Scanner
	stdin io.WriteCloser
}

// startHelper runs this test binary as role. The helper exits when its
// stdin closes, which the test's cleanup does.
func startHelper(t *testing.T, role, arg string, attr *syscall.SysProcAttr) *helper {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$", arg)
	cmd.Env = append(os.Environ(), helperEnv+"="+role)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = attr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting helper %s: %v", role, err)
	}
	h := &helper{cmd: cmd, lines: bufio.NewScanner(stdout), stdin: stdin}
	t.Cleanup(func() { h.stop(t) })
	return h
}

func (h *helper) pid() uint32 { return uint32(h.cmd.Process.Pid) }

// line reads the helper's next line of output.
func (h *helper) line(t *testing.T) string {
	t.Helper()
	if !h.lines.Scan() {
		t.Fatalf("helper exited early: %v", h.lines.Err())
	}
	return h.lines.Text()
}

func (h *helper) stop(t *testing.T) {
	h.stdin.Close()
	done := make(chan error, 1)
	go func() { done <- h.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("helper: %v", err)
		}
	case <-time.After(10 * time.Second):
		h.cmd.Process.Kill()
		t.Errorf("helper did not exit")
	}
}

func runHelper(role, arg string) error {
	switch role {
	case "server":
		if arg != "" {
			// A name of its own, for comm filters to tell it apart.
			if err := unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(&append([]byte(arg), 0)[0])), 0, 0, 0); err != nil {
				return err
			}
		}
		return echoServer()
	case "client":
		return echoClients(arg)
	case "udpclient":
		return udpQueries(arg)
	case "exhaust":
		return exhaustPorts(arg)
	case "netnsconns":
		return netnsConns(arg)
	case "named":
		return namedThreadConns(arg)
	case "calls":
		return failCalls(arg)
	case "prefork":
		return prefork(arg)
	case "preforkworker":
		return preforkWorker()
	case "holdserver":
		return holdServer(arg)
	case "holdclients":
		return holdClients(arg)
	case "foreignlistener":
		return foreignListener(arg)
	}
	return fmt.Errorf("unknown role %q", role)
}

// echoServer prints its port, then echoes payload bytes on every connection
// and closes after the client does, until stdin closes.
func echoServer() error {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	go func() {
		io.Copy(io.Discard, os.Stdin)
		ln.Close()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			return nil
		}
		go func() {
			defer c.Close()
			buf := make([]byte, payload)
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			c.Write(buf)
			c.Read(buf) // EOF: the client closes first
		}()
	}
}

// echoClients makes "count@addr" sequential echo connections and prints
// the local port of each.
func echoClients(arg string) error {
	count, addr, _ := strings.Cut(arg, "@")
	n, err := strconv.Atoi(count)
	if err != nil {
		return err
	}
	out := bufio.NewWriter(os.Stdout)
	buf := make([]byte, payload)
	for i := 0; i < n; i++ {
		c, err := net.Dial("tcp4", addr)
		if err != nil {
			return err
		}
		fmt.Fprintln(out, c.LocalAddr().(*net.TCPAddr).Port)
		if _, err := c.Write(buf); err != nil {
			return err
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			return err
		}
		c.Close()
	}
	out.Flush()
	io.Copy(io.Discard, os.Stdin)
	return nil
}

// udpQueries makes "count@addr" DNS-like queries, each from a fresh
// connected socket, and prints each socket's local port.
func udpQueries(arg string) error {
	count, addr, _ := strings.Cut(arg, "@")
	n, err := strconv.Atoi(count)
	if err != nil {
		return err
	}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return err
	}
	dst := &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	out := bufio.NewWriter(os.Stdout)
	query, buf := make([]byte, 32), make([]byte, 512)
	for i := 0; i < n; i++ {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		if err := unix.Connect(fd, dst); err != nil {
			return err
		}
		if err := unix.Send(fd, query, 0); err != nil {
			return err
		}
		if _, err := unix.Read(fd, buf); err != nil {
			return err
		}
		sa, err := unix.Getsockname(fd)
		if err != nil {
			return err
		}
		fmt.Fprintln(out, sa.(*unix.SockaddrInet4).Port)
		unix.Close(fd)
	}
	out.Flush()
	io.Copy(io.Discard, os.Stdin)
	return nil
}

// exhaustPorts runs in a network namespace of its own, whose ephemeral
// range is arg ("40000 40001"): it connects to a local listener until a
// connect fails, prints that error's number, and holds its connections
// until stdin closes.
func exhaustPorts(portRange string) error {
	if err := kerneltest.LinkUp("lo"); err != nil {
		return err
	}
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_local_port_range", []byte(portRange), 0); err != nil {
		return err
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:5000") // outside the range, which connects need
	if err != nil {
		return err
	}
	defer ln.Close()
	// Raw connect(2): Go's net.Dial retries EADDRNOTAVAIL itself, and each
	// try is a connect the tracer reports.
	var held []int
	dst := &unix.SockaddrInet4{Port: 5000, Addr: [4]byte{127, 0, 0, 1}}
	for {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		if err := unix.Connect(fd, dst); err != nil {
			var errno syscall.Errno
			if !errors.As(err, &errno) {
				return err
			}
			fmt.Println(int(errno), len(held))
			unix.Close(fd)
			break
		}
		held = append(held, fd)
		if len(held) > 10 {
			return fmt.Errorf("%d connects succeeded in a range of %s", len(held), portRange)
		}
	}
	io.Copy(io.Discard, os.Stdin)
	for _, fd := range held {
		unix.Close(fd)
	}
	return nil
}

// setComm names the calling process.
func setComm(name string) error {
	// The process's name is its main thread's: portlife reports that as
	// comm. PR_SET_NAME would rename whichever thread this goroutine is on.
	return os.WriteFile("/proc/self/comm", []byte(name), 0)
}
