package sink

import (
	"context"
	"crypto/tls"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"time"

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
	msg    []byte // a syslog message before framing; Write's alone
	dial   func(context.Context) (net.Conn, error)
	counters

	mu       sync.Mutex
	wake     *sync.Cond
	pending  []byte // encoded records waiting, whole
	pendEnds []int  // where each record in pending ends
	inflight int    // bytes the sender holds and has not sent yet
	closing  bool
	deadline time.Time // once closing: when draining gives up
	conn     net.Conn  // the sender's, here so Close can cut a write short

	stop chan struct{} // closed at the drain deadline
	done chan struct{} // closed when the sender has ended
}

func openNet(spec Spec) (*netSink, error) {
	s := &netSink{spec: spec, stop: make(chan struct{}), done: make(chan struct{})}
	s.wake = sync.NewCond(&s.mu)
	switch {
	case spec.Syslog() && spec.Stream():
		sl := NewSyslog(spec.Facility)
		s.format = func(b []byte, e *event.Event) []byte {
			// Octet counting (RFC 6587 3.4.1, RFC 5425): the length, a
			// space, the message.
			s.msg = sl.Append(s.msg[:0], e)
			b = strconv.AppendInt(b, int64(len(s.msg)), 10)
			b = append(b, ' ')
			return append(b, s.msg...)
		}
	case spec.Syslog():
		s.format = NewSyslog(spec.Facility).Append // one message per datagram
	default:
		s.format = (&encode.JSON{}).Append // NDJSON: the encoder ends each with a newline
	}
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
	go s.run()
	return s, nil
}

func (s *netSink) Name() string     { return s.spec.Name() }
func (s *netSink) Stats() Stats     { return s.counters.stats(s.spec.Name()) }
func (s *netSink) QueueEvents() int { return 4096 } // the memory queue behind it is the real one
func (s *netSink) Flush() error     { return nil }  // the sender writes as soon as it can

// Write queues e's record, or counts it dropped when the queue is full.
func (s *netSink) Write(e *event.Event) error {
	s.rec = s.format(s.rec[:0], e)
	s.mu.Lock()
	if len(s.pending)+s.inflight+len(s.rec) > s.spec.Queue || s.closing {
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
		if s.conn != nil {
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
		for len(s.pending) == 0 && !s.closing {
			s.wake.Wait()
		}
		if len(s.pending) == 0 {
			s.mu.Unlock()
			break
		}
		batch, s.pending = s.pending, batch[:0]
		ends, s.pendEnds = s.pendEnds, ends[:0]
		s.inflight = len(batch)
		s.mu.Unlock()

		left := s.send(batch, ends, &first)
		if left > 0 { // the drain deadline passed
			s.drop(DropShutdown, left, nil)
			break
		}
	}
	s.mu.Lock()
	if n := len(s.pendEnds); n > 0 {
		s.drop(DropShutdown, n, nil)
		s.queued.Add(-int64(n))
	}
	s.pending, s.pendEnds, s.inflight = nil, nil, 0
	if s.conn != nil {
		s.conn.Close()
		s.conn = nil
	}
	s.mu.Unlock()
}

// send writes batch's records in order and returns how many it could not
// send before the drain deadline.
func (s *netSink) send(batch []byte, ends []int, first *bool) int {
	i, off := 0, 0 // the next record, and where it starts
	datagram := !s.spec.Stream()
	for i < len(ends) {
		conn := s.connection(first)
		if conn == nil {
			s.queued.Add(-int64(len(ends) - i))
			return len(ends) - i
		}
		s.mu.Lock()
		wd := time.Now().Add(s.spec.WriteTimeout)
		if s.closing && s.deadline.Before(wd) {
			wd = s.deadline
		}
		s.mu.Unlock()
		conn.SetWriteDeadline(wd)

		end := len(batch)
		if datagram {
			end = ends[i]
		}
		n, err := conn.Write(batch[off:end])
		sent := 0
		for i < len(ends) && ends[i] <= off+n {
			i++
			sent++
		}
		if sent > 0 {
			off = ends[i-1]
			s.sent.Add(uint64(sent))
			s.queued.Add(-int64(sent))
			s.mu.Lock()
			s.inflight = len(batch) - off
			s.mu.Unlock()
		}
		if err != nil {
			// The connection is gone, or stalled past write_timeout: a new
			// one gets the record the kernel did not take whole.
			s.setErr(err)
			s.mu.Lock()
			s.conn.Close()
			s.conn = nil
			s.mu.Unlock()
		}
	}
	s.mu.Lock()
	s.inflight = 0
	s.mu.Unlock()
	return 0
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
