package tracer

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/internal/event"
)

// Under a prefork server the process that serves a connection is not the
// one that called listen(). Each accepted connection's close names the
// process that closed it, with listener_pid the master's;
// its open, sent at the handshake before anyone accepted it, names the
// master. Two shapes: workers that each accept from the master's listening
// socket (nginx, apache, gunicorn), and a master that accepts and hands
// each connection to a child it starts (postgres).
//
// The filter names the master: an accepted connection matches the filters
// by its listener, and nothing else on the host is traced.
func TestPreforkServerNamesTheWorker(t *testing.T) {
	r := startTracer(t, event.Filter{Protos: []event.Proto{event.ProtoTCP}, Comm: "pl-master"})
	const workers = 3
	for _, mode := range []string{"workers accept", "master accepts"} {
		t.Run(mode, func(t *testing.T) {
			master := startHelper(t, "prefork", fmt.Sprintf("%d %s", workers, mode), nil)
			f := strings.Fields(master.line(t))
			port, err := strconv.Atoi(f[0])
			if err != nil {
				t.Fatalf("master's port: %v", err)
			}
			serverAddr := fmt.Sprintf("127.0.0.1:%d", port)

			// Each connection: the client asks, and the server answers with
			// the pid of the process serving it. The client closes first.
			served := map[uint16]uint32{} // client port -> server pid
			for i := 0; i < workers; i++ {
				c, err := net.Dial("tcp4", serverAddr)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := fmt.Fprintln(c, "who serves this?"); err != nil {
					t.Fatal(err)
				}
				line, err := bufio.NewReader(c).ReadString('\n')
				if err != nil {
					t.Fatalf("reading the worker's pid: %v", err)
				}
				pid, err := strconv.Atoi(strings.TrimSpace(line))
				if err != nil {
					t.Fatal(err)
				}
				served[addrPort(t, c.LocalAddr()).Port()] = uint32(pid)
				c.Close()
			}
			pids := slices.Sorted(func(yield func(uint32) bool) {
				for _, p := range served {
					if !yield(p) {
						return
					}
				}
			})
			if uniq := slices.Compact(pids); len(uniq) != workers || slices.Contains(uniq, master.pid()) {
				t.Fatalf("connections served by %v, want %d workers, none the master (%d)", pids, workers, master.pid())
			}

			inbound := func(e *event.Event) bool {
				_, ok := served[e.Remote.Port()]
				return e.Direction == event.DirectionInbound && e.Local.Port() == uint16(port) && ok
			}
			got := r.events.waitFor(t, 2*workers, inbound)
			if len(got) != 2*workers {
				t.Fatalf("%d inbound events, want an open and a close for each of %d connections: %+v", len(got), workers, got)
			}
			for _, e := range got {
				key := fmt.Sprintf("%v from %v", e.Kind, e.Remote)
				check(t, key, "listener pid", e.ListenerPID, master.pid())
				switch e.Kind {
				case event.KindOpen:
					check(t, key, "pid", e.PID, master.pid())
					check(t, key, "comm", e.Comm.String(), "pl-master")
					check(t, key, "pid source", e.PIDSource, event.PIDSourceListener)
				case event.KindClose:
					check(t, key, "pid", e.PID, served[e.Remote.Port()])
					check(t, key, "comm", e.Comm.String(), "pl-worker")
					check(t, key, "pid source", e.PIDSource, event.PIDSourceClose)
					if e.TxBytes == 0 || e.RxBytes == 0 {
						t.Errorf("%s: tx %d, rx %d bytes: the worker served it", key, e.TxBytes, e.RxBytes)
					}
				default:
					t.Errorf("unexpected %s", key)
				}
			}
		})
	}
	r.requireNothingLost(t)
}

// prefork is a prefork server's master, named pl-master: arg is "N workers
// accept" or "N master accepts". It listens on 127.0.0.1, prints the port,
// and starts N workers (this binary again, named pl-worker), each serving
// one connection. Either each worker accepts from the listening socket it
// inherited, or the master accepts and starts a worker with the connection.
// All exit when stdin closes.
func prefork(arg string) error {
	n, mode, _ := strings.Cut(arg, " ")
	workers, err := strconv.Atoi(n)
	if err != nil {
		return err
	}
	if err := setComm("pl-master"); err != nil {
		return err
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return err
	}
	lf, err := ln.(*net.TCPListener).File()
	if err != nil {
		return err
	}
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)

	var started []*exec.Cmd
	defer func() {
		for _, w := range started {
			w.Wait()
		}
	}()
	start := func(f *os.File) error {
		w := exec.Command(os.Args[0], "-test.run=^$", "")
		w.Env = append(os.Environ(), helperEnv+"=preforkworker")
		w.Stdin, w.Stdout, w.Stderr = os.Stdin, io.Discard, os.Stderr // all see stdin close
		w.ExtraFiles = []*os.File{f}                                  // fd 3
		if err := w.Start(); err != nil {
			return err
		}
		started = append(started, w)
		return nil
	}
	for i := 0; i < workers; i++ {
		if mode == "workers accept" {
			if err := start(lf); err != nil {
				return err
			}
			continue
		}
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		cf, err := c.(*net.TCPConn).File()
		c.Close()
		if err != nil {
			return err
		}
		err = start(cf)
		cf.Close() // the worker holds it now, as a forked backend would
		if err != nil {
			return err
		}
	}
	io.Copy(io.Discard, os.Stdin)
	return nil
}

// preforkWorker serves one connection on fd 3: accepted from it, if it is
// a listening socket, or the connection itself. It reads a request line,
// writes its pid, reads until the client closes, and waits for stdin to
// close.
func preforkWorker() error {
	if err := setComm("pl-worker"); err != nil {
		return err
	}
	f := os.NewFile(3, "inherited")
	var conn net.Conn
	if accepting, err := unix.GetsockoptInt(3, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err == nil && accepting == 1 {
		ln, err := net.FileListener(f)
		if err != nil {
			return err
		}
		if conn, err = ln.Accept(); err != nil {
			return err
		}
		ln.Close()
	} else if conn, err = net.FileConn(f); err != nil {
		return err
	}
	f.Close()
	// A request first, as servers read one.
	if _, err := bufio.NewReader(conn).ReadString('\n'); err != nil {
		return err
	}
	if _, err := fmt.Fprintln(conn, os.Getpid()); err != nil {
		return err
	}
	io.Copy(io.Discard, conn)
	conn.Close()
	io.Copy(io.Discard, os.Stdin)
	return nil
}
