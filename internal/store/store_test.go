package store

import (
	"context"
	"database/sql"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/internal/event"
)

var t0 = time.Date(2026, 12, 1, 14, 5, 0, 0, time.UTC)

// clock is a settable clock for the writer.
type clock struct{ now time.Time }

func (c *clock) Now() time.Time { return c.now }

func testConfig(t *testing.T, c *clock) Config {
	cfg := DefaultConfig(filepath.Join(t.TempDir(), "history.db"))
	cfg.Now = c.Now
	return cfg
}

func open(t *testing.T, cfg Config) *Writer {
	t.Helper()
	w, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func reader(t *testing.T, path string) *Reader {
	t.Helper()
	r, err := OpenReader(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func comm(s string) (c event.Comm) {
	copy(c[:], s)
	return c
}

// tcp is an outbound TCP lifetime's event from lport to 10.0.0.1:443.
func tcp(kind event.Kind, cookie uint64, lport uint16, start, at time.Time, name string) event.Event {
	return event.Event{
		Kind: kind, Proto: event.ProtoTCP, Family: 4, Time: at, Start: start, Established: start.Add(time.Millisecond),
		PID: 100 + uint32(cookie), TID: 100 + uint32(cookie), UID: 1000, Comm: comm(name), CgroupID: 7, NetNS: 4026531840,
		PIDSource: event.PIDSourceConnect,
		Local:     netip.AddrPortFrom(netip.MustParseAddr("10.0.0.2"), lport),
		Remote:    netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), 443),
		Direction: event.DirectionOutbound, Ephemeral: true, Cookie: cookie,
	}
}

func write(t *testing.T, w *Writer, evs ...event.Event) {
	t.Helper()
	for i := range evs {
		if err := w.Write(&evs[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.commit(); err != nil {
		t.Fatal(err)
	}
}

// query returns the lifetimes q selects, as "comm/event" strings.
func query(t *testing.T, r *Reader, q Query) []string {
	t.Helper()
	var got []string
	if _, err := r.Lifetimes(context.Background(), &q, func(e *event.Event) error {
		got = append(got, e.Comm.String()+"/"+e.Kind.String())
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return got
}

// A row reads back as the event it was written from, in every field the
// encoders show.
func TestRoundTrip(t *testing.T) {
	c := &clock{t0}
	cfg := testConfig(t, c)
	w := open(t, cfg)
	closeEv := tcp(event.KindClose, 1, 40000, t0, t0.Add(time.Second), "curl")
	closeEv.Thread = comm("worker-1")
	closeEv.TxBytes, closeEv.RxBytes, closeEv.TxPackets, closeEv.RxPackets, closeEv.Retransmits = 10, 20, 3, 4, 1
	closeEv.ClosedBy, closeEv.TimeWait, closeEv.ListenerPID = event.ClosedByLocal, true, 55
	failed := tcp(event.KindConnectFailed, 2, 0, t0, t0.Add(2*time.Second), "curl")
	failed.Established = time.Time{}
	failed.Errno = unix.ECONNREFUSED
	failed.Local = netip.AddrPortFrom(netip.MustParseAddr("10.0.0.2"), 40001)
	udp := event.Event{
		Kind: event.KindClose, Proto: event.ProtoUDP, Family: 6, Time: t0.Add(3 * time.Second), PID: 9, TID: 9, Comm: comm("dig"),
		PIDSource: event.PIDSourceSocket, Local: netip.MustParseAddrPort("[fd00::2]:5353"), Remote: netip.MustParseAddrPort("[fd00::1]:53"),
		Direction: event.DirectionOutbound, Cookie: 3, Destinations: 2, Connected: true, PreExisting: true,
	}
	want := []event.Event{closeEv, failed, udp}
	write(t, w, want...)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	var got []event.Event
	if _, err := reader(t, cfg.Path).Lifetimes(context.Background(), &Query{}, func(e *event.Event) error {
		got = append(got, *e)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%d rows, want %d", len(got), len(want))
	}
	for i := range want {
		w, g := want[i], got[i]
		// Times come back in the local zone, at the same instant.
		if !g.Time.Equal(w.Time) || !g.Start.Equal(w.Start) || !g.Established.Equal(w.Established) {
			t.Errorf("row %d: times %v %v %v, want %v %v %v", i, g.Time, g.Start, g.Established, w.Time, w.Start, w.Established)
		}
		g.Time, g.Start, g.Established = w.Time, w.Start, w.Established
		if g != w {
			t.Errorf("row %d:\n got %+v\nwant %+v", i, g, w)
		}
	}
}

// An open row holds its port until its close replaces it; a close in
// TIME_WAIT holds it 60s more; at a moment, only the lifetimes covering it
// match.
func TestAtMoment(t *testing.T) {
	c := &clock{t0}
	cfg := testConfig(t, c)
	w := open(t, cfg)
	defer w.Close()
	r := reader(t, cfg.Path)
	at := func(d time.Duration) Query {
		return Query{Ports: []event.PortRange{{Lo: 40000, Hi: 40000}}, Since: t0.Add(d), Until: t0.Add(d)}
	}

	write(t, w, tcp(event.KindOpen, 1, 40000, t0, t0.Add(time.Millisecond), "first"))
	if got := query(t, r, at(time.Hour)); len(got) != 1 || got[0] != "first/open" {
		t.Errorf("while open, an hour later: %v, want first/open", got)
	}
	tw := tcp(event.KindClose, 1, 40000, t0, t0.Add(10*time.Second), "first")
	tw.TimeWait = true
	write(t, w, tw,
		// The port again, by another process, after TIME_WAIT.
		tcp(event.KindClose, 2, 40000, t0.Add(80*time.Second), t0.Add(90*time.Second), "second"))
	for _, tc := range []struct {
		at   time.Duration
		want []string
	}{
		{-time.Second, nil},
		{5 * time.Second, []string{"first/close"}},
		{69 * time.Second, []string{"first/close"}}, // in TIME_WAIT
		{75 * time.Second, nil},
		{85 * time.Second, []string{"second/close"}},
	} {
		if got := query(t, r, at(tc.at)); !equal(got, tc.want) {
			t.Errorf("at +%v: %v, want %v", tc.at, got, tc.want)
		}
	}

	// The kernel's release, once reported, replaces the provisional one.
	write(t, w, event.Event{Kind: event.KindReleased, Proto: event.ProtoTCP, Cookie: 1, Time: t0.Add(30 * time.Second)})
	if got := query(t, r, at(29*time.Second)); !equal(got, []string{"first/close"}) {
		t.Errorf("at +29s, released at +30s: %v", got)
	}
	if got := query(t, r, at(31*time.Second)); got != nil {
		t.Errorf("at +31s, released at +30s: %v, want none", got)
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// The filters select in SQL what trace's filters select in the kernel.
func TestFilters(t *testing.T) {
	c := &clock{t0}
	cfg := testConfig(t, c)
	w := open(t, cfg)
	defer w.Close()
	a := tcp(event.KindClose, 1, 40000, t0, t0.Add(time.Second), "a")
	b := tcp(event.KindClose, 2, 40001, t0, t0.Add(50*time.Millisecond), "b")
	b.Remote = netip.MustParseAddrPort("192.168.1.9:80")
	f := tcp(event.KindConnectFailed, 3, 40003, t0, t0.Add(2*time.Second), "c")
	f.Errno = unix.ECONNREFUSED
	f.Remote = netip.MustParseAddrPort("[2001:db8::1]:443")
	f.Family = 6
	write(t, w, a, b, f)
	r := reader(t, cfg.Path)
	for _, tc := range []struct {
		name string
		q    Query
		want []string
	}{
		{"all", Query{}, []string{"b/close", "a/close", "c/connect_failed"}},
		{"lport", Query{Filter: event.Filter{LocalPorts: []event.PortRange{{Lo: 40001, Hi: 40002}}}}, []string{"b/close"}},
		{"rport", Query{Filter: event.Filter{RemotePorts: []event.PortRange{{Lo: 80, Hi: 80}}}}, []string{"b/close"}},
		{"port either end", Query{Ports: []event.PortRange{{Lo: 443, Hi: 443}}}, []string{"a/close", "c/connect_failed"}},
		{"raddr v4 net", Query{Filter: event.Filter{RemoteNets: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}}, []string{"a/close"}},
		{"raddr v6 net", Query{Filter: event.Filter{RemoteNets: []netip.Prefix{netip.MustParsePrefix("2001:db8::/32")}}}, []string{"c/connect_failed"}},
		{"pid", Query{Filter: event.Filter{PID: 102}}, []string{"b/close"}},
		{"comm", Query{Filter: event.Filter{Comm: "a"}}, []string{"a/close"}},
		{"event", Query{Filter: event.Filter{Kinds: []event.Kind{event.KindConnectFailed}}}, []string{"c/connect_failed"}},
		{"reason", Query{Reasons: []string{"refused"}}, []string{"c/connect_failed"}},
		{"family", Query{Filter: event.Filter{Family: 6}}, []string{"c/connect_failed"}},
		{"min duration", Query{Filter: event.Filter{MinDuration: 500 * time.Millisecond, Kinds: []event.Kind{event.KindClose}}}, []string{"a/close"}},
		{"since", Query{Since: t0.Add(1500 * time.Millisecond)}, []string{"c/connect_failed"}},
		{"until", Query{Until: t0.Add(-time.Second)}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := query(t, r, tc.q); !equal(got, tc.want) {
				t.Errorf("%v, want %v", got, tc.want)
			}
		})
	}
}

func TestTop(t *testing.T) {
	c := &clock{t0}
	cfg := testConfig(t, c)
	w := open(t, cfg)
	defer w.Close()
	var evs []event.Event
	for i := range 10 {
		evs = append(evs, tcp(event.KindClose, uint64(i+1), uint16(40000+i), t0, t0.Add(time.Duration(i+1)*time.Millisecond), "churner"))
	}
	f := tcp(event.KindConnectFailed, 50, 0, t0, t0.Add(time.Second), "churner")
	f.Errno = unix.ECONNREFUSED
	evs = append(evs, f, tcp(event.KindClose, 60, 41000, t0, t0.Add(time.Second), "calm"))
	write(t, w, evs...)
	top, err := reader(t, cfg.Path).Top(context.Background(), &Query{}, "comm")
	if err != nil {
		t.Fatal(err)
	}
	want := []TopRow{
		{Key: "churner", Count: 11, Failed: 1, P50: 5 * time.Millisecond, P90: 9 * time.Millisecond, P99: 10 * time.Millisecond},
		{Key: "calm", Count: 1, P50: time.Second, P90: time.Second, P99: time.Second},
	}
	if len(top) != 2 || top[0] != want[0] || top[1] != want[1] {
		t.Errorf("top %+v, want %+v", top, want)
	}
}

// A lifetime the last run left open ends at its last write, unless this
// run finds its socket again.
func TestRestartEndsOpenRows(t *testing.T) {
	c := &clock{t0}
	cfg := testConfig(t, c)
	w := open(t, cfg)
	write(t, w, tcp(event.KindOpen, 1, 40000, t0, t0, "gone"), tcp(event.KindOpen, 2, 40001, t0, t0, "kept"),
		tcp(event.KindClose, 3, 40002, t0, t0.Add(time.Minute), "other"))
	w.Close()
	c.now = t0.Add(time.Hour)
	w = open(t, cfg)
	defer w.Close()
	again := tcp(event.KindOpen, 2, 40001, time.Time{}, t0.Add(time.Hour), "kept")
	again.PreExisting = true
	write(t, w, again)

	r := reader(t, cfg.Path)
	at := Query{Since: t0.Add(2 * time.Hour), Until: t0.Add(2 * time.Hour)}
	if got := query(t, r, at); !equal(got, []string{"kept/open"}) {
		t.Errorf("open after the restart: %v, want only kept/open", got)
	}
	at = Query{Since: t0.Add(30 * time.Second), Until: t0.Add(30 * time.Second)}
	if got := query(t, r, at); !equal(got, []string{"gone/open", "kept/open", "other/close"}) {
		t.Errorf("before the last write: %v", got)
	}
	var start sql.NullInt64
	if err := w.db.QueryRow("SELECT start_ns FROM lifetimes WHERE sock_cookie = 2").Scan(&start); err != nil || start.Int64 != t0.UnixNano() {
		t.Errorf("the found socket's row lost its start: %v %v", start, err)
	}
}

// Each lifetime ends as one row whichever batches its open and close fall
// in: an open and its close in one batch are written as the close alone,
// and a socket found again after a restart replaces the open row it had.
func TestOneRowPerLifetime(t *testing.T) {
	open1 := tcp(event.KindOpen, 1, 40000, t0, t0, "curl")
	close1 := tcp(event.KindClose, 1, 40000, t0, t0.Add(time.Second), "curl")
	found := open1
	found.PreExisting = true
	foundClose := close1
	foundClose.PreExisting = true
	tests := []struct {
		name    string
		batches [][]event.Event
		want    []string // the rows of cookie 1, oldest first
	}{
		{"open and close in one batch", [][]event.Event{{open1, close1}}, []string{"close"}},
		{"open and close in two batches", [][]event.Event{{open1}, {close1}}, []string{"close"}},
		{"open, still open", [][]event.Event{{open1}}, []string{"open"}},
		{"found again and closed in one batch", [][]event.Event{{open1}, {found, foundClose}}, []string{"close"}},
		{"close without its open", [][]event.Event{{close1}}, []string{"close"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := open(t, testConfig(t, &clock{t0}))
			defer w.Close()
			for _, b := range tt.batches {
				write(t, w, b...)
			}
			rows, err := w.db.Query("SELECT event FROM lifetimes WHERE sock_cookie = 1 ORDER BY id")
			if err != nil {
				t.Fatal(err)
			}
			defer rows.Close()
			var got []string
			for rows.Next() {
				var kind string
				if err := rows.Scan(&kind); err != nil {
					t.Fatal(err)
				}
				got = append(got, kind)
			}
			if !equal(got, tt.want) {
				t.Errorf("rows %v, want %v", got, tt.want)
			}
		})
	}
}

// Rows past the age are deleted, and counted.
func TestRetentionByAge(t *testing.T) {
	c := &clock{t0}
	cfg := testConfig(t, c)
	cfg.MaxAge = time.Hour
	w := open(t, cfg)
	defer w.Close()
	write(t, w, tcp(event.KindClose, 1, 40000, t0, t0, "old"), tcp(event.KindOpen, 2, 40001, t0, t0, "open"))
	c.now = t0.Add(2 * time.Hour)
	write(t, w, tcp(event.KindClose, 3, 40002, c.now, c.now, "new"))
	if got := query(t, reader(t, cfg.Path), Query{}); !equal(got, []string{"open/open", "new/close"}) {
		t.Errorf("after retention: %v, want the open row and the new one", got)
	}
	if s := w.Stats(); s.DeletedAge != 1 || s.Written != 3 || s.Batches != 2 {
		t.Errorf("stats %+v, want 1 deleted by age, 3 written, 2 batches", s)
	}
}

// With a tiny budget the database and its WAL stay under it while rows
// keep coming, and the oldest go.
func TestRetentionBySize(t *testing.T) {
	c := &clock{t0}
	cfg := testConfig(t, c)
	cfg.MaxSize = 1 << 20
	cfg.BatchSize = 256
	w := open(t, cfg)
	defer w.Close()
	r := reader(t, cfg.Path)
	var lastFirst int64
	for round := range 60 {
		evs := make([]event.Event, 256)
		for i := range evs {
			n := uint64(round*256 + i + 1)
			evs[i] = tcp(event.KindClose, n, uint16(n), t0, t0.Add(time.Duration(n)*time.Millisecond), "churn")
		}
		write(t, w, evs...)
		if size := fileSize(t, cfg.Path) + fileSize(t, cfg.Path+"-wal"); size > cfg.MaxSize {
			t.Fatalf("round %d: database and WAL are %d bytes, over the %d budget", round, size, cfg.MaxSize)
		}
		var first, last int64
		if err := r.db.QueryRow("SELECT min(sock_cookie), max(sock_cookie) FROM lifetimes").Scan(&first, &last); err != nil {
			t.Fatal(err)
		}
		if last != int64(round*256+256) {
			t.Fatalf("round %d: newest row %d, want %d", round, last, round*256+256)
		}
		if first < lastFirst {
			t.Fatalf("round %d: oldest row went back from %d to %d", round, lastFirst, first)
		}
		lastFirst = first
	}
	s := w.Stats()
	if s.DeletedSize == 0 || lastFirst == 1 {
		t.Errorf("nothing was deleted for size (stats %+v, oldest row %d): the budget was not reached, the test proves nothing", s, lastFirst)
	}
	if s.Bytes > cfg.MaxSize || s.Bytes == 0 {
		t.Errorf("stats say %d bytes, budget %d", s.Bytes, cfg.MaxSize)
	}
}

func fileSize(t *testing.T, path string) int64 {
	fi, err := os.Stat(path)
	if os.IsNotExist(err) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func TestOpenReaderErrors(t *testing.T) {
	dir := t.TempDir()
	notDB := filepath.Join(dir, "not.db")
	os.WriteFile(notDB, []byte("this is not a database, it is a text file long enough to have a header"), 0o644)
	empty := filepath.Join(dir, "empty.db")
	os.WriteFile(empty, nil, 0o644)
	for _, tc := range []struct{ name, path, want string }{
		{"missing", filepath.Join(dir, "none.db"), "no store at"},
		{"not a database", notDB, "not a database"},
		{"empty", empty, "not a portlife store"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := OpenReader(context.Background(), tc.path)
			if err == nil {
				r.Close()
				t.Fatalf("no error")
			}
			if !contains(err.Error(), tc.want) {
				t.Errorf("error %q, want one saying %q", err, tc.want)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "none.db")); err == nil {
		t.Errorf("reading a missing store created it")
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

func TestNetRange(t *testing.T) {
	for _, tc := range []struct{ net, in, out string }{
		{"10.0.0.0/8", "10.255.255.255", "11.0.0.0"},
		{"127.0.0.1/32", "127.0.0.1", "127.0.0.2"},
		{"::1/128", "::1", "::2"},
		{"fd00::/8", "fdff::1", "fe00::"},
	} {
		lo, hi := netRange(netip.MustParsePrefix(tc.net))
		in, out := addrKey(netip.MustParseAddr(tc.in)), addrKey(netip.MustParseAddr(tc.out))
		if string(in) < string(lo) || string(in) > string(hi) {
			t.Errorf("%s not in %s", tc.in, tc.net)
		}
		if string(out) >= string(lo) && string(out) <= string(hi) {
			t.Errorf("%s in %s", tc.out, tc.net)
		}
	}
}

// One writer per store: a second is refused while the first has it, and
// welcome once it closed it.
func TestOneWriter(t *testing.T) {
	c := &clock{t0}
	cfg := testConfig(t, c)
	w := open(t, cfg)
	if w2, err := Open(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "in use by another portlife") {
		if w2 != nil {
			w2.Close()
		}
		t.Fatalf("a second writer: %v, want it refused", err)
	}
	w.Close()
	open(t, cfg).Close()
}
