package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A close that finds tcp_max_tw_buckets full leaves no TIME_WAIT: portlife
// reports its port released at once, as an overflow, and counts it in
// `tracing stopped`. The connection runs in a network namespace of the
// test's own, with no TIME_WAIT allowed.
func TestReleasedOverflow(t *testing.T) {
	requireRoot(t)
	p := start(t, "--output", "json", "--pid", fmt.Sprint(os.Getpid()), "--flush-interval", "10ms", "--released", "--released-interval", "200ms")
	leave := make(chan struct{})
	defer close(leave)
	lport, err := inOwnNetns(map[string]string{"tcp_max_tw_buckets": "0"}, closeFirstOnLoopback, leave)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond) // a sweep or more
	if code := p.stop(t, os.Interrupt); code != 0 {
		t.Fatalf("exit code %d, want 0; stderr:\n%s", code, p.stderr.String())
	}

	var closes, releases []map[string]any
	sc := bufio.NewScanner(&p.stdout)
	for sc.Scan() {
		var ev map[string]any
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("not a JSON line: %q: %v", sc.Text(), err)
		}
		if int(ev["lport"].(float64)) != int(lport) || ev["direction"] != "outbound" {
			continue
		}
		switch ev["event"] {
		case "close":
			closes = append(closes, ev)
		case "released":
			releases = append(releases, ev)
			for _, f := range required["released"] {
				if _, ok := ev[f]; !ok {
					t.Errorf("released event without %q: %s", f, sc.Text())
				}
			}
		}
	}
	if len(closes) != 1 || len(releases) != 1 {
		t.Fatalf("%d closes and %d releases for port %d, want 1 and 1; stdout:\n%s", len(closes), len(releases), lport, p.stdout.String())
	}
	c, r := closes[0], releases[0]
	if r["release"] != "overflow" || r["start"] != c["ts"] || r["ts"] != c["ts"] || r["time_wait_ms"] != 0.0 || r["sock_cookie"] != c["sock_cookie"] || c["time_wait"] != true {
		t.Errorf("released %v for close %v: want an overflow at the close's time, of its socket", r, c)
	}
	stderr := p.stderr.String()
	if !strings.Contains(stderr, `"released":{"tracked":1,`) || !strings.Contains(stderr, `"overflow":1,`) || !strings.Contains(stderr, `"lost":0`) {
		t.Errorf("tracing stopped does not count one tracked close, released as an overflow, with nothing lost:\n%s", stderr)
	}
}

// inOwnNetns runs f on a thread in a new network namespace with lo up and
// the sysctls set. The thread, and the namespace with it, ends when leave
// is closed.
func inOwnNetns(sysctls map[string]string, f func() (uint16, error), leave <-chan struct{}) (uint16, error) {
	type result struct {
		port uint16
		err  error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the runtime retires the thread
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			done <- result{err: err}
			return
		}
		if err := loUp(); err != nil {
			done <- result{err: err}
			return
		}
		for k, v := range sysctls {
			if err := os.WriteFile("/proc/sys/net/ipv4/"+k, []byte(v), 0); err != nil {
				done <- result{err: err}
				return
			}
		}
		p, err := f()
		done <- result{p, err}
		<-leave
	}()
	r := <-done
	return r.port, r.err
}

func loUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// closeFirstOnLoopback makes one connection on 127.0.0.1 whose client
// closes first and reads the server's FIN; it returns the client's port.
func closeFirstOnLoopback() (uint16, error) {
	ln, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(ln)
	lo := &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}
	if err := unix.Bind(ln, lo); err != nil {
		return 0, err
	}
	if err := unix.Listen(ln, 1); err != nil {
		return 0, err
	}
	sa, err := unix.Getsockname(ln)
	if err != nil {
		return 0, err
	}
	c, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(c)
	if err := unix.Connect(c, sa); err != nil {
		return 0, err
	}
	s, _, err := unix.Accept4(ln, unix.SOCK_CLOEXEC)
	if err != nil {
		return 0, err
	}
	defer unix.Close(s)
	local, err := unix.Getsockname(c)
	if err != nil {
		return 0, err
	}
	var b [1]byte
	if err := unix.Shutdown(c, unix.SHUT_WR); err != nil {
		return 0, err
	}
	if _, err := unix.Read(s, b[:]); err != nil {
		return 0, err
	}
	if err := unix.Shutdown(s, unix.SHUT_WR); err != nil {
		return 0, err
	}
	if _, err := unix.Read(c, b[:]); err != nil {
		return 0, err
	}
	return uint16(local.(*unix.SockaddrInet4).Port), nil
}
