package main

import (
	"context"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/portlife/portlife/internal/event"
	"github.com/portlife/portlife/internal/sink"
	"github.com/portlife/portlife/internal/store"
)

func TestOctetCounter(t *testing.T) {
	frames := "5 hello3 abc0 11 hello world"
	tests := []struct {
		name   string
		chunks []string
		want   int
		bad    int64
	}{
		{"whole", []string{frames}, 4, 0},
		{"split in a length", []string{"1", "1 hello world"}, 1, 0},
		{"split after the space", []string{"5 ", "hello"}, 1, 0},
		{"split in a message", []string{"5 he", "llo3 a", "bc"}, 2, 0},
		{"message not finished", []string{"5 hell"}, 0, 0},
		{"not octet counting", []string{"<x> y"}, 0, 5},
		{"a space without a length", []string{" 5 hello"}, 1, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var o octetCounter
			n := 0
			for _, c := range tt.chunks {
				n += o.count([]byte(c))
			}
			if n != tt.want || o.bad != tt.bad {
				t.Errorf("counted %d messages, %d bad bytes; want %d, %d", n, o.bad, tt.want, tt.bad)
			}
		})
	}
	// Every split point of the whole stream counts the same.
	for i := range len(frames) + 1 {
		var o octetCounter
		if n := o.count([]byte(frames[:i])) + o.count([]byte(frames[i:])); n != 4 {
			t.Errorf("split at %d: %d messages, want 4", i, n)
		}
	}
}

func TestParsePortlifeStopped(t *testing.T) {
	stderr := `{"level":"info","msg":"tracing started"}
{"level":"info","msg":"tracing stopped","events":10,"lost":7,"consumers":[{"name":"store","delivered":9,"dropped":2,"failed":0},{"name":"tcp://127.0.0.1:1","delivered":10,"dropped":3,"failed":0}],"sinks":[{"name":"tcp://127.0.0.1:1","sent":5,"queued":0,"dropped":{"queue_full":1,"send_failed":0,"disk_full":0,"write_failed":0,"shutdown":1},"reconnects":0}],"store":{"rows_written":9,"batches":1,"rows_failed":1,"deleted_by_age":0,"deleted_by_size":0,"bytes":4096}}
`
	st := parsePortlifeStopped(strings.NewReader(stderr))
	if st == nil {
		t.Fatal("no tracing stopped found")
	}
	res := newResult(config{Name: "c"}, tcpSinkTracer, 1)
	sinkCounts(res, st, "tcp://127.0.0.1:1")
	if res.OutSent != 5 || res.OutDropped != 5 {
		t.Errorf("sink sent %v, dropped %v; want 5, 5 (its own 2 and its queue's 3)", res.OutSent, res.OutDropped)
	}
	res = newResult(config{Name: "c"}, tcpSinkTracer, 1)
	sinkCounts(res, st, "tcp://127.0.0.1:2")
	if res.OutSent.valid() || len(res.Notes) != 1 {
		t.Errorf("an unknown sink: sent %v, notes %q; want unknown, one note", res.OutSent, res.Notes)
	}
	if st.Store == nil || st.Store.RowsWritten != 9 || st.Store.RowsFailed != 1 || st.consumerDropped("store") != 2 {
		t.Errorf("store = %+v, queue dropped %d", st.Store, st.consumerDropped("store"))
	}
	if parsePortlifeStopped(strings.NewReader(`{"msg":"tracing started"}`)) != nil {
		t.Error("found a tracing stopped where there is none")
	}
}

// sinkURL is the --sink URL among an output's flags that is not stdout.
func sinkURL(t *testing.T, o output) string {
	t.Helper()
	f := o.flags()
	if len(f) != 4 || f[0] != "--sink" || f[1] != "stdout" || f[2] != "--sink" {
		t.Fatalf("flags %q: want --sink stdout --sink URL, so that stdout is still checked", f)
	}
	return f[3]
}

// deliver sends n events through the sink portlife would open for url, and
// returns what portlife's tracing stopped would say of it.
func deliver(t *testing.T, url string, n int) *portlifeStopped {
	t.Helper()
	spec, err := sink.ParseURL(url)
	if err != nil {
		t.Fatalf("portlife would refuse %q: %v", url, err)
	}
	sk, err := sink.Open(spec)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		e := lifetime(uint64(i + 1))
		if err := sk.Write(&e); err != nil {
			t.Fatal(err)
		}
	}
	sk.Flush()
	if err := sk.Close(); err != nil {
		t.Fatal(err)
	}
	s := sk.Stats()
	st := &portlifeStopped{Msg: "tracing stopped"}
	st.Sinks = append(st.Sinks, struct {
		Name    string            `json:"name"`
		Sent    uint64            `json:"sent"`
		Dropped map[string]uint64 `json:"dropped"`
	}{Name: s.Name, Sent: s.Sent, Dropped: map[string]uint64{"all": s.Lost()}})
	return st
}

func lifetime(cookie uint64) event.Event {
	at := time.Now()
	return event.Event{
		Kind: event.KindClose, Proto: event.ProtoTCP, Family: 4, Time: at, Start: at.Add(-time.Millisecond),
		PID: 4242, Local: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), uint16(30000+cookie)),
		Remote: netip.MustParseAddrPort("127.0.0.1:443"), Direction: event.DirectionOutbound, Cookie: cookie,
	}
}

// Each sink output, given to the real sink portlife opens for its flags,
// gets every record it was sent: the receivers count them whole, framing
// and all, and agree with the sink's own count.
func TestSinkOutputs(t *testing.T) {
	const n = 2000
	for _, name := range []string{fileSinkTracer, syslogSinkTracer, tcpSinkTracer} {
		t.Run(name, func(t *testing.T) {
			out, err := outputs[name](t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			defer out.close()
			st := deliver(t, sinkURL(t, out), n)
			res := newResult(config{Name: "c"}, name, 1)
			if err := out.collect(res, st); err != nil {
				t.Fatal(err)
			}
			res.Seconds = 1
			fillOutputRates(res)
			if res.OutRecords != n || res.OutSent != n || res.OutDropped != 0 || len(res.Notes) != 0 {
				t.Errorf("records %v, sent %v, dropped %v, notes %q; want %d, %d, 0, none",
					res.OutRecords, res.OutSent, res.OutDropped, res.Notes, n, n)
			}
			if !(res.OutMB > 0) || !(res.OutRecPerSec > 0) || !(res.OutMBPerSec > 0) {
				t.Errorf("MB %v, rec/s %v, MB/s %v; want each above 0", res.OutMB, res.OutRecPerSec, res.OutMBPerSec)
			}
			if name != fileSinkTracer && !res.OutSeconds.valid() {
				t.Error("a receiver's first-to-last byte time is unknown")
			}
		})
	}
}

// A receiver whose sink never closes its connection is closed after the
// wait, and says so.
func TestReceiverGivesUp(t *testing.T) {
	out, err := outputs[tcpSinkTracer](t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer out.close()
	r := out.(*receiverOutput).r
	spec, err := sink.ParseURL(sinkURL(t, out))
	if err != nil {
		t.Fatal(err)
	}
	sk, err := sink.Open(spec)
	if err != nil {
		t.Fatal(err)
	}
	e := lifetime(1)
	sk.Write(&e)
	deadline := time.Now().Add(10 * time.Second)
	for r.counts().records == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if r.finish(100 * time.Millisecond) {
		t.Error("finish says every connection ended while the sink's is open")
	}
	if c := r.counts(); c.records != 1 || c.conns != 1 {
		t.Errorf("records %d over %d connections; want 1 over 1", c.records, c.conns)
	}
	sk.Close()
}

// The store output counts the lifetimes a real store holds, and its bytes.
func TestStoreOutput(t *testing.T) {
	out, err := outputs[storeTracer](t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	f := out.flags()
	if len(f) != 2 || f[0] != "--store" {
		t.Fatalf("flags %q, want --store PATH", f)
	}
	w, err := store.Open(context.Background(), store.DefaultConfig(f[1]))
	if err != nil {
		t.Fatal(err)
	}
	const n = 300
	for i := range n {
		e := lifetime(uint64(i + 1))
		if err := w.Write(&e); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	st := parsePortlifeStopped(strings.NewReader(`{"msg":"tracing stopped","lost":0,` +
		`"consumers":[{"name":"store","delivered":` + strconv.Itoa(n+4) + `,"dropped":4}],` +
		`"store":{"rows_written":` + strconv.Itoa(n) + `,"rows_failed":1}}`))
	res := newResult(config{Name: "c"}, storeTracer, 1)
	if err := out.collect(res, st); err != nil {
		t.Fatal(err)
	}
	res.Seconds = 2
	fillOutputRates(res)
	if res.OutRecords != n || res.OutSent != n || res.OutDropped != 5 {
		t.Errorf("lifetimes %v, rows written %v, dropped %v; want %d, %d, 5", res.OutRecords, res.OutSent, res.OutDropped, n, n)
	}
	if res.OutRecPerSec != n/2 {
		t.Errorf("rows/s %v, want %d (rows written over the churn's seconds)", res.OutRecPerSec, n/2)
	}
	if want := float64(res.OutMB) * 1e6 / n; !(res.StoreBytesPerLifetime > 0) || float64(res.StoreBytesPerLifetime) != want {
		t.Errorf("bytes per lifetime %v, want the database's size over its lifetimes, %v", res.StoreBytesPerLifetime, want)
	}
}

func TestOutputTable(t *testing.T) {
	rs := []*runResult{newResult(config{Name: "c"}, "portlife", 1), newResult(config{Name: "c"}, storeTracer, 1)}
	rs[1].OutRecords, rs[1].StoreBytesPerLifetime = 10, 300
	var b strings.Builder
	printTable(&b, rs)
	_, outs, ok := strings.Cut(b.String(), "\noutputs:\n")
	if !ok {
		t.Fatalf("no outputs table:\n%s", b.String())
	}
	lines := strings.Split(strings.TrimSpace(outs), "\n")
	if len(lines) != 2 || !strings.Contains(lines[1], storeTracer) || !slices.Contains(strings.Fields(lines[1]), "300") {
		t.Errorf("outputs table has not one row for %s with 300 B/lifetime:\n%s", storeTracer, outs)
	}
	b.Reset()
	printTable(&b, rs[:1])
	if strings.Contains(b.String(), "outputs:") {
		t.Errorf("an outputs table without an output tracer:\n%s", b.String())
	}
}
