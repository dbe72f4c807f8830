package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/internal/event"
)

// Query selects lifetimes. Its Filter means what trace's does, on stored
// rows; the rest are the query's own.
type Query struct {
	Filter  event.Filter
	Ports   []event.PortRange // local or remote
	Reasons []string          // connect_failed, bind_failed: Event.Reason
	// Since and Until select the lifetimes that held their port at some
	// moment between them, release included; a zero time is open-ended.
	// Since == Until is "who held it at that moment".
	Since, Until time.Time
}

// Reader reads a store, while a Writer writes to it or not.
type Reader struct {
	db *sql.DB
}

// OpenReader opens the store at path read-only. A missing file is an error
// that says so, never a new empty store.
func OpenReader(ctx context.Context, path string) (*Reader, error) {
	if _, err := os.Stat(path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("no store at %s: portlife trace --store %s keeps one", path, path)
		}
		return nil, fmt.Errorf("reading the store: %w", err)
	}
	params := []string{"mode=ro"}
	if _, err := os.Stat(path + "-wal"); errors.Is(err, fs.ErrNotExist) && unix.Access(filepath.Dir(path), unix.W_OK) != nil {
		// No writer has it open (its WAL would be there), and a reader
		// that cannot create the WAL's index beside it (a user reading
		// root's store) could not open it in WAL mode: read the file as
		// it stands.
		params = append(params, "immutable=1")
	}
	db, err := sql.Open("sqlite", dsn(path, params...))
	if err != nil {
		return nil, fmt.Errorf("opening the store %s: %w", path, err)
	}
	var v int
	if err := db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		db.Close()
		return nil, fmt.Errorf("reading the store %s: %w", path, err)
	}
	switch {
	case v == 0:
		db.Close()
		return nil, fmt.Errorf("%s is not a portlife store (no schema version)", path)
	case v > SchemaVersion:
		db.Close()
		return nil, fmt.Errorf("the store %s has schema version %d, newer than this portlife's %d: upgrade portlife", path, v, SchemaVersion)
	}
	return &Reader{db: db}, nil
}

func (r *Reader) Close() error { return r.db.Close() }

// where builds the SQL condition for q and its arguments.
func where(q *Query) (string, []any) {
	var conds []string
	var args []any
	in := func(col string, vals []string) {
		if len(vals) == 0 {
			return
		}
		conds = append(conds, col+" IN ("+strings.TrimSuffix(strings.Repeat("?,", len(vals)), ",")+")")
		for _, v := range vals {
			args = append(args, v)
		}
	}
	ranges := func(cols []string, rs []event.PortRange) {
		if len(rs) == 0 {
			return
		}
		var or []string
		for _, col := range cols {
			for _, r := range rs {
				or = append(or, col+" BETWEEN ? AND ?")
				args = append(args, int(r.Lo), int(r.Hi))
			}
		}
		conds = append(conds, "("+strings.Join(or, " OR ")+")")
	}
	f := &q.Filter
	in("event", names(f.Kinds))
	in("proto", names(f.Protos))
	in("reason", q.Reasons)
	if f.PID != 0 {
		conds, args = append(conds, "pid = ?"), append(args, int64(f.PID))
	}
	if f.Comm != "" {
		conds, args = append(conds, "comm = ?"), append(args, f.Comm)
	}
	if f.Family != 0 {
		conds, args = append(conds, "family = ?"), append(args, f.Family)
	}
	if f.Direction != event.DirectionUnknown {
		conds, args = append(conds, "direction = ?"), append(args, f.Direction.String())
	}
	ranges([]string{"lport"}, f.LocalPorts)
	ranges([]string{"rport"}, f.RemotePorts)
	ranges([]string{"lport", "rport"}, q.Ports)
	if len(f.RemoteNets) > 0 {
		var or []string
		for _, n := range f.RemoteNets {
			lo, hi := netRange(n)
			or = append(or, "raddr_key BETWEEN ? AND ?")
			args = append(args, lo, hi)
		}
		conds = append(conds, "("+strings.Join(or, " OR ")+")")
	}
	if f.EphemeralOnly {
		conds = append(conds, "ephemeral = 1")
	}
	if f.MinDuration > 0 {
		conds, args = append(conds, "(event <> 'close' OR ts_ns - start_ns >= ?)"), append(args, int64(f.MinDuration))
	}
	if !q.Since.IsZero() {
		conds, args = append(conds, "(release_ns IS NULL OR release_ns >= ?)"), append(args, q.Since.UnixNano())
	}
	if !q.Until.IsZero() {
		conds, args = append(conds, "begin_ns <= ?"), append(args, q.Until.UnixNano())
	}
	if len(conds) == 0 {
		return "1", nil
	}
	return strings.Join(conds, " AND "), args
}

func names[T fmt.Stringer](xs []T) []string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = x.String()
	}
	return out
}

// netRange is the first and last address key of n.
func netRange(n netip.Prefix) (lo, hi []byte) {
	bits := n.Bits()
	if n.Addr().Is4() {
		bits += 96
	}
	a := n.Addr().As16()
	l, h := a, a
	for i := bits; i < 128; i++ {
		l[i/8] &^= 0x80 >> (i % 8)
		h[i/8] |= 0x80 >> (i % 8)
	}
	return l[:], h[:]
}

// Lifetimes calls fn with each lifetime q selects, in the order of their
// events' times, as the event that ended it (or its open, while open). The
// Event is reused after fn returns. It returns how many it found.
func (r *Reader) Lifetimes(ctx context.Context, q *Query, fn func(*event.Event) error) (int, error) {
	cond, args := where(q)
	rows, err := r.db.QueryContext(ctx, `SELECT `+columns+` FROM lifetimes WHERE `+cond+` ORDER BY ts_ns, id`, args...)
	if err != nil {
		return 0, fmt.Errorf("querying the store: %w", err)
	}
	defer rows.Close()
	var (
		n   int
		e   event.Event
		row row
	)
	for rows.Next() {
		if err := rows.Scan(row.dest()...); err != nil {
			return n, fmt.Errorf("reading the store: %w", err)
		}
		if err := row.event(&e); err != nil {
			return n, err
		}
		n++
		if err := fn(&e); err != nil {
			return n, err
		}
	}
	return n, rows.Err()
}

// row is one scanned row, in the order of columns.
type row struct {
	kind, proto                      string
	family                           int
	ts                               int64
	start, begin, release            sql.NullInt64
	provisional                      bool
	established                      sql.NullInt64
	pid, tid, uid                    int64
	comm                             string
	thread                           sql.NullString
	cgroup, netns                    int64
	pidSource                        string
	listener                         sql.NullInt64
	laddr                            string
	lport                            int
	raddr                            string
	rport                            int
	raddrKey                         []byte
	direction                        string
	ephemeral                        bool
	cookie                           int64
	preExisting, connected           bool
	tx, rx, txp, rxp, retrans, dests int64
	closedBy                         sql.NullString
	reset, timeWait                  bool
	errno                            int64
	inCall                           bool
	reason                           sql.NullString
}

func (r *row) dest() []any {
	return []any{
		&r.kind, &r.proto, &r.family, &r.ts, &r.start, &r.begin, &r.release, &r.provisional,
		&r.established, &r.pid, &r.tid, &r.uid, &r.comm, &r.thread, &r.cgroup, &r.netns, &r.pidSource, &r.listener,
		&r.laddr, &r.lport, &r.raddr, &r.rport, &r.raddrKey, &r.direction, &r.ephemeral, &r.cookie, &r.preExisting, &r.connected,
		&r.tx, &r.rx, &r.txp, &r.rxp, &r.retrans, &r.dests, &r.closedBy, &r.reset, &r.timeWait,
		&r.errno, &r.inCall, &r.reason,
	}
}

// event rebuilds the Event the row was written from.
func (r *row) event(e *event.Event) error {
	*e = event.Event{}
	var err error
	if e.Kind, err = event.ParseKind(r.kind); err != nil {
		return fmt.Errorf("reading the store: %w", err)
	}
	if e.Proto, err = event.ParseProto(r.proto); err != nil {
		return fmt.Errorf("reading the store: %w", err)
	}
	e.Family = r.family
	e.Time = time.Unix(0, r.ts)
	if r.start.Valid {
		e.Start = time.Unix(0, r.start.Int64)
	}
	if r.established.Valid {
		e.Established = time.Unix(0, r.established.Int64)
	}
	e.PID, e.TID, e.UID = uint32(r.pid), uint32(r.tid), uint32(r.uid)
	copy(e.Comm[:event.MaxCommLen], r.comm)
	if r.thread.Valid {
		copy(e.Thread[:event.MaxCommLen], r.thread.String)
	}
	e.CgroupID, e.NetNS = uint64(r.cgroup), uint32(r.netns)
	e.PIDSource = parseName(pidSources, r.pidSource, event.PIDSourceUnknown)
	e.ListenerPID = uint32(r.listener.Int64)
	la, err1 := netip.ParseAddr(r.laddr)
	ra, err2 := netip.ParseAddr(r.raddr)
	if err := errors.Join(err1, err2); err != nil {
		return fmt.Errorf("reading the store: %w", err)
	}
	e.Local, e.Remote = netip.AddrPortFrom(la, uint16(r.lport)), netip.AddrPortFrom(ra, uint16(r.rport))
	e.Direction = parseName(directions, r.direction, event.DirectionUnknown)
	e.Ephemeral, e.Cookie, e.PreExisting, e.Connected = r.ephemeral, uint64(r.cookie), r.preExisting, r.connected
	e.TxBytes, e.RxBytes = uint64(r.tx), uint64(r.rx)
	e.TxPackets, e.RxPackets, e.Retransmits, e.Destinations = uint32(r.txp), uint32(r.rxp), uint32(r.retrans), uint32(r.dests)
	e.ClosedBy = parseName(closedBys, r.closedBy.String, event.ClosedByUnknown)
	e.Reset, e.TimeWait = r.reset, r.timeWait
	e.Errno, e.InCall = unix.Errno(r.errno), r.inCall
	return nil
}

var (
	pidSources = []event.PIDSource{event.PIDSourceUnknown, event.PIDSourceConnect, event.PIDSourceListener, event.PIDSourceClose,
		event.PIDSourceSocket, event.PIDSourceFDOwner, event.PIDSourceBind, event.PIDSourceListenerFDOwner}
	directions = []event.Direction{event.DirectionUnknown, event.DirectionOutbound, event.DirectionInbound}
	closedBys  = []event.ClosedBy{event.ClosedByUnknown, event.ClosedByLocal, event.ClosedByRemote}
)

func parseName[T fmt.Stringer](all []T, s string, unknown T) T {
	for _, x := range all {
		if x.String() == s {
			return x
		}
	}
	return unknown
}

// TopKeys are what --top ranks by: the stored column of each.
var TopKeys = map[string]string{"comm": "comm", "raddr": "raddr", "rport": "rport"}

// TopRow is one key's churn over the query's window.
type TopRow struct {
	Key      string
	Count    int // lifetimes
	Failed   int // of them, connect_failed and bind_failed
	P50, P90 time.Duration
	P99      time.Duration // lifetimes of the closes whose start was seen
}

// Top ranks the keys (TopKeys) of the lifetimes q selects by how many there
// were, then by name.
func (r *Reader) Top(ctx context.Context, q *Query, by string) ([]TopRow, error) {
	col, ok := TopKeys[by]
	if !ok {
		return nil, fmt.Errorf("cannot rank by %q: want comm, raddr or rport", by)
	}
	cond, args := where(q)
	rows, err := r.db.QueryContext(ctx, `SELECT CAST(`+col+` AS TEXT), event, ts_ns - start_ns FROM lifetimes WHERE `+cond, args...)
	if err != nil {
		return nil, fmt.Errorf("querying the store: %w", err)
	}
	defer rows.Close()
	type acc struct {
		TopRow
		lifetimes []time.Duration
	}
	keys := map[string]*acc{}
	for rows.Next() {
		var key, kind string
		var life sql.NullInt64
		if err := rows.Scan(&key, &kind, &life); err != nil {
			return nil, fmt.Errorf("reading the store: %w", err)
		}
		a := keys[key]
		if a == nil {
			a = &acc{TopRow: TopRow{Key: key}}
			keys[key] = a
		}
		a.Count++
		switch {
		case kind == event.KindConnectFailed.String() || kind == event.KindBindFailed.String():
			a.Failed++
		case kind == event.KindClose.String() && life.Valid:
			a.lifetimes = append(a.lifetimes, time.Duration(life.Int64))
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading the store: %w", err)
	}
	out := make([]TopRow, 0, len(keys))
	for _, a := range keys {
		slices.Sort(a.lifetimes)
		a.P50, a.P90, a.P99 = percentile(a.lifetimes, 50), percentile(a.lifetimes, 90), percentile(a.lifetimes, 99)
		out = append(out, a.TopRow)
	}
	slices.SortFunc(out, func(a, b TopRow) int {
		if a.Count != b.Count {
			return b.Count - a.Count
		}
		return strings.Compare(a.Key, b.Key)
	})
	return out, nil
}

// percentile of sorted values, nearest rank; 0 for none.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[max(i, 0)]
}
