// Package ports keeps, from the event stream, how many ports each key of the
// kernel's allocation rules holds and how many it can hold, and reports the
// keys that are running out (pressure events) and a snapshot of every key
// (portlife ports).
//
// The keys, from the kernel's rules (Linux 6.1 to 6.18):
//   - per_destination: TCP connect() without a bound port needs a port that
//     is unique per (netns, saddr, daddr, dport). C = N rounded down to even,
//     less reserved ports, less B, the ports held by anything that used
//     bind() or listen() in the namespace, which connect() skips for every
//     destination. U counts the sockets of the key from connect() to the end
//     of TIME_WAIT, less TIME_WAITs that tcp_tw_reuse lets connect() reuse.
//   - bind_pool: bind() to port 0 needs a port no socket of the namespace
//     holds in any state, whatever its destination: one pool per (netns,
//     family), reported with the wildcard address, since a bind to a
//     specific address conflicts with fewer sockets and so sees at most this
//     pressure. C = N less reserved ports.
//   - udp: a UDP port is exclusive per (netns, local address), whatever the
//     destination. C = N less reserved ports.
package ports

import (
	"math"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/portlife/portlife/internal/event"
)

// timeWaitLen is TCP_TIMEWAIT_LEN: a compile-time constant of the kernel,
// which tcp_fin_timeout does not change.
const timeWaitLen = 60 * time.Second

// Config tunes the accounting.
type Config struct {
	// Thresholds are the pressure levels (fractions, ascending) whose
	// crossing is reported; nil: event.DefaultThresholds. Falling back
	// under the first one is reported too.
	Thresholds []float64
	// MaxKeys bounds the keys kept: the least pressed one makes room if it
	// is under half the first threshold, else the new key is left out; both
	// are counted (Stats.KeysLeftOut). 0: 4096.
	MaxKeys int
	// MaxSockets bounds the sockets tracked; 0: 1<<20.
	MaxSockets int
	// Publish sends a pressure event (stream.Publish); nil: none are sent.
	Publish func(*event.Event) error
	// Sysctls reads a namespace's settings; nil: ReadSysctls.
	Sysctls func(netns uint32, tasks ...uint32) (Sysctls, error)
	// Now is the clock; nil: time.Now.
	Now func() time.Time
	// Reread is how often a namespace's settings are read again, to follow
	// a change; 0: 10s.
	Reread time.Duration
	// Keep picks the sockets a dump counts (those the trace's filters keep:
	// it sees the end of no others); nil: all.
	Keep func(*Existing) bool
	// Dump lists the sockets of the namespaces given, for Reconcile; nil:
	// the package's Dump.
	Dump func(namespaces map[uint32]string, owners bool) ([]Existing, map[uint32]bool, error)
}

// hysteresis: a key must fall this far under a threshold before the level is
// left, so a key that hovers at it does not report each wobble.
const hysteresis = 0.05

// Accountant is a stream consumer. Write and Flush come from its own
// goroutine; Snapshot and Stats may be called from anywhere.
type Accountant struct {
	cfg Config

	mu      sync.Mutex
	netns   map[uint32]*netnsState
	keys    map[keyID]*key
	sockets sockTable
	// Deadlines of TIME_WAITs, in the order they were queued: when one stops
	// counting in U (reusable), and when it ends (60 s).
	reuseQ, expireQ deadlineQueue
	stats           Stats
	priming         bool   // Prime is adding sockets: levels are checked once at its end
	rekeyed         uint64 // TIME_WAITs whose cookie a new socket took (rekey)
}

// Stats counts what the accounting left out or could not do.
type Stats struct {
	KeysLeftOut    uint64 // keys not tracked because MaxKeys were, and pressed harder
	SocketsLeftOut uint64 // sockets not tracked because MaxSockets were
	SysctlErrors   uint64 // namespaces whose settings could not be read (defaults used)
	// Reconciled counts the sockets a reconciliation with the kernel
	// corrected: tracked but gone (an end not seen, or a TIME_WAIT ended
	// early), or present but not tracked (an open not seen).
	ReconciledGone, ReconciledFound uint64
	PublishFailed                   uint64 // pressure events the stream did not take (closed)
	Published                       uint64
}

type keyID struct {
	netns  uint32
	mech   event.Mechanism
	family uint8
	local  netip.Addr     // per_destination, udp: the local address; bind_pool: the wildcard
	remote netip.AddrPort // per_destination only
}

type key struct {
	id       keyID
	used     int                    // sockets (per_destination) or distinct ports (pools) counting in U
	timeWait int                    // of used, in TIME_WAIT: sockets, or pools' ports only TIME_WAITs hold
	ports    map[uint16]portHolders // pools only
	procs    map[uint32]*procCount
	level    int // thresholds crossed upwards: 0 none
	failures uint64
	rate     rate
	hold     time.Duration // EWMA of how long ports were held
	binders  int           // pools: sockets that took their port by bind()
	lastSeen time.Time
}

// portHolders counts the sockets of a pool that hold one port.
type portHolders struct{ all, timeWait int32 }

func (p portHolders) timeWaitOnly() bool { return p.all > 0 && p.timeWait == p.all }

// maxProcs is how many processes a key keeps before it prunes those that
// hold none of its ports.
const maxProcs = 64

type procCount struct {
	comm  event.Comm
	ports int
	bbc   int
}

type netnsState struct {
	sys    Sysctls
	readAt time.Time
	tasks  [2]uint32 // a task last seen in it, to enter it by
	path   string    // the path it was last entered by
	// boundChanged: B changed, so every per_destination key's capacity
	// did; they are checked again at the next Flush.
	boundChanged bool
	bound        map[uint16]int32
}

// sock is one tracked socket that holds a port of the range: 56 bytes, as
// the table may hold a million (Config.MaxSockets).
type sock struct {
	dest, pool *key // nil: not tracked there
	netns      uint32
	port       uint16
	timeWait   bool
	countsInU  bool // per_destination: a TIME_WAIT that cannot be reused yet counts
	bound      bool // took its port with bind(): B for per_destination
	bbc        bool
	pid        uint32
	start      stamp
	expires    stamp
	// added is when it began to be tracked: reconciliation forgets only
	// sockets older than its dump.
	added stamp
}

// stamp is a time in Unix nanoseconds, 0 for none: a third of a time.Time,
// in a table that may hold a million sockets.
type stamp int64

func stampOf(t time.Time) stamp {
	if t.IsZero() {
		return 0
	}
	return stamp(t.UnixNano())
}

func (s stamp) time() time.Time {
	if s == 0 {
		return time.Time{}
	}
	return time.Unix(0, int64(s))
}

type deadline struct {
	cookie uint64
	at     time.Time
}

// New returns an Accountant.
func New(cfg Config) *Accountant {
	if cfg.Thresholds == nil {
		cfg.Thresholds = event.DefaultThresholds
	}
	if cfg.MaxKeys == 0 {
		cfg.MaxKeys = 4096
	}
	if cfg.MaxSockets == 0 {
		cfg.MaxSockets = 1 << 20
	}
	if cfg.Sysctls == nil {
		cfg.Sysctls = ReadSysctls
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Reread == 0 {
		cfg.Reread = 10 * time.Second
	}
	if cfg.Dump == nil {
		cfg.Dump = Dump
	}
	return &Accountant{
		cfg:   cfg,
		netns: map[uint32]*netnsState{},
		keys:  map[keyID]*key{},
	}
}

// Stats reads the counters.
func (a *Accountant) Stats() Stats {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.stats
}

// Write accounts for one event of the stream.
func (a *Accountant) Write(e *event.Event) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch e.Kind {
	case event.KindOpen:
		a.open(e)
	case event.KindClose:
		a.close(e)
	case event.KindReleased:
		a.release(e.Cookie, e.Time)
	case event.KindConnectFailed, event.KindBindFailed:
		a.failed(e)
	}
	return nil
}

// Wants turns down, on the reader thread, the events of accepted TCP
// connections: half of a server's events, and they hold their listener's
// port, none of the range. (Listeners and bound sockets are inbound too, but
// reach accounting only from the start-up dump, and the tracer sends no
// event for them.)
func (a *Accountant) Wants(e *event.Event) bool {
	return e.Proto != event.ProtoTCP || e.Direction != event.DirectionInbound ||
		e.Kind != event.KindOpen && e.Kind != event.KindClose
}

// Flush ages TIME_WAITs (the stream calls it at least every flush interval)
// and reports keys that fell back.
func (a *Accountant) Flush() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.age(a.cfg.Now())
	return nil
}

// ns returns the state of a namespace, reading its settings the first time
// and again every Reread: sysctls send no notification, so a change is seen
// within that interval.
func (a *Accountant) ns(inode uint32, pid, tid uint32, now time.Time) *netnsState {
	n := a.netns[inode]
	if n == nil {
		n = &netnsState{bound: map[uint16]int32{}}
		a.netns[inode] = n
	}
	if pid != 0 {
		n.tasks = [2]uint32{tid, pid}
	}
	if n.readAt.IsZero() || now.Sub(n.readAt) >= a.cfg.Reread {
		s, err := a.cfg.Sysctls(inode, n.tasks[0], n.tasks[1])
		if err != nil {
			a.stats.SysctlErrors++
			if !n.readAt.IsZero() {
				s = n.sys // keep what was read before
			}
		}
		n.sys, n.readAt = s, now
	}
	return n
}

func (a *Accountant) open(e *event.Event) {
	// A TCP port of the range is taken by connect() (outbound); an accepted
	// socket shares its listener's. A UDP port is its socket's alone,
	// however it was bound: a server bound inside the range holds it too.
	if e.Local.Port() == 0 || e.Proto == event.ProtoTCP && e.Direction != event.DirectionOutbound {
		return
	}
	if s, ok := a.sockets.get(e.Cookie); ok {
		if !s.timeWait {
			return // counted already, from the start-up dump
		}
		// A TIME_WAIT opens nothing: this is another socket with its
		// cookie. Before Linux 5.12 a cookie may be the socket's address,
		// which the next socket reuses once this one became a TIME_WAIT.
		a.rekey(e.Cookie, s)
	}
	a.add(e, false, time.Time{}, e.BindBeforeConnect)
}

// rekey keeps TIME_WAIT s, whose cookie a new socket took, under a cookie of
// its own until it ends; its released event, which names the old cookie,
// cannot be matched, so it ends at its 60 s. The cookies given are above any
// counter's and below any kernel address (0xffff8...).
func (a *Accountant) rekey(cookie uint64, s sock) {
	a.rekeyed++
	c := 1<<63 | a.rekeyed
	a.sockets.delete(cookie)
	a.sockets.put(c, s)
	if n := a.netns[s.netns]; n != nil {
		a.queueTimeWait(c, &s, n)
	}
}

// add tracks the socket of e, which holds e.Local's port, if that port is one
// of its namespace's range. timeWait: it is in TIME_WAIT since closed.
// bound: it took its port with bind() or listen().
func (a *Accountant) add(e *event.Event, timeWait bool, closed time.Time, bound bool) {
	n := a.ns(e.NetNS, e.PID, e.TID, e.Time)
	port := e.Local.Port()
	if !n.sys.InRange(port) {
		return
	}
	if a.sockets.len() >= a.cfg.MaxSockets {
		a.stats.SocketsLeftOut++
		return
	}
	s := sock{netns: e.NetNS, port: port, pid: e.PID, start: stampOf(e.Start), bbc: e.BindBeforeConnect, bound: bound, added: stampOf(a.cfg.Now())}
	fam := uint8(e.Family)
	local := e.Local.Addr()
	var dest, pool keyID
	switch e.Proto {
	case event.ProtoTCP:
		pool = keyID{netns: e.NetNS, mech: event.MechanismBindPool, family: fam, local: wildcard(fam)}
		if !s.bound {
			dest = keyID{netns: e.NetNS, mech: event.MechanismPerDestination, family: fam, local: local, remote: e.Remote}
		}
	case event.ProtoUDP:
		dest = keyID{netns: e.NetNS, mech: event.MechanismUDP, family: fam, local: local}
	default:
		return
	}
	s.countsInU = true
	if timeWait {
		s.timeWait = true
		s.expires = stampOf(closed.Add(timeWaitLen))
	}
	if s.bound {
		n.bound[port]++
		n.boundChanged = true
	}
	if s.dest = a.key(dest, e.Time); s.dest != nil {
		a.hold(s.dest, &s, e, +1)
	}
	if s.pool = a.key(pool, e.Time); s.pool != nil {
		a.hold(s.pool, &s, e, +1)
	}
	a.sockets.put(e.Cookie, s)
	if timeWait {
		a.queueTimeWait(e.Cookie, &s, n)
	}
	a.check(s.dest, e.Time, e)
	a.check(s.pool, e.Time, e)
}

func wildcard(family uint8) netip.Addr {
	if family == 6 {
		return netip.IPv6Unspecified()
	}
	return netip.IPv4Unspecified()
}

// key returns the key id, making it if there is room; nil if id is unset or
// it was left out.
func (a *Accountant) key(id keyID, now time.Time) *key {
	if id.mech == 0 {
		return nil
	}
	if k := a.keys[id]; k != nil {
		return k
	}
	if len(a.keys) >= a.cfg.MaxKeys && !a.evict(now) {
		a.stats.KeysLeftOut++
		return nil
	}
	k := &key{id: id, procs: map[uint32]*procCount{}, lastSeen: now}
	if id.mech != event.MechanismPerDestination {
		k.ports = map[uint16]portHolders{}
	}
	a.keys[id] = k
	return k
}

// evict drops the least pressed key, to make room for a new one, if it is
// under half the first threshold: a key that matters more is kept, and the
// new one is left out instead. Its sockets are kept in their other key.
func (a *Accountant) evict(now time.Time) bool {
	var victim *key
	lowest := a.cfg.Thresholds[0] / 2
	for _, k := range a.keys {
		if k.level > 0 {
			continue
		}
		if p := a.ratio(k); p < lowest || victim != nil && p == lowest && k.used < victim.used {
			victim, lowest = k, p
		}
	}
	if victim == nil {
		return false
	}
	for c, s := range a.sockets.all() {
		switch victim {
		case s.dest:
			s.dest = nil
		case s.pool:
			s.pool = nil
		default:
			continue
		}
		if s.dest == nil && s.pool == nil {
			a.sockets.delete(c)
		} else {
			a.sockets.put(c, s)
		}
	}
	delete(a.keys, victim.id)
	a.stats.KeysLeftOut++
	return true
}

// hold adds (d = +1) or removes (d = -1) socket s's hold on key k.
func (a *Accountant) hold(k *key, s *sock, e *event.Event, d int) {
	if k.ports != nil {
		// A pool counts ports, not sockets; TIME_WAITs included, reusable
		// or not: bind() conflicts with them all. Sockets to different
		// destinations may share a port (connect() picks per destination),
		// so a port is in TIME_WAIT when only TIME_WAITs hold it: it is
		// free once they end.
		p := k.ports[s.port]
		was := p.timeWaitOnly()
		p.all += int32(d)
		if s.timeWait {
			p.timeWait += int32(d)
		}
		switch {
		case p.all <= 0:
			delete(k.ports, s.port)
			k.used--
		case p.all == 1 && d > 0:
			k.ports[s.port] = p
			k.used++
		default:
			k.ports[s.port] = p
		}
		switch is := p.timeWaitOnly(); {
		case is && !was:
			k.timeWait++
		case was && !is:
			k.timeWait--
		}
	} else if s.countsInU {
		k.used += d
		if s.timeWait {
			k.timeWait += d
		}
	}
	if s.bound {
		k.binders += d
	}
	if d > 0 && e != nil && e.Kind == event.KindOpen && !e.PreExisting {
		k.rate.add(e.Time)
	}
	if s.pid == 0 {
		return // a TIME_WAIT from before start, or an owner never known
	}
	p := k.procs[s.pid]
	if p == nil && d > 0 {
		// A process that holds nothing now keeps its entry, so that one
		// opening and closing a connection at a time costs no allocation;
		// they are pruned when the map grows.
		if len(k.procs) >= maxProcs {
			for pid, q := range k.procs {
				if q.ports <= 0 {
					delete(k.procs, pid)
				}
			}
		}
		p = &procCount{}
		k.procs[s.pid] = p
	}
	if p != nil {
		if e != nil && e.PID == s.pid && e.Comm[0] != 0 {
			p.comm = e.Comm
		}
		p.ports += d
		if s.bbc {
			p.bbc += d
		}
	}
}

func (a *Accountant) close(e *event.Event) {
	s, ok := a.sockets.get(e.Cookie)
	if !ok {
		// Not seen opening (filtered, or opened between the start-up dump
		// and the hooks): a TIME_WAIT still holds its port from now.
		if e.Proto == event.ProtoTCP && e.TimeWait && e.Direction == event.DirectionOutbound {
			a.add(e, true, e.Time, e.BindBeforeConnect)
		}
		return
	}
	if e.Proto == event.ProtoTCP && e.TimeWait {
		n := a.ns(e.NetNS, e.PID, e.TID, e.Time)
		// Take the socket out and put it back as a TIME_WAIT, so every
		// count follows.
		a.unhold(e.Cookie, s, e)
		s.timeWait, s.expires, s.countsInU = true, stampOf(e.Time.Add(timeWaitLen)), true
		a.rehold(e.Cookie, s, e)
		a.queueTimeWait(e.Cookie, &s, n)
		return
	}
	a.drop(e.Cookie, s, e.Time, e)
}

// queueTimeWait queues when the TIME_WAIT stops counting (reusable) and ends.
func (a *Accountant) queueTimeWait(cookie uint64, s *sock, n *netnsState) {
	a.expireQ.push(deadline{cookie, s.expires.time()})
	if s.dest != nil && s.dest.id.mech == event.MechanismPerDestination && reusable(&n.sys, s.dest.id) {
		closed := s.expires.time().Add(-timeWaitLen)
		a.reuseQ.push(deadline{cookie, closed.Add(max(n.sys.TWReuseDelay, time.Second))})
	}
}

// reusable reports whether connect() may reuse a TIME_WAIT of this key, once
// it is old enough (tcp_twsk_unique): tcp_tw_reuse 1, or 2 on loopback, and
// with timestamps.
func reusable(s *Sysctls, id keyID) bool {
	if !s.Timestamps {
		return false
	}
	switch s.TWReuse {
	case 1:
		return true
	case 2:
		return id.local.IsLoopback() || id.remote.Addr().IsLoopback()
	}
	return false
}

func (a *Accountant) unhold(cookie uint64, s sock, e *event.Event) {
	if s.dest != nil {
		a.hold(s.dest, &s, e, -1)
	}
	if s.pool != nil {
		a.hold(s.pool, &s, e, -1)
	}
}

func (a *Accountant) rehold(cookie uint64, s sock, e *event.Event) {
	if s.dest != nil {
		a.hold(s.dest, &s, nil, +1)
	}
	if s.pool != nil {
		a.hold(s.pool, &s, nil, +1)
	}
	a.sockets.put(cookie, s)
}

// drop forgets a socket whose port is free since at.
func (a *Accountant) drop(cookie uint64, s sock, at time.Time, e *event.Event) {
	a.unhold(cookie, s, e)
	a.sockets.delete(cookie)
	if s.bound {
		if n := a.netns[s.netns]; n != nil {
			if n.bound[s.port]--; n.bound[s.port] <= 0 {
				delete(n.bound, s.port)
			}
			n.boundChanged = true
		}
	}
	if s.start != 0 && at.After(s.start.time()) {
		for _, k := range [2]*key{s.dest, s.pool} {
			if k != nil {
				k.hold = ewma(k.hold, at.Sub(s.start.time()))
			}
		}
	}
	a.check(s.dest, at, nil)
	a.check(s.pool, at, nil)
}

func ewma(avg, d time.Duration) time.Duration {
	if avg == 0 {
		return d
	}
	return avg + (d-avg)/8
}

// release ends a TIME_WAIT the kernel says is over (reused, killed,
// expired, overflowed).
func (a *Accountant) release(cookie uint64, at time.Time) {
	if s, ok := a.sockets.get(cookie); ok && s.timeWait {
		a.drop(cookie, s, at, nil)
	}
}

// age ends TIME_WAITs that no released event ended by their 60 s, and
// stops counting those connect() may reuse.
func (a *Accountant) age(now time.Time) {
	for d, ok := a.reuseQ.due(now); ok; d, ok = a.reuseQ.due(now) {
		a.reuseQ.pop()
		s, ok := a.sockets.get(d.cookie)
		if !ok || !s.timeWait || !s.countsInU {
			continue
		}
		a.unhold(d.cookie, s, nil)
		s.countsInU = false
		a.rehold(d.cookie, s, nil)
		if s.dest != nil && s.start != 0 {
			s.dest.hold = ewma(s.dest.hold, d.at.Sub(s.start.time()))
		}
		a.check(s.dest, now, nil)
	}
	for d, ok := a.expireQ.due(now); ok; d, ok = a.expireQ.due(now) {
		a.expireQ.pop()
		if s, ok := a.sockets.get(d.cookie); ok && s.timeWait && !s.expires.time().After(now) {
			a.drop(d.cookie, s, s.expires.time(), nil)
		}
	}
	a.recheckBound(now)
}

// recheckBound checks the per_destination keys of namespaces whose bound
// ports changed: their capacity moved without an event of their own.
func (a *Accountant) recheckBound(now time.Time) {
	changed := false
	for _, n := range a.netns {
		changed = changed || n.boundChanged
	}
	if !changed {
		return
	}
	for _, k := range a.keys {
		if n := a.netns[k.id.netns]; n != nil && n.boundChanged && k.id.mech == event.MechanismPerDestination {
			a.check(k, now, nil)
		}
	}
	for _, n := range a.netns {
		n.boundChanged = false
	}
}

// deadlineQueue holds deadlines in time order, in a ring that doubles when
// full and never moves what it holds otherwise. They mostly come in order
// (closes do), so a push is an append at the tail; the odd one (a TIME_WAIT
// whose timer was pushed back, a close that lost the race to the ring by
// microseconds) moves the later ones up a slot each. At 10,000 closes a
// second, a slice whose window only slid forward was reallocated every few
// seconds, 14 MB to fault in each time: a quarter of the accountant's CPU.
type deadlineQueue struct {
	buf     []deadline // a power of two long, or nil
	head, n int
}

func (q *deadlineQueue) len() int { return q.n }

func (q *deadlineQueue) at(i int) *deadline { return &q.buf[(q.head+i)&(len(q.buf)-1)] }

// due returns the first deadline if it is due at now.
func (q *deadlineQueue) due(now time.Time) (deadline, bool) {
	if q.n == 0 || q.at(0).at.After(now) {
		return deadline{}, false
	}
	return *q.at(0), true
}

func (q *deadlineQueue) pop() {
	q.head = (q.head + 1) & (len(q.buf) - 1)
	q.n--
}

func (q *deadlineQueue) push(d deadline) {
	if q.n == len(q.buf) {
		grown := make([]deadline, max(64, 2*len(q.buf)))
		for i := range q.n {
			grown[i] = *q.at(i)
		}
		q.buf, q.head = grown, 0
	}
	// Find its place from the tail: it is nearly always there already.
	i := q.n
	if i > 0 && q.at(i-1).at.After(d.at) {
		i = sort.Search(q.n, func(j int) bool { return q.at(j).at.After(d.at) })
		for j := q.n; j > i; j-- {
			*q.at(j) = *q.at(j - 1)
		}
	}
	*q.at(i) = d
	q.n++
}

func (a *Accountant) failed(e *event.Event) {
	if e.Reason() != "no_ephemeral_port" {
		return
	}
	var id keyID
	fam := uint8(e.Family)
	switch {
	case e.Kind == event.KindBindFailed && e.Proto == event.ProtoTCP:
		id = keyID{netns: e.NetNS, mech: event.MechanismBindPool, family: fam, local: wildcard(fam)}
	case e.Proto == event.ProtoUDP:
		id = keyID{netns: e.NetNS, mech: event.MechanismUDP, family: fam, local: e.Local.Addr()}
	case e.Proto == event.ProtoTCP:
		id = keyID{netns: e.NetNS, mech: event.MechanismPerDestination, family: fam, local: e.Local.Addr(), remote: e.Remote}
	}
	if k := a.keys[id]; k != nil {
		k.failures++
		return
	}
	// A failure with no local address (TCP connect() chose none, or a UDP
	// socket bound to the wildcard): the key of that destination or family
	// pressed hardest.
	var best *key
	for _, k := range a.keys {
		if k.id.netns != id.netns || k.id.mech != id.mech || k.id.family != fam {
			continue
		}
		if id.mech == event.MechanismPerDestination && k.id.remote != e.Remote {
			continue
		}
		if best == nil || a.ratio(k) > a.ratio(best) {
			best = k
		}
	}
	if best != nil {
		best.failures++
	}
}

// capacity is C of key k.
func (a *Accountant) capacity(k *key) int {
	n := a.netns[k.id.netns]
	if n == nil {
		return 0
	}
	if k.id.mech == event.MechanismPerDestination {
		return max(n.sys.connectCapacity()-len(n.bound), 0)
	}
	return n.sys.poolCapacity()
}

func (a *Accountant) ratio(k *key) float64 {
	c := a.capacity(k)
	if c == 0 {
		if k.used > 0 {
			return 1
		}
		return 0
	}
	return float64(k.used) / float64(c)
}

// check reports a key whose level changed. e is the event that changed it,
// whose time the report carries.
func (a *Accountant) check(k *key, now time.Time, e *event.Event) {
	if k == nil {
		return
	}
	id := k.id
	k.lastSeen = now
	if a.priming {
		return
	}
	// A bind pool is reported only where something binds: otherwise it
	// follows the per-destination keys, which say more.
	if id.mech == event.MechanismBindPool && k.binders == 0 && k.failures == 0 && k.level == 0 {
		return
	}
	r := a.ratio(k)
	th := a.cfg.Thresholds
	level := k.level
	for level < len(th) && r >= th[level] {
		level++
	}
	for level > 0 && r < th[level-1]-hysteresis {
		level--
	}
	switch {
	case level > k.level:
		// One event per threshold, even when one step crosses several
		// (a small range): each level is said once.
		for l := k.level + 1; l <= level; l++ {
			a.publish(k, r, th[l-1], true, now)
		}
		k.level = level
	case level < k.level:
		k.level = level
		if level == 0 {
			// Back under the first threshold: said once.
			a.publish(k, r, th[0], false, now)
		}
	}
}

func (a *Accountant) publish(k *key, r, threshold float64, rising bool, now time.Time) {
	if a.cfg.Publish == nil {
		return
	}
	rep := a.report(k, now)
	p := &event.Pressure{
		Mechanism:  k.id.mech,
		Used:       rep.Used,
		Capacity:   rep.Capacity,
		Ratio:      r,
		Threshold:  threshold,
		Rising:     rising,
		TimeWait:   rep.TimeWait,
		Rate:       rep.Rate,
		Hold:       rep.Hold,
		Exhaustion: rep.Exhaustion,
		Top:        rep.Top,
		Failures:   k.failures,
	}
	e := &event.Event{
		Kind:     event.KindPressure,
		Family:   int(k.id.family),
		Time:     now,
		NetNS:    k.id.netns,
		Local:    netip.AddrPortFrom(k.id.local, 0),
		Remote:   k.id.remote,
		Pressure: p,
	}
	e.Proto = event.ProtoTCP
	if k.id.mech == event.MechanismUDP {
		e.Proto = event.ProtoUDP
	}
	if len(p.Top) > 0 {
		e.PID, e.Comm = p.Top[0].PID, p.Top[0].Comm
	}
	if !k.id.remote.IsValid() {
		e.Remote = netip.AddrPortFrom(wildcard(k.id.family), 0)
	}
	// The stream never blocks a publisher on a subscriber's queue, this
	// accountant's own included.
	if err := a.cfg.Publish(e); err != nil {
		a.stats.PublishFailed++
		return
	}
	a.stats.Published++
}

// Report is one key as portlife ports shows it.
type Report struct {
	Mechanism event.Mechanism
	NetNS     uint32
	Family    int
	Local     netip.Addr
	Remote    netip.AddrPort // per_destination only
	Used      int
	Capacity  int
	Ratio     float64
	TimeWait  int
	// NextExpiry is when the first TIME_WAIT of the key ends; zero if none.
	NextExpiry time.Time
	Rate       float64
	Hold       time.Duration
	Exhaustion time.Duration // as event.Pressure's
	Top        []event.ProcessCount
	Failures   uint64
}

const topN = 5

func (a *Accountant) report(k *key, now time.Time) Report {
	r := Report{
		Mechanism: k.id.mech,
		NetNS:     k.id.netns,
		Family:    int(k.id.family),
		Local:     k.id.local,
		Remote:    k.id.remote,
		Used:      k.used,
		Capacity:  a.capacity(k),
		Ratio:     a.ratio(k),
		TimeWait:  k.timeWait,
		Rate:      k.rate.perSecond(now),
		Hold:      k.hold,
		Failures:  k.failures,
	}
	for pid, p := range k.procs {
		if p.ports <= 0 {
			continue
		}
		r.Top = append(r.Top, event.ProcessCount{PID: pid, Comm: p.comm, Ports: p.ports, BindBeforeConnect: p.bbc})
	}
	slices.SortFunc(r.Top, func(x, y event.ProcessCount) int {
		if x.Ports != y.Ports {
			return y.Ports - x.Ports
		}
		return int(x.PID) - int(y.PID)
	})
	if len(r.Top) > topN {
		r.Top = r.Top[:topN]
	}
	expiries := a.releases(k)
	if len(expiries) > 0 {
		r.NextExpiry = expiries[0]
	}
	r.Exhaustion = exhaustion(r.Used, r.Capacity, r.Rate, r.Hold, now, expiries)
	return r
}

// releases lists when the TIME_WAITs counting in k's U stop counting, in
// order.
func (a *Accountant) releases(k *key) []time.Time {
	var out []time.Time
	if k.timeWait == 0 {
		return nil
	}
	for _, s := range a.sockets.all() {
		if !s.timeWait || s.dest != k && s.pool != k {
			continue
		}
		out = append(out, s.expires.time())
	}
	slices.SortFunc(out, time.Time.Compare)
	return out
}

// exhaustion estimates when U reaches C at rate new ports a second: the
// first moment U plus the ports taken by then, less the TIME_WAITs known to
// end by then, reaches C. Past the last known expiry, ports are released
// at U/τ, so a key whose steady state λτ stays under C never runs out.
func exhaustion(used, capacity int, rate float64, hold time.Duration, now time.Time, expiries []time.Time) time.Duration {
	if used >= capacity {
		return 0
	}
	if rate <= 0 {
		return -1
	}
	u, c := float64(used), float64(capacity)
	t := 0.0 // seconds from now
	for _, x := range expiries {
		dt := max(x.Sub(now).Seconds(), t)
		if u+rate*(dt-t) >= c {
			return seconds(t + (c-u)/rate)
		}
		u += rate*(dt-t) - 1
		t = dt
	}
	if hold <= 0 {
		// No port was released yet: nothing tells when the ones taken
		// from now on will be.
		return seconds(t + (c-u)/rate)
	}
	// dU/dt = λ − U/τ: U tends to λτ, and reaches C only if λτ > C.
	steady := rate * hold.Seconds()
	if steady <= c {
		return -1
	}
	return seconds(t + hold.Seconds()*math.Log((steady-u)/(steady-c)))
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// Snapshot reports every key, most pressed first.
func (a *Accountant) Snapshot() []Report {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.cfg.Now()
	a.age(now)
	out := make([]Report, 0, len(a.keys))
	for _, k := range a.keys {
		if k.used == 0 && k.failures == 0 {
			continue
		}
		out = append(out, a.report(k, now))
	}
	slices.SortFunc(out, func(x, y Report) int {
		switch {
		case x.Ratio > y.Ratio:
			return -1
		case x.Ratio < y.Ratio:
			return 1
		}
		return y.Used - x.Used
	})
	return out
}

// rate counts new ports over the last rateWindow seconds, by second.
type rate struct {
	first   time.Time
	buckets [rateWindow]struct {
		sec int64
		n   int
	}
}

const rateWindow = 10

func (r *rate) add(t time.Time) {
	if r.first.IsZero() {
		r.first = t
	}
	sec := t.Unix()
	b := &r.buckets[sec%rateWindow]
	if b.sec != sec {
		b.sec, b.n = sec, 0
	}
	b.n++
}

// perSecond is the mean over the window, or since the first port if that
// is more recent.
func (r *rate) perSecond(now time.Time) float64 {
	if r.first.IsZero() {
		return 0
	}
	sec := now.Unix()
	n := 0
	for _, b := range r.buckets {
		if b.sec > sec-rateWindow && b.sec <= sec {
			n += b.n
		}
	}
	span := min(now.Sub(r.first).Seconds(), rateWindow)
	if span < 1 {
		span = 1
	}
	return float64(n) / span
}
