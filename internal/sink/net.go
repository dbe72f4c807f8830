package sink

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/internal/encode"
	"github.com/portlife/portlife/internal/event"
)

// netSink delivers to a receiver over a connection: NDJSON over TCP or
// TLS, or RFC 5424 syslog over UDP, TCP, TLS or a unix datagram socket.
//
// Write (the stream's goroutine) encodes the event and appends the record
// to a memory queue bounded in bytes, or counts it dropped; it never waits
// for the network. A sender goroutine takes the whole queue at once and
// writes it, in order, reconnecting with exponential backoff and full
// jitter while the receiver is away. A record the kernel did not take whole
// before a connection failed is sent again on the next connection; one it
// took is counted sent, and is lost if the receiver dies before reading it
// (TCP acknowledges bytes to the kernel, not to the application).
type netSink struct {
	spec   Spec
	format func([]byte, *event.Event) []byte
	rec    []byte // the record being encoded; Write's alone
	dial   func(context.Context) (net.Conn, error)
	counters

	mu       sync.Mutex
	wake     *sync.Cond
	pending  []byte // encoded records waiting, whole
	pendEnds []int  // where each record in pending ends
	inflight int    // bytes the sender holds and has not sent yet
	closing  bool
	deadline time.Time // once closing: when draining gives up
	// writeDeadline is the current write's: Close brings it forward to
	// the drain deadline, never back.
	writeDeadline time.Time
	conn          net.Conn // the sender's, here so Close can cut a write short

	// The sender's alone: the records written on conn that the receiver's
	// kernel may not have acknowledged yet, whole, and where each ends.
	// At most the socket's send buffer and one batch.
	win     []byte
	winEnds []int

	disk *diskBuf // buffer_dir, nil without; under mu

	stop chan struct{} // closed at the drain deadline
	done chan struct{} // closed when the sender has ended
}

func openNet(spec Spec) (*netSink, error) {
	s := &netSink{spec: spec, stop: make(chan struct{}), done: make(chan struct{})}
	s.wake = sync.NewCond(&s.mu)
	s.format = recordFormat(spec)
	d := &net.Dialer{Timeout: 10 * time.Second}
	switch spec.Scheme {
	case "tcp", "syslog+tcp":
		s.dial = func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", spec.Addr) }
	case "tls", "syslog+tls":
		td := &tls.Dialer{NetDialer: d, Config: spec.TLS}
		s.dial = func(ctx context.Context) (net.Conn, error) { return td.DialContext(ctx, "tcp", spec.Addr) }
	case "syslog+udp":
		s.dial = func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "udp", spec.Addr) }
	case "syslog+unix":
		s.dial = func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "unixgram", spec.Path) }
	}
	if spec.BufferDir != "" {
		d, err := openDiskBuf(spec.BufferDir, spec.BufferSize)
		if err != nil {
			return nil, err
		}
		s.disk = d
		s.queued.Add(int64(d.records)) // left by an earlier run: they go first
	}
	go s.run()
	return s, nil
}

// recordFormat is how a network sink encodes one event into the record it
// sends: an NDJSON line, a syslog message (one per datagram), or on a
// syslog stream the message framed by octet counting. It appends to a
// reused buffer and allocates nothing per event (BenchmarkRecord).
func recordFormat(spec Spec) func([]byte, *event.Event) []byte {
	switch {
	case spec.Syslog() && spec.Stream():
		return (&octetCounted{syslog: NewSyslog(spec.Facility)}).Append
	case spec.Syslog():
		return NewSyslog(spec.Facility).Append // one message per datagram
	default:
		return (&encode.JSON{}).Append // NDJSON: the encoder ends each with a newline
	}
}

// octetCounted frames syslog messages for a byte stream (RFC 6587 3.4.1,
// RFC 5425): the length, a space, the message. The length comes first, so
// the message is formatted into msg, reused, then copied after it.
type octetCounted struct {
	syslog *Syslog
	msg    []byte
}

func (o *octetCounted) Append(b []byte, e *event.Event) []byte {
	o.msg = o.syslog.Append(o.msg[:0], e)
	b = strconv.AppendInt(b, int64(len(o.msg)), 10)
	b = append(b, ' ')
	return append(b, o.msg...)
}

func (s *netSink) Name() string     { return s.spec.Name() }
func (s *netSink) Stats() Stats     { return s.counters.stats(s.spec.Name()) }
func (s *netSink) QueueEvents() int { return 4096 } // the memory queue behind it is the real one
func (s *netSink) Flush() error     { return nil }  // the sender writes as soon as it can

// Write queues e's record, or counts it dropped when the queue is full.
func (s *netSink) Write(e *event.Event) error {
	s.rec = s.format(s.rec[:0], e)
	s.mu.Lock()
	full := len(s.pending)+s.inflight+len(s.rec) > s.spec.Queue
	if s.disk != nil && !s.closing && (full || s.disk.records > 0) {
		// Once events wait on disk, the next ones follow them there: the
		// order is kept.
		err := s.disk.append(s.rec)
		if err == nil {
			s.queued.Add(1)
			s.wake.Signal()
			s.mu.Unlock()
			return nil
		}
		s.mu.Unlock()
		if errors.Is(err, errBufferFull) {
			s.drop(DropQueueFull, 1, nil)
		} else {
			s.drop(DropDiskFull, 1, fmt.Errorf("buffer_dir: %w", err))
		}
		return nil
	}
	if full || s.closing {
		s.mu.Unlock()
		s.drop(DropQueueFull, 1, nil)
		return nil
	}
	s.pending = append(s.pending, s.rec...)
	s.pendEnds = append(s.pendEnds, len(s.pending))
	s.queued.Add(1)
	s.wake.Signal()
	s.mu.Unlock()
	return nil
}

// Close sends what is queued for up to the drain deadline, then counts
// what is left as dropped at shutdown.
func (s *netSink) Close() error {
	s.mu.Lock()
	if !s.closing {
		s.closing = true
		s.deadline = time.Now().Add(s.spec.Drain)
		if s.conn != nil && s.deadline.Before(s.writeDeadline) {
			s.conn.SetWriteDeadline(s.deadline)
		}
		s.wake.Broadcast()
		time.AfterFunc(s.spec.Drain, func() { close(s.stop) })
	}
	s.mu.Unlock()
	<-s.done
	return nil
}

// run is the sender.
func (s *netSink) run() {
	defer close(s.done)
	var batch []byte
	var ends []int
	first := true
	for {
		s.mu.Lock()
		for len(s.pending) == 0 && !s.onDisk() && !s.closing {
			s.wake.Wait()
		}
		switch {
		case len(s.pending) > 0:
			batch, s.pending = s.pending, batch[:0]
			ends, s.pendEnds = s.pendEnds, ends[:0]
		case s.onDisk():
			var err error
			batch, ends, _, err = s.disk.read(batch[:0], ends[:0], 1<<20)
			if err != nil {
				s.setErr(fmt.Errorf("buffer_dir: %w", err))
				s.drop(DropDiskFull, s.disk.records, nil)
				s.queued.Add(-int64(s.disk.records))
				s.disk.records = 0
			}
		default:
			s.mu.Unlock()
			s.shutdown(nil, nil)
			return
		}
		s.inflight = len(batch)
		s.mu.Unlock()

		if rest, restEnds := s.send(batch, ends, &first); len(restEnds) > 0 {
			s.shutdown(rest, restEnds) // the drain deadline passed
			return
		}
	}
}

func (s *netSink) onDisk() bool { return s.disk != nil && s.disk.records > 0 }

// shutdown ends the sender: rest (the records it could not send before the
// drain deadline) and what is queued in memory are kept on disk for the
// next run, with buffer_dir, or counted dropped at shutdown; then the
// connection is finished.
func (s *netSink) shutdown(rest []byte, restEnds []int) {
	s.mu.Lock()
	pending, pendEnds := s.pending, s.pendEnds
	s.pending, s.pendEnds, s.inflight = nil, nil, 0
	s.keep(pending, pendEnds) // newer than rest
	s.keep(rest, restEnds)
	conn := s.conn
	s.mu.Unlock()
	if conn != nil {
		s.finish(conn)
	}
	s.mu.Lock()
	if s.disk != nil {
		if err := s.disk.settle(); err != nil {
			s.setErr(fmt.Errorf("buffer_dir: %w", err))
		}
		s.disk.close()
	}
	s.mu.Unlock()
}

// keep puts records that will not be sent in this run first in the disk
// buffer, or counts them dropped at shutdown. Each call's records go before
// the previous call's: call it newest first. Called with mu held.
func (s *netSink) keep(recs []byte, ends []int) {
	if len(ends) == 0 {
		return
	}
	if s.disk != nil {
		err := s.disk.settle()
		if err == nil {
			err = s.disk.prepend(recs, ends)
		}
		if err == nil {
			return // still queued, for the next run
		}
		s.setErr(fmt.Errorf("buffer_dir: %w", err))
	}
	s.drop(DropShutdown, len(ends), nil)
	s.queued.Add(-int64(len(ends)))
}

// finish waits, until the drain deadline, for the receiver's kernel to
// acknowledge what the sink sent on conn, then closes it. What is still
// unacknowledged then was not delivered: it is counted dropped at
// shutdown, not sent, and the connection is reset so that it cannot arrive
// later either.
func (s *netSink) finish(conn net.Conn) {
	defer func() {
		s.mu.Lock()
		s.conn = nil
		s.mu.Unlock()
	}()
	if !s.spec.Stream() {
		conn.Close()
		return
	}
	s.mu.Lock()
	deadline := s.deadline
	s.mu.Unlock()
	for {
		outq, ok := unsent(conn)
		if !ok || outq == 0 {
			conn.Close()
			return
		}
		if time.Now().After(deadline) {
			if recs, ends := s.takeUnacked(outq); len(ends) > 0 {
				n := len(ends)
				s.sent.Add(^uint64(n - 1)) // less n: they were not delivered
				s.queued.Add(int64(n))
				s.mu.Lock()
				s.keep(recs, ends)
				s.mu.Unlock()
			}
			reset(conn)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// send writes batch's records in order and returns those it could not
// send before the drain deadline, with their ends. On a stream, the records written and not
// yet known to be acknowledged by the receiver's kernel are kept (the
// window); when the connection fails, those it did not acknowledge are sent
// again first, on the next connection.
func (s *netSink) send(batch []byte, ends []int, first *bool) ([]byte, []int) {
	i, off := 0, 0 // the next record, and where it starts
	datagram := !s.spec.Stream()
	for i < len(ends) {
		conn := s.connection(first)
		if conn == nil {
			rest := make([]int, 0, len(ends)-i)
			for _, e := range ends[i:] {
				rest = append(rest, e-off)
			}
			return batch[off:], rest
		}
		if !datagram {
			s.trim(conn, 0)
		}
		s.mu.Lock()
		wd := time.Now().Add(s.spec.WriteTimeout)
		if s.closing && s.deadline.Before(wd) {
			wd = s.deadline
		}
		s.writeDeadline = wd
		conn.SetWriteDeadline(wd)
		s.mu.Unlock()

		end := len(batch)
		if datagram {
			end = ends[i]
		}
		n, err := conn.Write(batch[off:end])
		sent := 0
		for start := off; i < len(ends) && ends[i] <= off+n; start = ends[i-1] {
			if !datagram {
				s.win = append(s.win, batch[start:ends[i]]...)
				s.winEnds = append(s.winEnds, len(s.win))
			}
			i++
			sent++
		}
		partial := 0
		if sent > 0 {
			partial = off + n - ends[i-1]
			off = ends[i-1]
			s.sent.Add(uint64(sent))
			s.queued.Add(-int64(sent))
			s.mu.Lock()
			s.inflight = len(batch) - off
			s.mu.Unlock()
		} else {
			partial = n
		}
		if err == nil {
			continue
		}
		// The connection is gone, or stalled past write_timeout: a new one
		// gets what the receiver's kernel did not acknowledge, and the
		// record the kernel did not take whole.
		s.setErr(err)
		if !datagram {
			var resend []byte
			var resendEnds []int
			if outq, ok := unsent(conn); ok {
				resend, resendEnds = s.takeUnacked(outq - partial)
			} else { // unknown: all of it, at least once
				resend, resendEnds = s.takeUnacked(len(s.win))
			}
			if k := len(resendEnds); k > 0 {
				s.sent.Add(^uint64(k - 1))
				s.queued.Add(int64(k))
				nb := append(resend, batch[off:]...)
				ne := append(resendEnds, make([]int, 0, len(ends)-i)...)
				for _, e := range ends[i:] {
					ne = append(ne, e-off+len(resend))
				}
				batch, ends, i, off = nb, ne, 0, 0
			}
			reset(conn)
		} else {
			conn.Close()
		}
		s.mu.Lock()
		s.conn = nil
		s.mu.Unlock()
		s.win, s.winEnds = s.win[:0], s.winEnds[:0]
	}
	s.mu.Lock()
	s.inflight = 0
	s.mu.Unlock()
	return nil, nil
}

// trim forgets the records of the window the receiver's kernel has
// acknowledged: all but the last outq bytes (the kernel's unsent and
// unacknowledged ones), less partial bytes of a record not in the window.
func (s *netSink) trim(conn net.Conn, partial int) {
	if len(s.win) == 0 {
		return
	}
	outq, ok := unsent(conn)
	if !ok {
		return
	}
	acked := len(s.win) - (outq - partial)
	k := 0
	for k < len(s.winEnds) && s.winEnds[k] <= acked {
		k++
	}
	if k == 0 {
		return
	}
	cut := s.winEnds[k-1]
	s.win = s.win[:copy(s.win, s.win[cut:])]
	s.winEnds = s.winEnds[:copy(s.winEnds, s.winEnds[k:])]
	for j := range s.winEnds {
		s.winEnds[j] -= cut
	}
}

// takeUnacked returns a copy of the window's records that lie, even in
// part, within its last outq bytes, and empties the window.
func (s *netSink) takeUnacked(outq int) ([]byte, []int) {
	acked := len(s.win) - outq
	k := 0
	for k < len(s.winEnds) && s.winEnds[k] <= acked {
		k++
	}
	if k == len(s.winEnds) {
		return nil, nil
	}
	cut := 0
	if k > 0 {
		cut = s.winEnds[k-1]
	}
	b := append([]byte(nil), s.win[cut:]...)
	e := make([]int, 0, len(s.winEnds)-k)
	for _, end := range s.winEnds[k:] {
		e = append(e, end-cut)
	}
	return b, e
}

// unsent is what the kernel holds for conn that the receiver's kernel has
// not acknowledged (SIOCOUTQ), in bytes of the stream under any TLS. Over
// TLS the count is of TLS records, not of the records the sink wrote: it is
// exact only when it is 0, and otherwise taken as all of them.
func unsent(conn net.Conn) (int, bool) {
	tlsConn, isTLS := conn.(*tls.Conn)
	if isTLS {
		conn = tlsConn.NetConn()
	}
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return 0, false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return 0, false
	}
	var n int
	var ierr error
	if err := raw.Control(func(fd uintptr) { n, ierr = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ) }); err != nil || ierr != nil {
		return 0, false
	}
	if isTLS && n > 0 {
		return 1 << 62, true
	}
	return n, true
}

// reset closes conn at once, discarding what it still holds (SO_LINGER
// 0): what is sent again on the next connection must not also arrive late
// on this one.
func reset(conn net.Conn) {
	if t, ok := conn.(*tls.Conn); ok {
		conn = t.NetConn()
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	conn.Close()
}

// connection returns the open connection, or makes one, waiting between
// attempts with exponential backoff and full jitter, until the drain
// deadline. nil means the deadline passed.
func (s *netSink) connection(first *bool) net.Conn {
	s.mu.Lock()
	c, late := s.conn, s.closing && time.Now().After(s.deadline)
	s.mu.Unlock()
	if c != nil || late {
		return c
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-s.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	backoff := 100 * time.Millisecond
	for {
		c, err := s.dial(ctx)
		if err == nil {
			s.mu.Lock()
			s.conn = c
			s.mu.Unlock()
			if !*first {
				s.reconnects.Add(1)
			}
			*first = false
			return c
		}
		s.setErr(err)
		*first = false // a failed first attempt makes the next success a reconnect
		wait := rand.N(backoff) + time.Millisecond
		backoff = min(backoff*2, s.spec.BackoffMax)
		select {
		case <-time.After(wait):
		case <-s.stop:
			return nil
		}
	}
}
