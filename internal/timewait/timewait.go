// Package timewait reports when the port of a TCP connection that went
// through TIME_WAIT is really free again. A close event says the
// connection ended; its port stays taken for the TIME_WAIT that follows,
// 60 s unless a new connection reuses its 4-tuple, a segment kills it, or
// tcp_max_tw_buckets was full and none was made. The kernel has no
// tracepoint at that end, so the Tracker sweeps each network namespace's
// TIME_WAIT sockets with sock_diag, matches them to the closes it learned
// from the stream by socket cookie (a TIME_WAIT keeps its socket's), and
// publishes a released event for each, with the time it left the kernel's
// table.
package timewait

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/portlife/portlife/internal/event"
	"github.com/portlife/portlife/internal/stream"
)

// Publisher takes the events the Tracker derives: a *stream.Stream.
type Publisher interface {
	Publish(*event.Event) error
}

// Config tunes the Tracker.
type Config struct {
	// Interval between sweeps. A release is placed between the last sweep
	// that saw its TIME_WAIT and the first that did not, so its time is
	// off by at most about half of this.
	Interval time.Duration
	// Max TIME_WAITs tracked at once; a close beyond it is counted as
	// untracked, and no release is reported for it.
	Max int
	// Grace is how long a TIME_WAIT found gone waits for an open on its
	// 4-tuple (a reuse) to come through the stream before it is called
	// killed: the stream must have delivered events this far past its
	// going, or be idle this long after it. It must exceed the tracer's
	// flush interval and a handshake's time.
	Grace time.Duration
}

// maxWait bounds how long a release waits for the stream to catch up.
const maxWait = 30 * time.Second

// idleHandle is how long a namespace's handle outlives its last watch.
const idleHandle = time.Minute

// DefaultConfig sweeps every second.
func DefaultConfig() Config {
	return Config{Interval: time.Second, Max: 1 << 17, Grace: 2 * time.Second}
}

// Stats counts what the Tracker took in and what it reported or lost.
type Stats struct {
	Tracked  uint64 // closes into TIME_WAIT taken in
	Pending  uint64 // TIME_WAITs being watched now
	Expired  uint64 // releases reported, by how they ended
	Reused   uint64
	Killed   uint64
	Overflow uint64
	// Lost releases: the tracked set was full (Untracked), the close's
	// network namespace could not be entered or swept (Unobservable), or
	// the stream was closed when the release was published (Unpublished).
	Untracked    uint64
	Unobservable uint64
	Unpublished  uint64
	// NetnsGone: killed releases of closes whose namespace was gone before
	// a sweep could look: destroying it purged their TIME_WAITs, at a time
	// between the close and the sweep. They are among Killed.
	NetnsGone   uint64
	Sweeps      uint64        // namespace sweeps done
	Stretched   uint64        // rounds whose next one waited past Interval, so that sweeping stays under 1/10 of a CPU
	SweepErrors uint64        // namespace sweeps that failed; their TIME_WAITs wait for the next
	SweepTime   time.Duration // spent in sweeps, in total
	Namespaces  uint64        // namespaces with a sock_diag handle open now
}

// Lost is every release that will not be reported.
func (s Stats) Lost() uint64 { return s.Untracked + s.Unobservable + s.Unpublished }

// Released is every release reported.
func (s Stats) Released() uint64 { return s.Expired + s.Reused + s.Killed + s.Overflow }

// tupleKey is a connection's 4-tuple in its namespace, from either side's
// point of view as the close saw it.
type tupleKey struct {
	netns         uint32
	local, remote netip.AddrPort
}

// closed is what a released event repeats of its close: half of an
// event.Event, for a set that may hold 100k.
type closed struct {
	Time          time.Time
	Local, Remote netip.AddrPort
	Cookie        uint64
	CgroupID      uint64
	PID, TID, UID uint32
	NetNS         uint32
	ListenerPID   uint32
	Comm, Thread  event.Comm
	Family        uint8
	PIDSource     event.PIDSource
	Direction     event.Direction
	Ephemeral     bool
	PreExisting   bool
}

func closedFrom(e *event.Event) closed {
	return closed{
		Time: e.Time, Local: e.Local, Remote: e.Remote, Cookie: e.Cookie, CgroupID: e.CgroupID,
		PID: e.PID, TID: e.TID, UID: e.UID, NetNS: e.NetNS, ListenerPID: e.ListenerPID,
		Comm: e.Comm, Thread: e.Thread, Family: uint8(e.Family), PIDSource: e.PIDSource,
		Direction: e.Direction, Ephemeral: e.Ephemeral, PreExisting: e.PreExisting,
	}
}

// released is the released event of the close: at at, ended by how.
func (c *closed) released(how event.Release, at time.Time) event.Event {
	return event.Event{
		Kind: event.KindReleased, Proto: event.ProtoTCP, Release: how, Time: at, Start: c.Time,
		Local: c.Local, Remote: c.Remote, Cookie: c.Cookie, CgroupID: c.CgroupID,
		PID: c.PID, TID: c.TID, UID: c.UID, NetNS: c.NetNS, ListenerPID: c.ListenerPID,
		Comm: c.Comm, Thread: c.Thread, Family: int(c.Family), PIDSource: c.PIDSource,
		Direction: c.Direction, Ephemeral: c.Ephemeral, PreExisting: c.PreExisting,
	}
}

// entry is one close whose TIME_WAIT is watched. It keeps what the released
// event repeats of the close, and what the sweeps learned.
type entry struct {
	ev    closed    // the close
	added time.Time // when the Tracker took it in

	seen      bool      // a sweep found its TIME_WAIT
	seenRound uint64    // the last sweep round that found it
	lastSeen  time.Time // start of that sweep
	expiry    time.Time // when its timer is due, as the kernel said
	reusedAt  time.Time // an open on its 4-tuple began then
	// When a sweep first missed it: it left the table in [goneLo, goneHi].
	gone           bool
	goneLo, goneHi time.Time
	live           bool
}

// nsState is what the Tracker keeps per network namespace.
type nsState struct {
	h           *nsHandle
	count       int       // live entries in it
	overflows   uint64    // TCPTimeWaitOverflow at the last sweep
	overflowsAt time.Time // when it was read
	idleSince   time.Time // when count fell to 0
	warned      bool      // a failed sweep was logged
	// vanished: no process or mount showed it when it was to be opened.
	vanished   bool
	vanishedAt time.Time
	// This round's sweep: when it ran, and whether it did.
	t0, t1 time.Time
	swept  bool
}

// Tracker is a stream consumer: Subscribe it, then Run it.
type Tracker struct {
	cfg Config
	pub Publisher
	log *zap.Logger

	mu       sync.Mutex
	entries  []entry // slots; free ones are listed in free
	free     []int32
	byCookie map[uint64]int32
	byTuple  map[tupleKey]int32
	ns       map[uint32]*nsState
	round    uint64
	// watermark is the latest event time Write saw (Unix ns);
	// lastWatermark, the sweeper's reading of it at the last sweep.
	watermark     atomic.Int64
	lastWatermark time.Time

	// The sweeper's reused buffers.
	sightings []sighting
	diagBuf   []byte
	out       []event.Event

	tracked, untracked, unobservable, unpublished atomic.Uint64
	byRelease                                     [5]atomic.Uint64
	sweeps, sweepErrors, namespaces, netnsGone    atomic.Uint64
	stretched                                     atomic.Uint64
	sweepTime                                     atomic.Int64
	pending                                       atomic.Int64
}

// New returns a Tracker that publishes releases to pub.
func New(cfg Config, pub Publisher, log *zap.Logger) *Tracker {
	def := DefaultConfig()
	if cfg.Interval <= 0 {
		cfg.Interval = def.Interval
	}
	if cfg.Max <= 0 {
		cfg.Max = def.Max
	}
	if cfg.Grace <= 0 {
		cfg.Grace = def.Grace
	}
	return &Tracker{
		cfg:      cfg,
		pub:      pub,
		log:      log,
		byCookie: make(map[uint64]int32),
		byTuple:  make(map[tupleKey]int32),
		ns:       make(map[uint32]*nsState),
	}
}

// Write learns from the stream: a TCP close into TIME_WAIT starts a watch,
// an open on a watched 4-tuple marks its reuse. It ignores its own kind.
func (t *Tracker) Write(e *event.Event) error {
	// Only this goroutine writes it.
	if ns := e.Time.UnixNano(); ns > t.watermark.Load() {
		t.watermark.Store(ns)
	}
	if e.Proto != event.ProtoTCP {
		return nil
	}
	switch {
	case e.Kind == event.KindClose && e.TimeWait:
		t.track(e)
	case e.Kind == event.KindOpen, e.Kind == event.KindConnectFailed && e.Local.Port() != 0:
		// A connect that failed after its SYN took the 4-tuple all the same.
		t.opened(e)
	}
	return nil
}

// Flush has nothing to hand on: releases go out as sweeps find them.
func (t *Tracker) Flush() error { return nil }

func (t *Tracker) track(e *event.Event) {
	t.tracked.Add(1)
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, dup := t.byCookie[e.Cookie]; dup {
		return // the same close twice cannot happen; keep the first
	}
	var i int32
	switch {
	case len(t.free) > 0:
		i = t.free[len(t.free)-1]
		t.free = t.free[:len(t.free)-1]
	case len(t.entries) < t.cfg.Max:
		t.entries = append(t.entries, entry{})
		i = int32(len(t.entries) - 1)
	default:
		t.untracked.Add(1)
		return
	}
	t.entries[i] = entry{ev: closedFrom(e), added: time.Now(), live: true}
	t.byCookie[e.Cookie] = i
	t.byTuple[tupleKey{e.NetNS, e.Local, e.Remote}] = i
	ns := t.ns[e.NetNS]
	if ns == nil {
		ns = &nsState{}
		t.ns[e.NetNS] = ns
	}
	ns.count++
	t.pending.Add(1)
}

func (t *Tracker) opened(e *event.Event) {
	t.mu.Lock()
	defer t.mu.Unlock()
	i, ok := t.byTuple[tupleKey{e.NetNS, e.Local, e.Remote}]
	if !ok {
		return
	}
	en := &t.entries[i]
	if en.reusedAt.IsZero() {
		// connect() (or the peer's SYN) took the 4-tuple when it began.
		en.reusedAt = e.Start
		if en.reusedAt.IsZero() {
			en.reusedAt = e.Time
		}
	}
}

// sweepShare bounds what sweeping costs: the wait after a sweep is at least
// this many times as long as the sweep took, so the sweeper takes at most
// about 1/sweepShare of a CPU however many TIME_WAITs there are. Past that
// point releases are placed less precisely (half the stretched interval),
// and Stats.Stretched counts the sweeps it delayed.
const sweepShare = 10

// Run sweeps every Interval (or less often, see sweepShare) until ctx is
// done, then closes every handle.
func (t *Tracker) Run(ctx context.Context) error {
	timer := time.NewTimer(t.cfg.Interval)
	defer timer.Stop()
	defer t.closeHandles()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		}
		t0 := time.Now()
		t.sweep()
		wait, stretched := nextSweep(t.cfg.Interval, time.Since(t0))
		if stretched {
			t.stretched.Add(1)
		}
		timer.Reset(wait)
	}
}

// nextSweep is the wait after a sweep that took took: Interval, or longer
// to keep sweeping under 1/sweepShare of the time.
func nextSweep(interval, took time.Duration) (wait time.Duration, stretched bool) {
	if took*sweepShare > interval {
		return took * sweepShare, true
	}
	return interval, false
}

func (t *Tracker) closeHandles() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for ino, ns := range t.ns {
		if ns.h != nil {
			ns.h.Close()
			t.namespaces.Add(^uint64(0))
		}
		delete(t.ns, ino)
	}
}

// sweep is one round: each namespace with a watched TIME_WAIT is dumped,
// then every watch is judged against what its namespace's dump showed.
func (t *Tracker) sweep() {
	t.mu.Lock()
	t.round++
	round := t.round
	todo := make([]uint32, 0, len(t.ns))
	for ino, ns := range t.ns {
		ns.swept = false
		if ns.count > 0 {
			todo = append(todo, ino)
		}
	}
	t.mu.Unlock()

	for _, ino := range todo {
		t.sweepNetns(ino, round)
	}

	t.mu.Lock()
	now := time.Now()
	// The stream has delivered every event up to the watermark; when no
	// event came since the last sweep, it is idle, and nothing is pending.
	wm := time.Unix(0, t.watermark.Load())
	idle := wm.Equal(t.lastWatermark)
	t.lastWatermark = wm
	t.out = t.out[:0]
	for i := range t.entries {
		en := &t.entries[i]
		if !en.live {
			continue
		}
		ns := t.ns[en.ev.NetNS]
		switch {
		case ns == nil:
			continue
		case ns.vanished && en.added.After(ns.vanishedAt):
			// A close came from it since: it is there after all (held by
			// a descriptor alone, say). Look for it again next round.
			ns.vanished = false
			continue
		case ns.vanished:
			if !en.gone {
				en.gone, en.goneLo, en.goneHi = true, en.ev.Time, ns.vanishedAt
			}
			t.netnsGone.Add(1)
			t.release(int32(i), t.finish(en))
			continue
		case ns.h == nil:
			continue
		}
		if ns.swept && en.added.Before(ns.t0) {
			t.judge(en, ns, round)
		}
		if t.ready(en, now, wm, idle) {
			t.release(int32(i), t.finish(en))
		}
	}
	// A namespace with nothing left to watch for a while is let go: the
	// handle pins it. Until then its overflow counter keeps its baseline.
	for ino, ns := range t.ns {
		if ns.count > 0 {
			ns.idleSince = time.Time{}
			continue
		}
		if ns.idleSince.IsZero() {
			ns.idleSince = now
		}
		if ns.h == nil || now.Sub(ns.idleSince) >= idleHandle {
			if ns.h != nil {
				ns.h.Close()
				t.namespaces.Add(^uint64(0))
			}
			delete(t.ns, ino)
		}
	}
	out := t.out
	t.mu.Unlock()

	for i := range out {
		if err := t.pub.Publish(&out[i]); err != nil {
			if !errors.Is(err, stream.ErrClosed) {
				t.log.Warn("publishing a release", zap.Error(err))
			}
			t.unpublished.Add(1)
			continue
		}
		t.byRelease[out[i].Release].Add(1)
	}
}

// sweepNetns dumps one namespace's TIME_WAIT sockets and marks the watches
// they match. The dump runs unlocked: the stream keeps feeding Write.
func (t *Tracker) sweepNetns(ino uint32, round uint64) {
	t.mu.Lock()
	ns := t.ns[ino]
	h := ns.h
	var pid, tid uint32
	if h == nil {
		for i := range t.entries {
			if en := &t.entries[i]; en.live && en.ev.NetNS == ino {
				pid, tid = en.ev.PID, en.ev.TID
				break
			}
		}
	}
	t.mu.Unlock()

	if h == nil {
		var err error
		h, err = t.open(ino, pid, tid)
		if errors.Is(err, errNetnsGone) {
			// Its TIME_WAITs went with it: destroying a namespace purges
			// them. They are released as killed, between their close and now.
			t.mu.Lock()
			ns.vanished, ns.vanishedAt = true, time.Now()
			t.mu.Unlock()
			return
		}
		if err != nil {
			t.log.Warn("cannot watch TIME_WAIT sockets in a network namespace: their releases are not reported",
				zap.Uint32("netns", ino), zap.Error(err))
			t.dropNetns(ino)
			return
		}
		over, err := h.overflows()
		if err != nil {
			t.log.Warn("reading a network namespace's TIME_WAIT overflows", zap.Uint32("netns", ino), zap.Error(err))
		}
		t.mu.Lock()
		ns.h, ns.overflows, ns.overflowsAt = h, over, time.Now()
		t.mu.Unlock()
		t.namespaces.Add(1)
	}

	t0 := time.Now()
	var err error
	t.sightings, t.diagBuf, err = h.dumpTimeWait(t.sightings[:0], t.diagBuf)
	t1 := time.Now()
	var over uint64
	if err == nil {
		over, err = h.overflows()
	}
	maxBuckets, maxErr := h.maxBuckets()
	t.sweeps.Add(1)
	t.sweepTime.Add(int64(t1.Sub(t0)))
	if err != nil {
		t.sweepErrors.Add(1)
		t.mu.Lock()
		warned := ns.warned
		ns.warned = true
		t.mu.Unlock()
		if !warned { // once a namespace: sweep_errors counts the rest
			t.log.Warn("sweeping TIME_WAIT sockets: their releases wait for a sweep that works", zap.Uint32("netns", ino), zap.Error(err))
		}
		return
	}

	t.mu.Lock()
	defer t.mu.Unlock()
	ns.t0, ns.t1, ns.swept = t0, t1, true
	for _, s := range t.sightings {
		i, ok := t.byCookie[s.cookie]
		if !ok {
			continue
		}
		en := &t.entries[i]
		if en.ev.NetNS != ino {
			continue
		}
		en.seen, en.seenRound, en.lastSeen = true, round, t0
		en.expiry = t0.Add(s.expires)
	}
	// Closes that made no TIME_WAIT because tcp_max_tw_buckets was full.
	// Those after the last reading of the namespace's overflow counter are
	// as many as it moved by; before that (its handle was new), a close
	// found no TIME_WAIT if the table is full now.
	newOverflows := over - ns.overflows
	full := maxErr == nil && uint64(len(t.sightings)) >= maxBuckets
	for i := range t.entries {
		en := &t.entries[i]
		if !en.live || en.gone || en.ev.NetNS != ino || en.seen || !en.added.Before(t0) || !en.reusedAt.IsZero() {
			continue
		}
		switch {
		case en.added.After(ns.overflowsAt) && newOverflows > 0:
			newOverflows--
		case !en.added.After(ns.overflowsAt) && full:
		default:
			continue
		}
		en.gone = true
		en.goneLo, en.goneHi = en.ev.Time, en.ev.Time
		en.seenRound = ^uint64(0) // judged: overflowed
	}
	ns.overflows, ns.overflowsAt = over, t1
}

// errNetnsGone: no process or mount shows the namespace any more.
var errNetnsGone = errors.New("the network namespace is gone")

func (t *Tracker) open(ino, pid, tid uint32) (*nsHandle, error) {
	// Even portlife's own namespace is found by its inode: /proc/self
	// shows the main thread's, which a goroutine locked to it may have
	// moved.
	path, ok := findNetns(ino, pid, tid)
	if !ok {
		return nil, errNetnsGone
	}
	return openHandle(ino, path)
}

// dropNetns forgets every watch in a namespace that cannot be swept.
func (t *Tracker) dropNetns(ino uint32) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i := range t.entries {
		if en := &t.entries[i]; en.live && en.ev.NetNS == ino {
			t.unobservable.Add(1)
			t.forget(int32(i))
		}
	}
	delete(t.ns, ino)
}

// judge places a watch that this round's sweep of its namespace missed.
func (t *Tracker) judge(en *entry, ns *nsState, round uint64) {
	if en.gone || en.seenRound == round {
		return
	}
	en.gone = true
	en.goneHi = ns.t1
	if en.seen {
		en.goneLo = en.lastSeen
	} else {
		// Gone before the first sweep could see it: reused or killed
		// right after its close (an overflow was marked in the sweep).
		en.goneLo = en.ev.Time
	}
}

// finish turns a watch into its released event.
func (t *Tracker) finish(en *entry) event.Event {
	lo, hi := en.goneLo, en.goneHi
	switch {
	case en.seenRound == ^uint64(0):
		return en.ev.released(event.ReleaseOverflow, en.ev.Time)
	case !en.reusedAt.IsZero() && !en.reusedAt.After(hi) && (en.expiry.IsZero() || en.reusedAt.Before(en.expiry)):
		// Before its timer was due, only the connect that took its
		// 4-tuple could have ended it.
		return en.ev.released(event.ReleaseReused, en.reusedAt)
	case !en.reusedAt.IsZero() && !en.reusedAt.After(hi):
		// Its timer was due: it may have fired first. Either way the
		// port was free when the new connect began.
		hi = en.reusedAt
	}
	how := event.ReleaseKilled
	if en.seen && !en.expiry.After(hi) {
		// A timer never fires early: it went in [expiry, hi].
		how = event.ReleaseExpired
		if en.expiry.After(lo) {
			lo = en.expiry
		}
	}
	at := lo.Add(hi.Sub(lo) / 2)
	if at.Before(en.ev.Time) {
		at = en.ev.Time
	}
	return en.ev.released(how, at)
}

// ready says whether a watch found gone can be released now. An overflow
// goes at once: no TIME_WAIT was made, so nothing could reuse it. Else an
// open that reused it may still be on its way: it waits until the stream
// delivered events a grace past its going (a handshake's time), or the
// stream is idle and the grace is over.
func (t *Tracker) ready(en *entry, now, watermark time.Time, idle bool) bool {
	switch {
	case !en.gone:
		return false
	case en.seenRound == ^uint64(0):
		return true
	case !watermark.Before(en.goneHi.Add(t.cfg.Grace)):
		return true
	case idle && now.Sub(en.goneHi) >= t.cfg.Grace:
		return true
	}
	return now.Sub(en.goneHi) >= maxWait
}

// release queues the event for publishing and frees the watch.
func (t *Tracker) release(i int32, r event.Event) {
	t.out = append(t.out, r)
	t.forget(i)
}

func (t *Tracker) forget(i int32) {
	en := &t.entries[i]
	delete(t.byCookie, en.ev.Cookie)
	k := tupleKey{en.ev.NetNS, en.ev.Local, en.ev.Remote}
	if j, ok := t.byTuple[k]; ok && j == i {
		delete(t.byTuple, k)
	}
	if ns := t.ns[en.ev.NetNS]; ns != nil {
		ns.count--
	}
	*en = entry{}
	t.free = append(t.free, i)
	t.pending.Add(-1)
}

// Stats may be read from any goroutine at any time.
func (t *Tracker) Stats() Stats {
	return Stats{
		Tracked:      t.tracked.Load(),
		Pending:      uint64(max(t.pending.Load(), 0)),
		Expired:      t.byRelease[event.ReleaseExpired].Load(),
		Reused:       t.byRelease[event.ReleaseReused].Load(),
		Killed:       t.byRelease[event.ReleaseKilled].Load(),
		Overflow:     t.byRelease[event.ReleaseOverflow].Load(),
		Untracked:    t.untracked.Load(),
		Unobservable: t.unobservable.Load(),
		Unpublished:  t.unpublished.Load(),
		NetnsGone:    t.netnsGone.Load(),
		Sweeps:       t.sweeps.Load(),
		SweepErrors:  t.sweepErrors.Load(),
		SweepTime:    time.Duration(t.sweepTime.Load()),
		Stretched:    t.stretched.Load(),
		Namespaces:   t.namespaces.Load(),
	}
}
