package sink

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	syslog "github.com/leodido/go-syslog/v4"
	"github.com/leodido/go-syslog/v4/octetcounting"
	"github.com/leodido/go-syslog/v4/rfc5424"

	"github.com/portlife/portlife/internal/kerneltest"
	"github.com/portlife/portlife/internal/sinktest"
)

func openNetURL(t *testing.T, url string) *netSink {
	t.Helper()
	spec, err := ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	s, err := openNet(spec)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// cookies reads the sock_cookie of each NDJSON line, and fails on a line
// that is not whole JSON.
func cookies(t *testing.T, b []byte) []uint64 {
	t.Helper()
	var out []uint64
	for _, l := range scanLines(bytes.NewReader(b)) {
		var ev struct {
			Cookie uint64 `json:"sock_cookie"`
		}
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("not a whole JSON line: %q: %v", l, err)
		}
		out = append(out, ev.Cookie)
	}
	return out
}

// inOrder says whether cookies rise strictly: nothing repeated, nothing
// out of order.
func inOrder(c []uint64) bool {
	for i := 1; i < len(c); i++ {
		if c[i] <= c[i-1] {
			return false
		}
	}
	return true
}

// A receiver that stops reading costs events from the sink's own queue,
// each counted: what arrives, in order, is exactly what the sink counts
// sent, and sent plus dropped is everything it was handed.
func TestNetStalledReceiverCountsExactly(t *testing.T) {
	for _, scheme := range []string{"tcp", "tls"} {
		t.Run(scheme, func(t *testing.T) {
			ca := sinktest.NewCA(t)
			var r *sinktest.Receiver
			u := ""
			if scheme == "tls" {
				r = sinktest.Listen(t, ca.Server, true)
				u = "tls://" + r.Addr() + "?queue=64KiB&ca=" + url.QueryEscape(ca.File)
			} else {
				r = sinktest.Listen(t, nil, true)
				u = "tcp://" + r.Addr() + "?queue=64KiB"
			}
			s := openNetURL(t, u)
			const n = 20000 // about 12MB: more than the queue and both socket buffers hold
			for i := range n {
				s.Write(testEvent(i))
			}
			r.Resume()
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			got := cookies(t, r.Bytes())
			st := s.Stats()
			if st.Dropped[DropQueueFull] == 0 {
				t.Fatal("nothing dropped: the receiver did not stall the sink, and the test proves nothing")
			}
			if uint64(len(got)) != st.Sent || st.Sent+st.Lost() != n || st.Queued != 0 {
				t.Errorf("received %d; sink sent %d, dropped %v, queued %d; want received = sent, sent + dropped = %d", len(got), st.Sent, st.Dropped, st.Queued, n)
			}
			if !inOrder(got) {
				t.Error("events arrived out of order or twice")
			}
		})
	}
}

// A receiver that is down at start, then comes up: the queued events all
// arrive, in order, after a counted reconnect.
func TestNetReconnects(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // down: connections are refused
	s := openNetURL(t, "tcp://"+addr+"?backoff_max=100ms")
	const n = 500
	for i := range n {
		s.Write(testEvent(i))
	}
	time.Sleep(300 * time.Millisecond) // a few refused attempts
	if st := s.Stats(); st.Sent != 0 || st.Queued != n || st.LastError == nil {
		t.Fatalf("while the receiver is down: %+v, want all %d queued and the error", st, n)
	}
	ln, err = net.Listen("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	r := sinktest.Serve(t, ln, nil, false)
	s.Close()
	got := cookies(t, r.Bytes())
	st := s.Stats()
	if len(got) != n || !inOrder(got) || st.Sent != n || st.Lost() != 0 || st.Reconnects == 0 {
		t.Errorf("received %d (in order: %v), stats %+v: want all %d, in order, after a reconnect", len(got), inOrder(got), st, n)
	}
}

// At exit a sink drains for its deadline, then counts what it could not
// send as dropped at shutdown.
func TestNetDrainDeadline(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	s := openNetURL(t, "tcp://"+addr+"?drain=200ms&backoff_max=50ms")
	for i := range 10 {
		s.Write(testEvent(i))
	}
	done := make(chan struct{})
	go func() { s.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("Close did not return: the drain deadline is not kept")
	}
	if st := s.Stats(); st.Dropped[DropShutdown] != 10 || st.Sent != 0 || st.Queued != 0 {
		t.Errorf("stats %+v, want 10 dropped at shutdown", st)
	}
}

// Syslog over a stream is octet-counted (RFC 6587), over TLS too (RFC
// 5425): a strict parser reads every message back, in order.
func TestSyslogStream(t *testing.T) {
	for _, scheme := range []string{"syslog+tcp", "syslog+tls"} {
		t.Run(scheme, func(t *testing.T) {
			ca := sinktest.NewCA(t)
			var r *sinktest.Receiver
			u := ""
			if scheme == "syslog+tls" {
				r = sinktest.Listen(t, ca.Server, false)
				u = scheme + "://localhost:" + strings.Split(r.Addr(), ":")[1] + "?facility=local3&ca=" + url.QueryEscape(ca.File)
			} else {
				r = sinktest.Listen(t, nil, false)
				u = scheme + "://" + r.Addr() + "?facility=local3"
			}
			s := openNetURL(t, u)
			const n = 1000
			for i := range n {
				s.Write(testEvent(i))
			}
			s.Close()
			var got []uint64
			var perr error
			p := octetcounting.NewParser(syslog.WithListener(func(res *syslog.Result) {
				if res.Error != nil {
					perr = res.Error
					return
				}
				m := res.Message.(*rfc5424.SyslogMessage)
				var ev struct {
					Cookie uint64 `json:"sock_cookie"`
				}
				if err := json.Unmarshal([]byte(*m.Message), &ev); err != nil || *m.Facility != 19 {
					perr = fmt.Errorf("message %q facility %d: %v", *m.Message, *m.Facility, err)
				}
				got = append(got, ev.Cookie)
			}))
			p.Parse(bytes.NewReader(r.Bytes()))
			if perr != nil {
				t.Fatal(perr)
			}
			if len(got) != n || !inOrder(got) {
				t.Errorf("parsed %d messages (in order: %v), want %d", len(got), inOrder(got), n)
			}
		})
	}
}

// Over UDP, one message per datagram.
func TestSyslogUDP(t *testing.T) {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	s := openNetURL(t, "syslog+udp://"+pc.LocalAddr().String())
	const n = 100
	for i := range n {
		s.Write(testEvent(i))
		if i%10 == 9 {
			time.Sleep(time.Millisecond) // the receiver's buffer is not what is tested
		}
	}
	s.Close()
	parser := rfc5424.NewParser()
	buf := make([]byte, 65536)
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for i := range n {
		k, _, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		m, err := parser.Parse(buf[:k])
		if err != nil {
			t.Fatalf("datagram %d: %v: %q", i, err, buf[:k])
		}
		if mid := *m.(*rfc5424.SyslogMessage).MsgID; mid != testEvent(i).Kind.String() {
			t.Errorf("datagram %d: msgid %s, want %s", i, mid, testEvent(i).Kind)
		}
	}
}

func TestNetNoAllocation(t *testing.T) {
	r := sinktest.Listen(t, nil, false)
	s := openNetURL(t, "tcp://"+r.Addr())
	defer s.Close()
	e := testEvent(1)
	for range 10000 { // the queue's buffers reach their size
		s.Write(e)
	}
	if n := testing.AllocsPerRun(10000, func() { s.Write(e) }); n > 0.01 {
		t.Errorf("%v allocations per event, want none once the queue's buffers have grown", n)
	}
}

// recordURLs are one network sink of each record format; nothing listens
// on them, and nothing connects to them.
var recordURLs = []string{"tcp://127.0.0.1:9", "syslog+udp://127.0.0.1:9", "syslog+tcp://127.0.0.1:9"}

// Each record format (NDJSON, a syslog message, one framed by octet
// counting) encodes an event without allocating, once its buffers have
// grown, and the framing's length is the message's.
func TestRecordNoAllocation(t *testing.T) {
	for _, url := range recordURLs {
		spec, err := ParseURL(url)
		if err != nil {
			t.Fatal(err)
		}
		t.Run(spec.Scheme, func(t *testing.T) {
			format, e := recordFormat(spec), testEvent(1)
			b := format(nil, e)
			if spec.Syslog() && spec.Stream() {
				n, msg, ok := strings.Cut(string(b), " ")
				if !ok || n != strconv.Itoa(len(msg)) {
					t.Errorf("octet count %q for a message of %d bytes", n, len(msg))
				}
			}
			if n := testing.AllocsPerRun(1000, func() { b = format(b[:0], e) }); n != 0 {
				t.Errorf("%v allocations per record, want 0", n)
			}
		})
	}
}

// A connection that is reset while the kernel holds records the receiver
// has not acknowledged (ss -K aborts it, as a dead peer's RST would): the
// sink sends those again, from the first one not acknowledged, on a new
// connection. Every event arrives exactly once, in order, across the two
// connections, and the sink counts them all sent and none lost.
func TestNetResendsWhatWasNotAcknowledged(t *testing.T) {
	kerneltest.RequireRoot(t) // ss -K: CAP_NET_ADMIN
	r := sinktest.StallFirst(t)
	s := openNetURL(t, "tcp://"+r.Addr()+"?queue=64MiB")
	const n = 20000 // about 12MB: more than both socket buffers hold
	for i := range n {
		s.Write(testEvent(i))
	}
	for i := 0; ; i++ { // until the kernel holds megabytes not acknowledged
		s.mu.Lock()
		c := s.conn
		s.mu.Unlock()
		if c != nil {
			if q, _ := unsent(c); q > 1<<20 {
				break
			}
		}
		if i == 500 {
			t.Fatal("the sink's kernel never held a megabyte unacknowledged: the test proves nothing")
		}
		time.Sleep(10 * time.Millisecond)
	}
	_, port, _ := net.SplitHostPort(r.Addr())
	if out, err := exec.Command("ss", "-K", "dst", "127.0.0.1", "dport", "=", port).CombinedOutput(); err != nil {
		t.Fatalf("ss -K: %v: %s", err, out)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	conns := r.PerConn()
	if len(conns) != 2 {
		t.Fatalf("%d connections, want the aborted one and another", len(conns))
	}
	var got []uint64
	for _, c := range conns {
		// The aborted connection may end within a record: the sink sent
		// that record again, whole.
		if i := bytes.LastIndexByte(c, '\n'); i+1 < len(c) {
			c = c[:i+1]
		}
		got = append(got, cookies(t, c)...)
	}
	st := s.Stats()
	if len(got) != n || !inOrder(got) {
		t.Errorf("received %d events (in order, once: %v) over %d connections, want all %d", len(got), inOrder(got), len(conns), n)
	}
	if st.Sent != n || st.Lost() != 0 || st.Reconnects != 1 {
		t.Errorf("stats %+v: want %d sent, none lost, one reconnect", st, n)
	}
}

// downPort is a loopback address nothing listens on, for a receiver that
// comes up later.
func downPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func segments(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "seg-*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// With buffer_dir, an outage longer than the memory queue holds loses
// nothing: the events wait on disk, in order, and all arrive once the
// receiver is back; the disk buffer is empty after.
func TestNetDiskBuffer(t *testing.T) {
	addr, dir := downPort(t), t.TempDir()
	s := openNetURL(t, "tcp://"+addr+"?queue=64KiB&backoff_max=100ms&buffer_dir="+url.QueryEscape(dir))
	const n = 20000 // about 12MB, 200 times the memory queue
	for i := range n {
		s.Write(testEvent(i))
	}
	if st := s.Stats(); st.Lost() != 0 || st.Queued != n || len(segments(t, dir)) == 0 {
		t.Fatalf("while the receiver is down: %+v, %d segments: want all %d queued, on disk", st, len(segments(t, dir)), n)
	}
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	r := sinktest.Serve(t, ln, nil, false)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	got := cookies(t, r.Bytes())
	st := s.Stats()
	if len(got) != n || !inOrder(got) || st.Sent != n || st.Lost() != 0 || st.Queued != 0 {
		t.Errorf("received %d (in order, once: %v), stats %+v: want all %d", len(got), inOrder(got), st, n)
	}
	if left := segments(t, dir); len(left) != 0 {
		t.Errorf("segments left after everything was sent: %v", left)
	}
}

// What a run could not send before its drain deadline stays in buffer_dir,
// counted queued, not dropped; the next run sends it first, then its own
// events, in order.
func TestNetDiskBufferOutlastsRestart(t *testing.T) {
	addr, dir := downPort(t), t.TempDir()
	q := "?queue=64KiB&drain=100ms&backoff_max=50ms&buffer_dir=" + url.QueryEscape(dir)
	s := openNetURL(t, "tcp://"+addr+q)
	const n = 5000
	for i := range n {
		s.Write(testEvent(i))
	}
	s.Close()
	if st := s.Stats(); st.Lost() != 0 || st.Queued != n || st.Sent != 0 {
		t.Fatalf("first run: %+v, want all %d still queued, on disk", st, n)
	}
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	r := sinktest.Serve(t, ln, nil, false)
	s2 := openNetURL(t, "tcp://"+addr+strings.Replace(q, "drain=100ms", "drain=30s", 1))
	for i := n; i < n+100; i++ {
		s2.Write(testEvent(i))
	}
	s2.Close()
	got := cookies(t, r.Bytes())
	st := s2.Stats()
	if len(got) != n+100 || !inOrder(got) || st.Sent != n+100 || st.Lost() != 0 || st.Queued != 0 {
		t.Errorf("second run: received %d (in order, once: %v), stats %+v: want the first run's %d, then its own 100", len(got), inOrder(got), st, n)
	}
}

// An OTLP receiver that is down: every record the sink was handed is
// counted, dropped from its full queue or at the drain deadline.
func TestOTLPCountsWhatItCannotSend(t *testing.T) {
	spec, err := ParseURL("otlp+http://" + downPort(t) + "?queue=64KiB&drain=300ms&backoff_max=50ms")
	if err != nil {
		t.Fatal(err)
	}
	s, err := openOTLP(spec)
	if err != nil {
		t.Fatal(err)
	}
	const n = 100 // more than the queue's 32 records
	for i := range n {
		s.Write(testEvent(i))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	st := s.Stats()
	if st.Sent != 0 || st.Dropped[DropQueueFull] == 0 || st.Dropped[DropShutdown] == 0 || st.Lost() != n || st.Queued != 0 || st.LastError == nil {
		t.Errorf("stats %+v: want all %d dropped, queue_full and shutdown, and the error", st, n)
	}
}
