package ports

import (
	"net/netip"
	"slices"
	"testing"
	"time"
	"unsafe"

	"github.com/portlife/portlife/internal/event"
)

var t0 = time.Date(2026, 12, 1, 18, 0, 0, 0, time.UTC)

// harness is an Accountant with a fake clock and sysctls, keeping what it
// publishes.
type harness struct {
	a         *Accountant
	now       time.Time
	published []event.Event
	cookie    uint64
}

func newHarness(s Sysctls, cfg Config) *harness {
	h := &harness{now: t0}
	cfg.Now = func() time.Time { return h.now }
	cfg.Sysctls = func(uint32, ...uint32) (Sysctls, error) { return s, nil }
	cfg.Publish = func(e *event.Event) error {
		h.published = append(h.published, *e)
		return nil
	}
	h.a = New(cfg)
	return h
}

var (
	lo    = netip.MustParseAddr("127.0.0.1")
	local = netip.MustParseAddr("10.0.0.1")
	dstA  = netip.MustParseAddrPort("10.0.0.2:443")
	dstB  = netip.MustParseAddrPort("10.0.0.3:443")
)

// open makes a new outbound TCP socket from laddr to dst, on the next port.
func (h *harness) open(laddr netip.Addr, dst netip.AddrPort, bbc bool) uint64 {
	h.cookie++
	e := event.Event{
		Kind: event.KindOpen, Proto: event.ProtoTCP, Family: 4, Time: h.now, Start: h.now,
		PID: 100, NetNS: 1, Direction: event.DirectionOutbound, Cookie: h.cookie,
		Local: netip.AddrPortFrom(laddr, port(h.cookie)), Remote: dst, BindBeforeConnect: bbc,
	}
	h.a.Write(&e)
	return h.cookie
}

// port is the local port of socket cookie, in 40001-40010 (tenPorts).
func port(cookie uint64) uint16 { return uint16(40001 + (cookie-1)%10) }

func (h *harness) close(cookie uint64, laddr netip.Addr, dst netip.AddrPort, timeWait bool) {
	e := event.Event{
		Kind: event.KindClose, Proto: event.ProtoTCP, Family: 4, Time: h.now, PID: 100, NetNS: 1,
		Direction: event.DirectionOutbound, Cookie: cookie, TimeWait: timeWait,
		Local: netip.AddrPortFrom(laddr, port(cookie)), Remote: dst,
	}
	h.a.Write(&e)
}

func (h *harness) key(mech event.Mechanism, dst netip.AddrPort) *Report {
	for _, r := range h.a.Snapshot() {
		if r.Mechanism == mech && (mech != event.MechanismPerDestination || r.Remote == dst) {
			return &r
		}
	}
	return nil
}

func tenPorts(reuse int) Sysctls {
	s := DefaultSysctls
	s.Lo, s.Hi, s.TWReuse = 40001, 40010, reuse
	return s
}

func TestCapacity(t *testing.T) {
	tests := []struct {
		name           string
		lo, hi         uint16
		reserved       string
		connect, bind_ int
	}{
		{"even", 40000, 40099, "", 100, 100},
		{"odd: connect rounds down to even", 40000, 40100, "", 100, 101},
		{"defaults", 32768, 60999, "", 28232, 28232},
		{"reserved inside and outside", 40000, 40099, "39990-40009,40050,50000", 89, 89},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := Sysctls{Lo: tt.lo, Hi: tt.hi, Reserved: parseSpans(tt.reserved)}
			if got := s.connectCapacity(); got != tt.connect {
				t.Errorf("connect capacity %d, want %d", got, tt.connect)
			}
			if got := s.poolCapacity(); got != tt.bind_ {
				t.Errorf("pool capacity %d, want %d", got, tt.bind_)
			}
		})
	}
}

func TestPressureCrossingsAndHysteresis(t *testing.T) {
	h := newHarness(tenPorts(0), Config{})
	var cookies []uint64
	for range 10 {
		cookies = append(cookies, h.open(local, dstA, false))
	}
	// Down to 5 (50%: still in the first level), 4 (40%: under 45%).
	for _, c := range cookies[5:] {
		h.close(c, local, dstA, false)
	}
	h.close(cookies[4], local, dstA, false)
	// Back up to 5: the 50% crossing is said again.
	h.open(local, dstA, false)

	type crossing struct {
		threshold float64
		rising    bool
		used      int
	}
	want := []crossing{{0.5, true, 5}, {0.8, true, 8}, {0.95, true, 10}, {1, true, 10}, {0.5, false, 4}, {0.5, true, 5}}
	if len(h.published) != len(want) {
		for _, e := range h.published {
			t.Logf("%+v", *e.Pressure)
		}
		t.Fatalf("%d pressure events, want %d", len(h.published), len(want))
	}
	for i, w := range want {
		p := h.published[i].Pressure
		if p.Threshold != w.threshold || p.Rising != w.rising || p.Used != w.used || p.Capacity != 10 {
			t.Errorf("event %d: threshold %v rising %v used %d/%d; want %+v", i, p.Threshold, p.Rising, p.Used, p.Capacity, w)
		}
		if e := h.published[i]; e.Remote != dstA || e.Local.Addr() != local || e.PID != 100 || p.Mechanism != event.MechanismPerDestination {
			t.Errorf("event %d: key %v -> %v pid %d %v", i, e.Local, e.Remote, e.PID, p.Mechanism)
		}
	}
}

func TestTimeWait(t *testing.T) {
	tests := []struct {
		name     string
		reuse    int
		laddr    netip.Addr
		dst      netip.AddrPort
		released bool          // a released event at 10 s
		at       time.Duration // when U is read, after the close
		want     int
	}{
		{"counts while not reusable", 0, local, dstA, false, 59 * time.Second, 1},
		{"ends at 60 s without a released event", 0, local, dstA, false, 60 * time.Second, 0},
		{"ends when released", 0, local, dstA, true, 11 * time.Second, 0},
		{"reuse 2 off loopback counts", 2, local, dstA, false, 30 * time.Second, 1},
		{"reuse 2 on loopback, under the delay", 2, lo, netip.AddrPortFrom(lo, 5000), false, 500 * time.Millisecond, 1},
		{"reuse 2 on loopback, past the delay", 2, lo, netip.AddrPortFrom(lo, 5000), false, 2 * time.Second, 0},
		{"reuse 1 anywhere, past the delay", 1, local, dstA, false, 2 * time.Second, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(tenPorts(tt.reuse), Config{})
			c := h.open(tt.laddr, tt.dst, false)
			h.close(c, tt.laddr, tt.dst, true)
			if tt.released {
				h.now = t0.Add(10 * time.Second)
				h.a.Write(&event.Event{Kind: event.KindReleased, Cookie: c, Time: h.now, NetNS: 1})
			}
			h.now = t0.Add(tt.at)
			h.a.Flush()
			got := 0
			if r := h.key(event.MechanismPerDestination, tt.dst); r != nil {
				got = r.Used
			}
			if got != tt.want {
				t.Errorf("U = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestBindBeforeConnectTakesFromEveryDestination(t *testing.T) {
	h := newHarness(tenPorts(0), Config{})
	for range 6 {
		h.open(local, dstA, true)
	}
	h.open(local, dstB, false)
	b := h.key(event.MechanismPerDestination, dstB)
	if b == nil || b.Used != 1 || b.Capacity != 4 {
		t.Fatalf("the other destination: %+v; want U 1 of C 10-6 bound", b)
	}
	if a := h.key(event.MechanismPerDestination, dstA); a != nil {
		t.Errorf("bound sockets counted per destination too: %+v", a)
	}
	pool := h.key(event.MechanismBindPool, netip.AddrPort{})
	if pool == nil || pool.Used != 7 || pool.Capacity != 10 || pool.Top[0].BindBeforeConnect != 6 {
		t.Fatalf("bind pool: %+v; want 7 of 10, 6 bound before connect", pool)
	}
}

func TestKeysBounded(t *testing.T) {
	h := newHarness(tenPorts(0), Config{MaxKeys: 2})
	// Each destination makes a per_destination key, and the pool is one
	// more: the third key is left out, since both others matter more.
	for range 6 {
		h.open(local, dstA, false)
	}
	h.open(local, dstB, false)
	if st := h.a.Stats(); st.KeysLeftOut != 1 {
		t.Fatalf("%d keys left out, want 1 (the least pressed made room or was refused)", st.KeysLeftOut)
	}
	if r := h.key(event.MechanismPerDestination, dstA); r == nil || r.Used != 6 {
		t.Errorf("the most pressed key was not kept: %+v", r)
	}
}

func TestExhaustion(t *testing.T) {
	tests := []struct {
		name     string
		used, c  int
		rate     float64
		hold     time.Duration
		expiries []time.Duration
		want     time.Duration
	}{
		{"exhausted", 10, 10, 5, 0, nil, 0},
		{"idle", 5, 10, 0, 0, nil, -1},
		{"linear, nothing released yet", 50, 100, 20, 0, nil, 2500 * time.Millisecond},
		{"expiries first free ports", 8, 10, 1, 0, []time.Duration{time.Second, 2 * time.Second}, 4 * time.Second},
		{"steady state under C", 50, 100, 1, 61 * time.Second, nil, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ex []time.Time
			for _, d := range tt.expiries {
				ex = append(ex, t0.Add(d))
			}
			got := exhaustion(tt.used, tt.c, tt.rate, tt.hold, t0, ex)
			if d := got - tt.want; d < -time.Millisecond || d > time.Millisecond {
				t.Errorf("exhaustion in %v, want %v", got, tt.want)
			}
		})
	}
}

func TestParseSysctls(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"ip_local_port_range": "40000\t40099\n", "ip_local_reserved_ports": "40010-40019,40050\n",
		"tcp_tw_reuse": "0\n", "tcp_tw_reuse_delay": "2000\n", "tcp_timestamps": "1\n",
	}
	for name, v := range files {
		if err := writeFile(dir+"/"+name, v); err != nil {
			t.Fatal(err)
		}
	}
	s, err := parseSysctls(dir)
	if err != nil {
		t.Fatal(err)
	}
	if s.Lo != 40000 || s.Hi != 40099 || s.TWReuse != 0 || s.TWReuseDelay != 2*time.Second || !s.Timestamps || s.reservedInRange() != 11 {
		t.Errorf("parsed %+v", s)
	}
	if s.InRange(40010) || !s.InRange(40020) || s.InRange(39999) {
		t.Errorf("InRange wrong for reserved or out-of-range ports: %+v", s)
	}
}

func TestHysteresis(t *testing.T) {
	s := DefaultSysctls
	s.Lo, s.Hi = 40001, 40100
	h := newHarness(s, Config{})
	for range 50 {
		h.open(local, dstA, false)
	}
	// 49%, 50%, 49%, 50%: within 5 points under 50%, nothing more is said.
	for range 2 {
		h.close(h.cookie, local, dstA, false)
		h.open(local, dstA, false)
	}
	if len(h.published) != 1 || h.published[0].Pressure.Threshold != 0.5 {
		t.Fatalf("%d pressure events while hovering at 50%%, want the first crossing alone", len(h.published))
	}
}

// The accountant runs once per event: a connection that opens and closes on
// a key it knows costs no allocation.
func TestChurnAllocatesNothing(t *testing.T) {
	h := newHarness(tenPorts(0), Config{})
	for range 3 {
		h.close(h.open(local, dstA, false), local, dstA, false)
	}
	allocs := testing.AllocsPerRun(1000, func() {
		h.close(h.open(local, dstA, false), local, dstA, false)
	})
	if allocs != 0 {
		t.Errorf("%v allocations per open and close, want 0", allocs)
	}
}

// A map stores values of up to 128 bytes in place; a larger sock would cost
// an allocation per socket.
func TestSockFitsInMap(t *testing.T) {
	if n := unsafe.Sizeof(sock{}); n > 128 {
		t.Errorf("sock is %d bytes, want at most 128", n)
	}
}

func TestUDPCountsPerLocalAddress(t *testing.T) {
	h := newHarness(tenPorts(0), Config{})
	udp := func(laddr netip.Addr, p uint16, dst netip.AddrPort, dir event.Direction) {
		h.cookie++
		h.a.Write(&event.Event{
			Kind: event.KindOpen, Proto: event.ProtoUDP, Family: 4, Time: h.now, PID: 100, NetNS: 1,
			Direction: dir, Cookie: h.cookie, Local: netip.AddrPortFrom(laddr, p), Remote: dst,
		})
	}
	// Three destinations from one address, and a server bound inside the
	// range: one key, four ports. Another address is a key of its own.
	udp(local, 40001, dstA, event.DirectionOutbound)
	udp(local, 40002, dstB, event.DirectionOutbound)
	udp(local, 40003, netip.MustParseAddrPort("10.0.0.4:53"), event.DirectionOutbound)
	udp(local, 40004, dstA, event.DirectionInbound)
	udp(lo, 40005, dstA, event.DirectionOutbound)
	udp(local, 5353, dstA, event.DirectionInbound) // outside the range
	got := map[netip.Addr]int{}
	for _, r := range h.a.Snapshot() {
		if r.Mechanism != event.MechanismUDP || r.Capacity != 10 {
			t.Errorf("unexpected key %+v", r)
		}
		got[r.Local] = r.Used
	}
	if len(got) != 2 || got[local] != 4 || got[lo] != 1 {
		t.Errorf("UDP keys %v, want %v: 4, %v: 1", got, local, lo)
	}
}

func TestReconcile(t *testing.T) {
	var dump []Existing
	h := newHarness(tenPorts(0), Config{Dump: func(map[uint32]string, bool) ([]Existing, map[uint32]bool, error) {
		return append([]Existing(nil), dump...), map[uint32]bool{1: true}, nil
	}})
	gone := h.open(local, dstA, false)
	tw := h.open(local, dstA, false)
	h.close(tw, local, dstA, true)
	h.now = t0.Add(5 * time.Second)
	// The kernel: the first socket is gone (its close was not seen), the
	// TIME_WAIT ends 3 s later than 60 s after its close (a retransmitted
	// FIN), and a socket whose open was not seen holds a port.
	dump = []Existing{
		{NetNS: 1, Proto: event.ProtoTCP, Family: 4, State: tcpTimeWait, Cookie: tw, Expires: 58 * time.Second,
			Local: netip.AddrPortFrom(local, port(tw)), Remote: dstA},
		{NetNS: 1, Proto: event.ProtoTCP, Family: 4, State: tcpEstablished, Cookie: 99,
			Local: netip.AddrPortFrom(local, 40009), Remote: dstA},
	}
	if err := h.a.Reconcile(); err != nil {
		t.Fatal(err)
	}
	st := h.a.Stats()
	if st.ReconciledGone != 1 || st.ReconciledFound != 1 {
		t.Errorf("reconciled: %d gone, %d found; want 1 and 1", st.ReconciledGone, st.ReconciledFound)
	}
	if h.a.sockets.has(gone) {
		t.Error("the socket the kernel no longer has is still counted")
	}
	for _, c := range []struct {
		at   time.Duration
		want int
	}{{5 * time.Second, 2}, {61 * time.Second, 2}, {64 * time.Second, 1}} {
		h.now = t0.Add(c.at)
		h.a.Flush()
		if r := h.key(event.MechanismPerDestination, dstA); r == nil || r.Used != c.want {
			t.Errorf("at %v: %+v, want U %d", c.at, r, c.want)
		}
	}
}

func TestDeadlineQueueKeepsOrder(t *testing.T) {
	tests := []struct {
		name string
		at   []time.Duration // of each deadline, cookie i for the i-th
		want []uint64        // cookies in the order they come due
	}{
		{"in order", []time.Duration{1 * time.Second, 2 * time.Second, 2 * time.Second, 3 * time.Second}, []uint64{0, 1, 2, 3}},
		{"out of order", []time.Duration{1 * time.Second, 3 * time.Second, 5 * time.Second, 2 * time.Second, 4 * time.Second, 0, 6 * time.Second}, []uint64{5, 0, 3, 1, 4, 2, 6}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var q deadlineQueue
			for i, at := range tt.at {
				q.push(deadline{uint64(i), t0.Add(at)})
			}
			var got []uint64
			for d, ok := q.due(t0.Add(time.Hour)); ok; d, ok = q.due(t0.Add(time.Hour)) {
				q.pop()
				got = append(got, d.cookie)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("came due %v, want %v", got, tt.want)
			}
		})
	}
}

// An early deadline finds its place even where the ring wraps around.
func TestDeadlineQueueInsertsAcrossTheRingsEnd(t *testing.T) {
	var q deadlineQueue
	sec := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Second) }
	for i := range 60 {
		q.push(deadline{uint64(i), sec(i)})
	}
	for range 50 {
		q.pop()
	}
	for i := 60; i < 80; i++ { // 30 held, in a ring of 64 that wraps after 63
		q.push(deadline{uint64(i), sec(i)})
	}
	q.push(deadline{1000, sec(55).Add(time.Millisecond)})
	var got []uint64
	for d, ok := q.due(sec(100)); ok; d, ok = q.due(sec(100)) {
		q.pop()
		got = append(got, d.cookie)
	}
	var want []uint64
	for i := 50; i < 80; i++ {
		want = append(want, uint64(i))
		if i == 55 {
			want = append(want, 1000)
		}
	}
	if len(q.buf) != 64 || !slices.Equal(got, want) {
		t.Errorf("ring of %d came due %v, want %v", len(q.buf), got, want)
	}
}

// A steady churn, as many deadlines pushed as come due, reuses the queue's
// array: it neither grows nor allocates once it holds a window's worth.
func TestDeadlineQueueSteadyStateReusesItsArray(t *testing.T) {
	var q deadlineQueue
	const window = 1000
	next := 0
	push := func() {
		q.push(deadline{uint64(next), t0.Add(time.Duration(next) * time.Millisecond)})
		next++
	}
	for range window {
		push()
	}
	drain := func() {
		now := t0.Add(time.Duration(next-window) * time.Millisecond)
		for _, ok := q.due(now); ok; _, ok = q.due(now) {
			q.pop()
		}
	}
	for range 10 * window { // warm up to the array's steady size
		drain()
		push()
	}
	c := len(q.buf)
	if allocs := testing.AllocsPerRun(10*window, func() { drain(); push() }); allocs != 0 {
		t.Errorf("%v allocations per deadline, want 0", allocs)
	}
	if len(q.buf) != c || q.len() > window+1 {
		t.Errorf("ring grew from %d to %d, holding %d", c, len(q.buf), q.len())
	}
}

// Sockets bound before connect() shrink every destination's capacity: a
// destination whose own count did not move is reported at the next Flush.
func TestBoundPortsPressOtherDestinations(t *testing.T) {
	h := newHarness(tenPorts(0), Config{})
	for range 4 {
		h.open(local, dstB, false) // 40%
	}
	for range 4 {
		h.open(local, dstA, true) // C of dstB: 10 - 4 = 6; 4/6 = 67%
	}
	h.a.Flush()
	var got []float64
	for _, e := range h.published {
		if e.Pressure.Mechanism == event.MechanismPerDestination && e.Remote == dstB {
			got = append(got, e.Pressure.Threshold)
		}
	}
	if len(got) != 1 || got[0] != 0.5 {
		t.Errorf("dstB crossed %v, want [0.5]", got)
	}
}

// connect() picks a port per destination, so sockets to two destinations
// may share one; a pool counts that port once in U, and in TIME_WAIT only
// once every socket holding it is: before, it is not free when they end.
func TestPoolTimeWaitCountsPorts(t *testing.T) {
	h := newHarness(tenPorts(0), Config{})
	first := h.open(local, dstA, false) // port 40001
	for range 9 {
		h.open(local, dstA, false)
	}
	shared := h.open(local, dstB, false) // port 40001 again, another destination
	if port(first) != port(shared) {
		t.Fatalf("ports %d and %d, want one shared", port(first), port(shared))
	}
	for _, step := range []struct {
		close    uint64
		dst      netip.AddrPort
		timeWait int
	}{
		{first, dstA, 0},  // the port is still held by an open socket
		{shared, dstB, 1}, // now by two TIME_WAITs: one port
	} {
		h.close(step.close, local, step.dst, true)
		pool := h.key(event.MechanismBindPool, netip.AddrPort{})
		if pool == nil || pool.Used != 10 || pool.TimeWait != step.timeWait {
			t.Errorf("after closing socket %d: bind pool %+v; want 10 ports used, %d in TIME_WAIT", step.close, pool, step.timeWait)
		}
	}
}

// Before Linux 5.12 a TCP socket's cookie may be its address, which the
// next socket reuses once the last one is a TIME_WAIT: its open must count,
// and the TIME_WAIT keep its port until it ends.
func TestCookieReusedAfterTimeWait(t *testing.T) {
	h := newHarness(tenPorts(0), Config{})
	for i := range 10 {
		e := event.Event{
			Kind: event.KindOpen, Proto: event.ProtoTCP, Family: 4, Time: h.now, Start: h.now,
			PID: 100, NetNS: 1, Direction: event.DirectionOutbound, Cookie: 0xffff888000001000,
			Local: netip.AddrPortFrom(local, uint16(40001+i)), Remote: dstA,
		}
		h.a.Write(&e)
		e.Kind, e.TimeWait = event.KindClose, true
		h.a.Write(&e)
		h.now = h.now.Add(time.Second)
	}
	k := h.key(event.MechanismPerDestination, dstA)
	if k == nil || k.Used != 10 || k.TimeWait != 10 {
		t.Fatalf("10 sockets in turn at one address, each left in TIME_WAIT: %+v; want 10 used, 10 in TIME_WAIT", k)
	}
	h.now = h.now.Add(timeWaitLen)
	if k := h.key(event.MechanismPerDestination, dstA); k != nil {
		t.Errorf("60 s after the last close: %+v; want every TIME_WAIT ended", k)
	}
}

// The reader queues for accounting only what it uses: accepted TCP
// connections hold their listener's port, none of the range.
func TestWants(t *testing.T) {
	a := New(Config{})
	tests := []struct {
		name string
		e    event.Event
		want bool
	}{
		{"outbound TCP open", event.Event{Kind: event.KindOpen, Proto: event.ProtoTCP, Direction: event.DirectionOutbound}, true},
		{"outbound TCP close", event.Event{Kind: event.KindClose, Proto: event.ProtoTCP, Direction: event.DirectionOutbound}, true},
		{"accepted TCP open", event.Event{Kind: event.KindOpen, Proto: event.ProtoTCP, Direction: event.DirectionInbound}, false},
		{"accepted TCP close", event.Event{Kind: event.KindClose, Proto: event.ProtoTCP, Direction: event.DirectionInbound}, false},
		{"TCP of unknown direction", event.Event{Kind: event.KindClose, Proto: event.ProtoTCP}, true},
		{"UDP server close", event.Event{Kind: event.KindClose, Proto: event.ProtoUDP, Direction: event.DirectionInbound}, true},
		{"failed bind", event.Event{Kind: event.KindBindFailed, Proto: event.ProtoTCP, Direction: event.DirectionInbound}, true},
		{"released", event.Event{Kind: event.KindReleased, Proto: event.ProtoTCP, Direction: event.DirectionInbound}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := a.Wants(&tt.e); got != tt.want {
				t.Errorf("Wants = %v, want %v", got, tt.want)
			}
		})
	}
}
