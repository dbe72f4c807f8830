package main

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	_ "modernc.org/sqlite" // the store's driver, to count its lifetimes
)

// Tracers that are portlife with one more output besides its JSON stdout: a
// sink or the store. Beside portlife in one interleaved run, their CPU per
// 100k connections is what that output costs, and the outputs table says
// what reached it.
const (
	fileSinkTracer   = "portlife-file-sink"
	syslogSinkTracer = "portlife-syslog-sink"
	tcpSinkTracer    = "portlife-tcp-sink"
	storeTracer      = "portlife-store"
)

// outputs opens each output tracer's output in a run's directory.
var outputs = map[string]func(dir string) (output, error){
	fileSinkTracer: openFileOutput,
	// syslog over TCP, not UDP: a loopback receiver that falls behind drops
	// datagrams in its socket buffer, which no one counts, so what arrived
	// would not say what the sink sent.
	syslogSinkTracer: func(string) (output, error) { return openReceiverOutput("syslog+tcp", &octetCounter{}) },
	tcpSinkTracer:    func(string) (output, error) { return openReceiverOutput("tcp", newlineCounter{}) },
	storeTracer:      openStoreOutput,
}

// output is one run's extra output: what portlife is told to send its
// events to, and, once portlife has exited, what arrived there.
type output interface {
	// flags are portlife's arguments for it. Sinks add --sink stdout, so
	// that stdout still carries the events completeness is checked on.
	flags() []string
	// collect runs once portlife has exited: it stops the receiver (after
	// it has read everything, or given up), and fills res's output
	// columns from what arrived and from portlife's `tracing stopped`.
	collect(res *runResult, st *portlifeStopped) error
	// close stops whatever the output runs; safe after collect, and more
	// than once.
	close()
}

// sinkCounts fills what portlife says of the sink named name: sent, and
// dropped by the sink (every reason) or by its stream queue.
func sinkCounts(res *runResult, st *portlifeStopped, name string) {
	if st == nil {
		res.note("no tracing stopped: the sink's counts are unknown")
		return
	}
	for _, s := range st.Sinks {
		if s.Name != name {
			continue
		}
		dropped := st.consumerDropped(name)
		for _, n := range s.Dropped {
			dropped += n
		}
		res.OutSent, res.OutDropped = metric(s.Sent), metric(dropped)
		return
	}
	res.note("tracing stopped names no sink %s", name)
}

// fileOutput is --sink file: a file in the run's directory, never rotated
// (a rotation would delete what the run wrote), synced as by default.
type fileOutput struct {
	path string
}

func openFileOutput(dir string) (output, error) {
	return &fileOutput{path: filepath.Join(dir, "events.json")}, nil
}

func (o *fileOutput) flags() []string {
	return []string{"--sink", "stdout", "--sink", "file:" + o.path + "?max_size=0"}
}

func (o *fileOutput) collect(res *runResult, st *portlifeStopped) error {
	sinkCounts(res, st, "file:"+o.path)
	f, err := os.Open(o.path)
	if err != nil {
		return fmt.Errorf("file sink: %w", err)
	}
	defer f.Close()
	var nl newlineCounter
	lines, size, err := countRecords(f, nl)
	if err != nil {
		return fmt.Errorf("file sink: %w", err)
	}
	res.OutRecords, res.OutMB = metric(lines), metric(float64(size)/1e6)
	if res.OutSent.valid() && lines != int64(res.OutSent) {
		res.note("the file holds %d lines, the sink counted %.0f sent", lines, float64(res.OutSent))
	}
	return nil
}

func (o *fileOutput) close() {}

// countRecords reads r to its end and counts its records and bytes.
func countRecords(r io.Reader, c recordCounter) (records, size int64, err error) {
	buf := make([]byte, 1<<20)
	for {
		n, err := r.Read(buf)
		records += int64(c.count(buf[:n]))
		size += int64(n)
		if errors.Is(err, io.EOF) {
			return records, size, nil
		}
		if err != nil {
			return records, size, err
		}
	}
}

// storeOutput is --store: a database in the run's directory.
type storeOutput struct {
	path string
}

func openStoreOutput(dir string) (output, error) {
	return &storeOutput{path: filepath.Join(dir, "x.db")}, nil
}

func (o *storeOutput) flags() []string { return []string{"--store", o.path} }

// collect reads what the store wrote (rows_written counts an open and the
// close that replaced it as two) and what its queue dropped, then the
// database: its lifetimes (rows) and its size, WAL included, so bytes per
// lifetime is what the history costs on disk.
func (o *storeOutput) collect(res *runResult, st *portlifeStopped) error {
	switch {
	case st == nil:
		res.note("no tracing stopped: the store's counts are unknown")
	case st.Store == nil:
		res.note("tracing stopped has no store counts")
	default:
		res.OutSent = metric(st.Store.RowsWritten)
		res.OutDropped = metric(st.consumerDropped("store") + st.Store.RowsFailed)
	}
	var size int64
	for _, p := range []string{o.path, o.path + "-wal"} {
		if fi, err := os.Stat(p); err == nil {
			size += fi.Size()
		} else if p == o.path {
			return fmt.Errorf("store: %w", err)
		}
	}
	lifetimes, err := countLifetimes(o.path)
	if err != nil {
		return err
	}
	res.OutRecords, res.OutMB = metric(lifetimes), metric(float64(size)/1e6)
	res.StoreBytesPerLifetime = ratio(float64(size), float64(lifetimes))
	return nil
}

func (o *storeOutput) close() {}

// countLifetimes counts the store's rows, read-only, after portlife closed it.
func countLifetimes(path string) (int64, error) {
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	if err != nil {
		return 0, fmt.Errorf("open the store: %w", err)
	}
	defer db.Close()
	var n int64
	if err := db.QueryRowContext(context.Background(), "SELECT count(*) FROM lifetimes").Scan(&n); err != nil {
		return 0, fmt.Errorf("count the store's lifetimes: %w", err)
	}
	return n, nil
}

// receiverOutput is a network sink to a receiver the runner runs on
// loopback for the run.
type receiverOutput struct {
	scheme string
	r      *receiver
}

func openReceiverOutput(scheme string, c recordCounter) (output, error) {
	r, err := listenReceiver(c)
	if err != nil {
		return nil, fmt.Errorf("%s receiver: %w", scheme, err)
	}
	return &receiverOutput{scheme: scheme, r: r}, nil
}

func (o *receiverOutput) url() string { return o.scheme + "://" + o.r.addr() }

func (o *receiverOutput) flags() []string {
	return []string{"--sink", "stdout", "--sink", o.url()}
}

// collect waits for the receiver to read what portlife sent before it
// exited (its connection closes then), up to 10 s, and reports the
// receiver's throughput from its first byte to its last.
func (o *receiverOutput) collect(res *runResult, st *portlifeStopped) error {
	sinkCounts(res, st, o.url())
	if !o.r.finish(10 * time.Second) {
		res.note("the %s receiver's connection was still open 10 s after portlife exited; closed it", o.scheme)
	}
	c := o.r.counts()
	res.OutRecords, res.OutMB = metric(c.records), metric(float64(c.bytes)/1e6)
	if c.records > 0 {
		res.OutSeconds = metric(c.last.Sub(c.first).Seconds())
	}
	if c.conns > 1 {
		res.note("the sink connected to the %s receiver %d times", o.scheme, c.conns)
	}
	if c.badBytes > 0 {
		res.note("the %s receiver read %d bytes outside any record", o.scheme, c.badBytes)
	}
	if res.OutSent.valid() && c.records != int64(res.OutSent) {
		res.note("the %s receiver got %d records, the sink counted %.0f sent", o.scheme, c.records, float64(res.OutSent))
	}
	return nil
}

func (o *receiverOutput) close() { o.r.close() }

// recordCounter counts the records that end in p, given every byte before
// it; one per connection.
type recordCounter interface {
	count(p []byte) int
}

// newlineCounter counts NDJSON records: each ends with a newline.
type newlineCounter struct{}

func (newlineCounter) count(p []byte) int { return bytes.Count(p, []byte{'\n'}) }

// octetCounter counts syslog messages framed by octet counting (RFC 6587
// 3.4.1): a decimal length, a space, that many bytes. A frame may be split
// across reads anywhere.
type octetCounter struct {
	length int   // the length read so far, before its space
	digits bool  // length has a digit
	rest   int   // bytes of the current message still to come
	bad    int64 // bytes that are neither a length nor a message
}

func (o *octetCounter) count(p []byte) int {
	n := 0
	for len(p) > 0 {
		if o.rest > 0 {
			k := min(o.rest, len(p))
			o.rest -= k
			p = p[k:]
			if o.rest == 0 {
				n++
			}
			continue
		}
		switch c := p[0]; {
		case c >= '0' && c <= '9':
			o.length, o.digits = o.length*10+int(c-'0'), true
		case c == ' ' && o.digits:
			o.rest, o.length, o.digits = o.length, 0, false
			if o.rest == 0 {
				n++ // an empty message
			}
		default:
			o.bad++
			o.length, o.digits = 0, false
		}
		p = p[1:]
	}
	return n
}

// receiver accepts connections on 127.0.0.1 and reads them as fast as it
// can, counting records and bytes, and when the first and last bytes came.
type receiver struct {
	ln      net.Listener
	counter recordCounter // a copy for each connection
	accept  sync.WaitGroup
	readers sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	c      receiverCounts
	closed bool
}

type receiverCounts struct {
	records, bytes, badBytes int64
	conns                    int
	first, last              time.Time
}

func listenReceiver(c recordCounter) (*receiver, error) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &receiver{ln: ln, counter: c, conns: map[net.Conn]struct{}{}}
	r.accept.Add(1)
	go r.serve()
	return r, nil
}

func (r *receiver) addr() string { return r.ln.Addr().String() }

func (r *receiver) serve() {
	defer r.accept.Done()
	for {
		conn, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			conn.Close()
			return
		}
		r.conns[conn] = struct{}{}
		r.c.conns++
		r.readers.Add(1)
		r.mu.Unlock()
		go r.read(conn)
	}
}

// newCounter gives each connection a counter of its own: a frame does not
// continue on another connection.
func (r *receiver) newCounter() recordCounter {
	if _, ok := r.counter.(*octetCounter); ok {
		return &octetCounter{}
	}
	return r.counter
}

func (r *receiver) read(conn net.Conn) {
	defer r.readers.Done()
	defer conn.Close()
	c := r.newCounter()
	buf := make([]byte, 256<<10)
	for {
		n, err := conn.Read(buf)
		if n > 0 {
			records := c.count(buf[:n])
			now := time.Now()
			r.mu.Lock()
			if r.c.first.IsZero() {
				r.c.first = now
			}
			r.c.last = now
			r.c.records += int64(records)
			r.c.bytes += int64(n)
			r.mu.Unlock()
		}
		if err != nil {
			break
		}
	}
	r.mu.Lock()
	delete(r.conns, conn)
	if oc, ok := c.(*octetCounter); ok {
		r.c.badBytes += oc.bad
	}
	r.mu.Unlock()
}

// finish stops accepting and waits up to timeout for every connection to
// end (the sender closed it); then it closes what is left. It says whether
// every connection ended on its own.
func (r *receiver) finish(timeout time.Duration) bool {
	r.stopAccepting()
	done := make(chan struct{})
	go func() {
		r.readers.Wait()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-time.After(timeout):
		r.close()
		return false
	}
}

func (r *receiver) stopAccepting() {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.ln.Close()
	r.accept.Wait()
}

// close stops accepting, closes every connection and waits for its reader.
func (r *receiver) close() {
	r.stopAccepting()
	r.mu.Lock()
	for conn := range r.conns {
		conn.Close()
	}
	r.mu.Unlock()
	r.readers.Wait()
}

func (r *receiver) counts() receiverCounts {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.c
}

// portlifeStopped is what the benchmark reads from portlife's last
// `tracing stopped` line (zap JSON): its losses, and what each sink and
// the store did.
type portlifeStopped struct {
	Msg       string       `json:"msg"`
	Lost      *json.Number `json:"lost"`
	Consumers []struct {
		Name    string `json:"name"`
		Dropped uint64 `json:"dropped"`
	} `json:"consumers"`
	Sinks []struct {
		Name    string            `json:"name"`
		Sent    uint64            `json:"sent"`
		Dropped map[string]uint64 `json:"dropped"`
	} `json:"sinks"`
	Store *struct {
		RowsWritten uint64 `json:"rows_written"`
		RowsFailed  uint64 `json:"rows_failed"`
	} `json:"store"`
}

// consumerDropped is what the stream queue of the consumer named name
// dropped.
func (s *portlifeStopped) consumerDropped(name string) uint64 {
	for _, c := range s.Consumers {
		if c.Name == name {
			return c.Dropped
		}
	}
	return 0
}

// parsePortlifeStopped finds the last `tracing stopped` line; nil if there
// is none.
func parsePortlifeStopped(r io.Reader) *portlifeStopped {
	var last *portlifeStopped
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if !bytes.Contains(line, []byte("tracing stopped")) {
			continue
		}
		var st portlifeStopped
		if json.Unmarshal(line, &st) != nil || st.Msg != "tracing stopped" {
			continue
		}
		last = &st
	}
	return last
}
