package main

import (
	"fmt"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/bench/internal/truth"
)

// workerResult is owned by one worker until the run ends, so the hot path
// appends without locks.
type workerResult struct {
	index  int
	ports  []uint16
	errors map[string]int
	// roundTrips counts the echoes completed in --persistent mode.
	roundTrips int64
}

type clientResult struct {
	workers []*workerResult
	seconds float64
}

func (r *clientResult) conns() int {
	n := 0
	for _, w := range r.workers {
		n += len(w.ports)
	}
	return n
}

func (r *clientResult) roundTrips() int64 {
	var n int64
	for _, w := range r.workers {
		n += w.roundTrips
	}
	return n
}

func (r *clientResult) errorKinds() map[string]int {
	all := map[string]int{}
	for _, w := range r.workers {
		for k, v := range w.errors {
			all[k] += v
		}
	}
	return all
}

func (r *clientResult) errors() int {
	n := 0
	for _, v := range r.errorKinds() {
		n += v
	}
	return n
}

func (r *clientResult) writeTruth(cf clientFlags, target netip.AddrPort) error {
	ports := make([][]uint16, len(r.workers))
	for i, w := range r.workers {
		ports[i] = w.ports
	}
	h := truth.Header{
		PID:        os.Getpid(),
		Proto:      cf.proto,
		Seconds:    r.seconds,
		Rate:       cf.rate,
		Errors:     r.errors(),
		Workers:    cf.workers,
		Sources:    effectiveSources(cf, target),
		Target:     target.String(),
		ErrorKinds: r.errorKinds(),
	}
	if cf.persistent {
		h.RoundTrips, h.Size = r.roundTrips(), cf.size
	}
	return truth.WriteFile(cf.truth, h, ports)
}

// effectiveSources is how many loopback source addresses are in use: only
// IPv4 loopback has more than one (all of 127/8).
func effectiveSources(cf clientFlags, target netip.AddrPort) int {
	if a := target.Addr().Unmap(); !a.Is4() || !a.IsLoopback() {
		return 0
	}
	return min(max(cf.sources, 0), 250)
}

// runClient starts all workers at once and waits until each has finished its
// last connection after the deadline.
func runClient(cf clientFlags, target netip.AddrPort) *clientResult {
	res := &clientResult{workers: make([]*workerResult, cf.workers)}
	payload := make([]byte, max(1, cf.size))
	for i := range payload {
		payload[i] = byte('a' + i%26)
	}
	// Sized for full speed on a small box, so appends rarely copy mid-run.
	expect := int(cf.duration.Seconds()*25000) / cf.workers
	if cf.persistent {
		expect = 4 // one connection, unless one fails
	} else if cf.rate > 0 {
		expect = int(cf.duration.Seconds()*cf.rate*1.1)/cf.workers + 16
	}

	start := time.Now()
	deadline := start.Add(cf.duration)
	var interval time.Duration
	if cf.rate > 0 {
		interval = time.Duration(float64(time.Second) * float64(cf.workers) / cf.rate)
	}
	var wg sync.WaitGroup
	for i := range res.workers {
		w := &workerResult{index: i, ports: make([]uint16, 0, expect), errors: map[string]int{}}
		res.workers[i] = w
		// Staggering paced workers spreads their connections evenly instead
		// of in bursts of len(workers).
		first := start.Add(interval * time.Duration(i) / time.Duration(cf.workers))
		wg.Go(func() {
			if cf.persistent {
				w.runPersistent(cf, target, payload, deadline)
				return
			}
			w.run(cf, target, payload, first, interval, deadline)
		})
	}
	wg.Wait()
	res.seconds = time.Since(start).Seconds()
	return res
}

// source is the worker's loopback source address, or nil for the kernel's
// choice.
func (w *workerResult) source(cf clientFlags, target netip.AddrPort) unix.Sockaddr {
	if n := effectiveSources(cf, target); n > 0 {
		return &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, byte(2 + w.index%n)}}
	}
	return nil
}

func sockType(proto string) int {
	if proto == "udp" {
		return unix.SOCK_DGRAM
	}
	return unix.SOCK_STREAM
}

// run uses an absolute schedule: when a sleep overshoots (Go timers are
// coarse at sub-millisecond intervals) the following iterations skip their
// sleep, so the average rate still matches the request.
func (w *workerResult) run(cf clientFlags, target netip.AddrPort, payload []byte, next time.Time, interval time.Duration, deadline time.Time) {
	sa, family := sockaddr(target)
	src := w.source(cf, target)
	echoBuf := make([]byte, len(payload))
	tv := unix.NsecToTimeval(cf.timeout.Nanoseconds())
	typ := sockType(cf.proto)
	for {
		now := time.Now()
		if !now.Before(deadline) {
			return
		}
		if interval > 0 {
			if d := next.Sub(now); d > 0 {
				time.Sleep(d)
			}
			next = next.Add(interval)
		}
		port, err := oneConn(family, typ, src, sa, &tv, payload, echoBuf, cf.waitEOF)
		if err != nil {
			w.errors[errName(err)]++
			if err == unix.EADDRNOTAVAIL {
				// Every ephemeral port is in use or in a TIME_WAIT too
				// young to reuse; retrying at once would only spin.
				time.Sleep(time.Millisecond)
			}
			continue
		}
		w.ports = append(w.ports, port)
	}
}

// oneConn does one full connection lifetime and returns its local port.
func oneConn(family, typ int, src, sa unix.Sockaddr, tv *unix.Timeval, payload, echoBuf []byte, waitEOF bool) (uint16, error) {
	fd, port, err := openConn(family, typ, src, sa, tv)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	if err := writeAll(fd, payload); err != nil {
		return 0, err
	}
	if typ == unix.SOCK_DGRAM {
		return port, readDatagram(fd, echoBuf)
	}
	if err := readFull(fd, echoBuf); err != nil {
		return 0, err
	}
	if waitEOF {
		return port, readEOF(fd, echoBuf)
	}
	return port, nil
}

// openConn makes a connected socket from src (nil: the kernel picks) to sa
// and returns it with its local port; on error nothing is left open.
func openConn(family, typ int, src, sa unix.Sockaddr, tv *unix.Timeval) (int, uint16, error) {
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, 0, err
	}
	port, err := setupConn(fd, src, sa, tv)
	if err != nil {
		unix.Close(fd)
		return -1, 0, err
	}
	return fd, port, nil
}

func setupConn(fd int, src, sa unix.Sockaddr, tv *unix.Timeval) (uint16, error) {
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, tv); err != nil {
		return 0, err
	}
	if src != nil {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1); err != nil {
			return 0, err
		}
		if err := unix.Bind(fd, src); err != nil {
			return 0, err
		}
	}
	if err := connect(fd, sa); err != nil {
		return 0, err
	}
	return localPort(fd)
}

// readEOF waits for the server's FIN.
func readEOF(fd int, buf []byte) error {
	for {
		n, err := unix.Read(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
	}
}

func readDatagram(fd int, buf []byte) error {
	for {
		n, err := unix.Read(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n != len(buf) {
			return fmt.Errorf("echo of %d bytes, want %d: %w", n, len(buf), errShortEcho)
		}
		return nil
	}
}

// runPersistent is a --persistent worker: one connection for the whole run,
// echo round trips on it until the deadline, then the close. A connection
// that fails (a timeout, a reset) is counted, closed and replaced, so the
// truth lists every connection the worker opened and a lost UDP datagram
// cannot leave a late echo to be taken for the next one.
func (w *workerResult) runPersistent(cf clientFlags, target netip.AddrPort, payload []byte, deadline time.Time) {
	sa, family := sockaddr(target)
	src := w.source(cf, target)
	echoBuf := make([]byte, len(payload))
	tv := unix.NsecToTimeval(cf.timeout.Nanoseconds())
	typ := sockType(cf.proto)
	for time.Now().Before(deadline) {
		fd, port, err := openConn(family, typ, src, sa, &tv)
		if err == nil && typ == unix.SOCK_STREAM {
			// Each request is one small write; Nagle must not hold one
			// back for an ACK, whatever the order of reads and ACKs.
			err = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
			if err != nil {
				unix.Close(fd)
			}
		}
		if err != nil {
			w.errors[errName(err)]++
			if err == unix.EADDRNOTAVAIL {
				time.Sleep(time.Millisecond)
			}
			continue
		}
		w.ports = append(w.ports, port)
		if err := w.roundTripsUntil(fd, typ, payload, echoBuf, deadline); err != nil {
			w.errors[errName(err)]++
		}
		unix.Close(fd)
	}
}

// roundTripsUntil writes payload and reads its echo, again and again, until
// the deadline or an error.
func (w *workerResult) roundTripsUntil(fd, typ int, payload, echoBuf []byte, deadline time.Time) error {
	for time.Now().Before(deadline) {
		if err := writeAll(fd, payload); err != nil {
			return err
		}
		var err error
		if typ == unix.SOCK_DGRAM {
			err = readDatagram(fd, echoBuf)
		} else {
			err = readFull(fd, echoBuf)
		}
		if err != nil {
			return err
		}
		w.roundTrips++
	}
	return nil
}
