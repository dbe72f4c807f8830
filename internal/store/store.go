// Package store keeps a history of port lifetimes in an embedded SQLite
// database (modernc.org/sqlite: pure Go, so the binary stays static), one
// row per lifetime, for `portlife query` and for anyone with the sqlite3
// CLI. Writer is a stream consumer: it runs behind a queue of its own, so a
// slow disk costs rows from that queue, counted, and never stalls tracing.
// Reader answers queries, while a Writer writes or not.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	_ "modernc.org/sqlite" // registers the "sqlite" driver

	"github.com/portlife/portlife/internal/event"
)

// TimeWait is how long Linux keeps a TCP port in TIME_WAIT (TCP_TIMEWAIT_LEN,
// fixed at build time). Until the kernel's release of the port is reported,
// a close in TIME_WAIT holds its port this long after it.
const TimeWait = 60 * time.Second

// Config says where the store is and how much it keeps.
type Config struct {
	Path string
	// MaxAge: lifetimes released longer ago than this are deleted.
	MaxAge time.Duration
	// MaxSize bounds the database file and its write-ahead log, in bytes.
	// The WAL is truncated after a commit once past an eighth of it, and
	// room for the largest WAL seen is kept: once the database passes
	// seven eighths of the budget less that room, free pages are given
	// back, then the oldest rows deleted, down to two thirds of it.
	MaxSize int64
	// FlushInterval bounds how long a row waits before it is committed:
	// what a crash can lose.
	FlushInterval time.Duration
	// BatchSize: a transaction commits at least this often, in events.
	BatchSize int
	// RetentionInterval: how often rows past MaxAge are looked for. The
	// size is checked at every commit.
	RetentionInterval time.Duration
	// Now is the clock, for tests; nil is time.Now.
	Now func() time.Time
}

// DefaultConfig keeps a week, in at most 1 GiB.
func DefaultConfig(path string) Config {
	return Config{
		Path:              path,
		MaxAge:            7 * 24 * time.Hour,
		MaxSize:           1 << 30,
		FlushInterval:     time.Second,
		BatchSize:         4096,
		RetentionInterval: time.Minute,
	}
}

// MinSize is the smallest budget: a few batches of rows, and the WAL.
const MinSize = 1 << 20

// Validate reports the first setting the store cannot work with.
func (c *Config) Validate() error {
	switch {
	case c.Path == "":
		return errors.New("the store needs a path")
	case c.MaxAge <= 0:
		return fmt.Errorf("store max age %v: want a positive duration", c.MaxAge)
	case c.MaxSize < MinSize:
		return fmt.Errorf("store max size %d bytes: want at least %d (1MiB)", c.MaxSize, MinSize)
	case c.FlushInterval <= 0 || c.BatchSize <= 0 || c.RetentionInterval <= 0:
		return errors.New("store flush interval, batch size and retention interval must be positive")
	}
	return nil
}

// Stats counts what the writer did. Rows lost to a full queue are the
// stream's to count (stream.ConsumerStats.Dropped).
type Stats struct {
	Written     uint64 // rows inserted (an open, then its close, is two)
	Failed      uint64 // events in batches whose transaction failed: lost
	Batches     uint64 // transactions committed
	DeletedAge  uint64 // rows deleted for being older than MaxAge
	DeletedSize uint64 // rows deleted to stay under MaxSize
	Bytes       int64  // the database's size at the last commit
}

// Writer writes events into the store in batched transactions. Write,
// Flush and Close are for one goroutine (the stream's subscriber); Stats
// may be called from any.
type Writer struct {
	cfg  Config
	db   *sql.DB
	lock *os.File // flocked: one writer per store
	now  func() time.Time

	pending       []event.Event // copies: the stream reuses what it passes
	plan          []rowPlan     // per pending event: what its statements may skip
	openAt        map[uint64]int
	lastCommit    time.Time
	lastRetention time.Time
	pageSize      int64
	walPeak       int64 // the largest WAL after a commit: room the database leaves it

	written, failed, batches, deletedAge, deletedSize atomic.Uint64
	bytes                                             atomic.Int64
}

// dsn opens path with the pragmas every connection needs. WAL lets readers
// (portlife query, the sqlite3 CLI) read while the writer writes; with it,
// synchronous=NORMAL loses nothing to a crash of the process, only the last
// commits to a crash of the host. auto_vacuum=INCREMENTAL lets retention
// give freed pages back to the file system; it takes effect on a new store.
func dsn(path string, extra ...string) string {
	p := []string{"_pragma=busy_timeout(5000)"}
	return "file:" + path + "?" + strings.Join(append(p, extra...), "&")
}

// Open opens or creates the store at cfg.Path, migrates it to
// SchemaVersion, and marks the lifetimes a previous run left open (see
// end_unseen in the README).
func Open(ctx context.Context, cfg Config) (*Writer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	lock, err := lockStore(cfg.Path)
	if err != nil {
		return nil, err
	}
	db, err := sql.Open("sqlite", dsn(cfg.Path,
		"_pragma=auto_vacuum(INCREMENTAL)", "_pragma=journal_mode(WAL)", "_pragma=synchronous(NORMAL)"))
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("opening the store %s: %w", cfg.Path, err)
	}
	// One connection: one writer, and its pragmas hold for every statement.
	db.SetMaxOpenConns(1)
	// A transaction's pages all go to the WAL before a checkpoint can
	// truncate it: a batch must stay a small part of the budget, at most a
	// row (a few hundred bytes, and a page in each index) per 16 KiB of it.
	cfg.BatchSize = int(min(int64(cfg.BatchSize), max(16, cfg.MaxSize>>14)))
	w := &Writer{cfg: cfg, db: db, lock: lock, now: cfg.Now, pending: make([]event.Event, 0, cfg.BatchSize),
		openAt: make(map[uint64]int)}
	if w.now == nil {
		w.now = time.Now
	}
	if err := w.init(ctx); err != nil {
		db.Close()
		lock.Close()
		return nil, fmt.Errorf("opening the store %s: %w", cfg.Path, err)
	}
	return w, nil
}

// lockStore takes the store for one writer: a second would take the
// first's open lifetimes for ones a dead run left open. The lock is flock
// on a file beside it, which SQLite's own (fcntl) locks leave alone, and
// the kernel drops with the process, however it ends.
func lockStore(path string) (*os.File, error) {
	f, err := os.OpenFile(path+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening the store: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("the store %s is in use by another portlife trace: one writer per store", path)
		}
		return nil, fmt.Errorf("locking the store %s: %w", path, err)
	}
	return f, nil
}

func (w *Writer) init(ctx context.Context) error {
	if err := db0(ctx, w.db); err != nil {
		return err
	}
	if err := migrate(ctx, w.db); err != nil {
		return err
	}
	if err := w.db.QueryRowContext(ctx, "PRAGMA page_size").Scan(&w.pageSize); err != nil {
		return err
	}
	// Keep the WAL a small part of the budget: checkpoint every
	// sixteenth of it (retain truncates it past an eighth).
	walPages := max(16, min(1000, w.cfg.MaxSize/w.pageSize/16))
	if _, err := w.db.ExecContext(ctx, fmt.Sprintf("PRAGMA wal_autocheckpoint = %d; PRAGMA journal_size_limit = %d",
		walPages, w.cfg.MaxSize/8)); err != nil {
		return err
	}
	// Lifetimes still open when the last run ended, without a close: their
	// end was not seen. They end at the last write, unless this run finds
	// the socket again (an open with the same cookie reopens the row).
	if _, err := w.db.ExecContext(ctx, `UPDATE lifetimes SET end_unseen = 1,
		release_ns = coalesce((SELECT value FROM meta WHERE key = 'last_write_ns'), ts_ns)
		WHERE event = 'open' AND release_ns IS NULL`); err != nil {
		return fmt.Errorf("closing the lifetimes the last run left open: %w", err)
	}
	now := w.now()
	w.lastCommit, w.lastRetention = now, now
	return w.retain(ctx, now, true)
}

// db0 checks that the file is a database before anything writes to it.
func db0(ctx context.Context, db *sql.DB) error {
	var mode string
	if err := db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return err
	}
	if mode != "wal" {
		return fmt.Errorf("journal mode is %s, not wal: is another program holding the store?", mode)
	}
	return nil
}

// Write queues a copy of e for the next transaction, and commits when the
// batch is full or the flush interval has passed.
func (w *Writer) Write(e *event.Event) error {
	w.pending = append(w.pending, *e)
	// A reader that never goes idle never calls Flush: look at the clock
	// every 256 events so rows still wait at most about FlushInterval.
	if n := len(w.pending); n >= w.cfg.BatchSize || n%256 == 0 && w.now().Sub(w.lastCommit) >= w.cfg.FlushInterval {
		return w.commit()
	}
	return nil
}

// Flush commits the batch once the flush interval has passed since the last
// commit: the reader calls it whenever it is idle, far more often.
func (w *Writer) Flush() error {
	if len(w.pending) == 0 || w.now().Sub(w.lastCommit) < w.cfg.FlushInterval {
		return nil
	}
	return w.commit()
}

// Close commits what is pending and closes the database.
func (w *Writer) Close() error {
	var err error
	if len(w.pending) > 0 {
		err = w.commit()
	}
	return errors.Join(err, w.db.Close(), w.lock.Close())
}

// Stats reads the counters; safe from any goroutine.
func (w *Writer) Stats() Stats {
	return Stats{
		Written:     w.written.Load(),
		Failed:      w.failed.Load(),
		Batches:     w.batches.Load(),
		DeletedAge:  w.deletedAge.Load(),
		DeletedSize: w.deletedSize.Load(),
		Bytes:       w.bytes.Load(),
	}
}

const columns = `event, proto, family, ts_ns, start_ns, begin_ns, release_ns, release_provisional,
	established_ns, pid, tid, uid, comm, thread, cgroup_id, netns, pid_source, listener_pid,
	laddr, lport, raddr, rport, raddr_key, direction, ephemeral, sock_cookie, pre_existing, connected,
	tx_bytes, rx_bytes, tx_packets, rx_packets, retransmits, destinations, closed_by, reset, time_wait,
	errno, in_call, reason`

const insertSQL = `INSERT INTO lifetimes (` + columns + `) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`

// commit writes the batch in one transaction. A batch that fails is lost,
// and counted: the queue behind it must keep moving.
func (w *Writer) commit() error {
	ctx := context.Background()
	n := len(w.pending)
	err := w.writeBatch(ctx)
	w.pending = w.pending[:0]
	now := w.now()
	w.lastCommit = now
	if err != nil {
		w.failed.Add(uint64(n))
		return fmt.Errorf("writing %d events to the store: %w", n, err)
	}
	w.batches.Add(1)
	return w.retain(ctx, now, now.Sub(w.lastRetention) >= w.cfg.RetentionInterval)
}

func (w *Writer) writeBatch(ctx context.Context) error {
	tx, err := w.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() // after Commit, a no-op
	var st stmts
	defer st.close()
	for i, q := range []string{insertSQL, reopenSQL, replaceOpenSQL, releasedSQL} {
		if *st.at(i), err = tx.PrepareContext(ctx, q); err != nil {
			return err
		}
	}
	var written uint64
	w.planBatch()
	for i := range w.pending {
		ok, err := st.apply(ctx, &w.pending[i], w.plan[i])
		if err != nil {
			return err
		}
		if ok {
			written++
		}
	}
	if len(w.pending) > 0 {
		last := w.pending[len(w.pending)-1].Time.UnixNano()
		if _, err := tx.ExecContext(ctx, `INSERT INTO meta (key, value) VALUES ('last_write_ns', ?)
			ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)`, last); err != nil {
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	w.written.Add(written)
	return nil
}

const (
	reopenSQL      = `UPDATE lifetimes SET release_ns = NULL, end_unseen = 0 WHERE sock_cookie = ? AND event = 'open'`
	replaceOpenSQL = `DELETE FROM lifetimes WHERE sock_cookie = ? AND event = 'open'`
	// The kernel's release of a port a close left in TIME_WAIT, in place of
	// the provisional close + TimeWait.
	releasedSQL = `UPDATE lifetimes SET release_ns = ?, release_provisional = 0
		WHERE sock_cookie = ? AND release_provisional = 1`
)

// rowPlan says which of an event's statements a batch can do without.
type rowPlan uint8

const (
	rowNormal rowPlan = iota
	// rowSuperseded: an open whose close is in the same batch; the close's
	// row replaces it, so it is not written.
	rowSuperseded
	// rowNoOpenRow: a close whose open was superseded: there is no open row
	// to delete.
	rowNoOpenRow
)

// planBatch pairs each open with its close in the same batch, by cookie.
// Most churned connections open and close within one flush interval, so
// their lifetime costs one INSERT rather than an INSERT, a DELETE and a
// second INSERT. Only sockets new since tracing started are paired: their
// cookies cannot have a row from before; a socket found again after a
// restart (PreExisting) may have one, and keeps every statement.
func (w *Writer) planBatch() {
	clear(w.openAt)
	n := len(w.pending)
	w.plan = slices.Grow(w.plan[:0], n)[:n] // reused: no allocation per batch
	clear(w.plan)
	for i := range w.pending {
		e := &w.pending[i]
		if e.Cookie == 0 || e.PreExisting {
			continue
		}
		switch e.Kind {
		case event.KindOpen:
			w.openAt[e.Cookie] = i
		case event.KindClose, event.KindConnectFailed, event.KindBindFailed:
			if j, ok := w.openAt[e.Cookie]; ok {
				w.plan[j], w.plan[i] = rowSuperseded, rowNoOpenRow
				delete(w.openAt, e.Cookie)
			}
		}
	}
}

// stmts are one batch's prepared statements.
type stmts struct{ insert, reopen, replaceOpen, released *sql.Stmt }

func (s *stmts) at(i int) **sql.Stmt {
	return [...]**sql.Stmt{&s.insert, &s.reopen, &s.replaceOpen, &s.released}[i]
}

func (s *stmts) close() {
	for i := range 4 {
		if p := *s.at(i); p != nil {
			p.Close()
		}
	}
}

// apply turns one event into the row of its lifetime, and reports whether
// it inserted one.
//
// An open inserts a row that stays open (event 'open', release_ns NULL)
// until its socket's close replaces it, matched by the socket's cookie,
// which the kernel never reuses while the host runs. An open for a socket
// that already has its row (found again after a restart) keeps that row.
func (s *stmts) apply(ctx context.Context, e *event.Event, plan rowPlan) (bool, error) {
	switch e.Kind {
	case event.KindOpen:
		if plan == rowSuperseded {
			return false, nil
		}
		// Only a socket from before tracing can have its row already.
		if e.Cookie != 0 && e.PreExisting {
			res, err := s.reopen.ExecContext(ctx, int64(e.Cookie))
			if err != nil {
				return false, err
			}
			if n, _ := res.RowsAffected(); n > 0 {
				return false, nil
			}
		}
	case event.KindClose, event.KindConnectFailed, event.KindBindFailed:
		if e.Cookie != 0 && plan != rowNoOpenRow {
			if _, err := s.replaceOpen.ExecContext(ctx, int64(e.Cookie)); err != nil {
				return false, err
			}
		}
	case event.KindReleased:
		// Matched to its close by cookie; its Time is the release.
		_, err := s.released.ExecContext(ctx, e.Time.UnixNano(), int64(e.Cookie))
		return false, err
	default:
		return false, nil // pressure, summary: not lifetimes
	}
	_, err := s.insert.ExecContext(ctx, rowArgs(e)...)
	return err == nil, err
}

// rowArgs are e's values in the order of columns.
func rowArgs(e *event.Event) []any {
	ts := e.Time.UnixNano()
	var start, established, release, listener, closedBy, reason any
	begin := ts
	switch {
	case !e.Start.IsZero():
		start = e.Start.UnixNano()
		begin = e.Start.UnixNano()
	case e.PreExisting:
		begin = 0 // before tracing: from the beginning, as far as we know
	}
	if !e.Established.IsZero() {
		established = e.Established.UnixNano()
	}
	provisional := false
	if e.Kind != event.KindOpen {
		release = ts
		if e.TimeWait {
			release, provisional = e.Time.Add(TimeWait).UnixNano(), true
		}
	}
	if e.ListenerPID != 0 {
		listener = int64(e.ListenerPID)
	}
	if e.Kind == event.KindClose && e.Proto == event.ProtoTCP {
		closedBy = e.ClosedBy.String()
	}
	if e.Kind.Failed() {
		reason = e.Reason()
	}
	var thread any
	if t := e.ThreadName(); t != nil {
		thread = string(t)
	}
	return []any{
		e.Kind.String(), e.Proto.String(), e.Family, ts, start, begin, release, provisional,
		established, int64(e.PID), int64(e.TID), int64(e.UID), e.Comm.String(), thread, int64(e.CgroupID), int64(e.NetNS), e.PIDSource.String(), listener,
		e.Local.Addr().String(), int(e.Local.Port()), e.Remote.Addr().String(), int(e.Remote.Port()), addrKey(e.Remote.Addr()), e.Direction.String(), e.Ephemeral, int64(e.Cookie), e.PreExisting, e.Connected,
		int64(e.TxBytes), int64(e.RxBytes), int64(e.TxPackets), int64(e.RxPackets), int64(e.Retransmits), int64(e.Destinations), closedBy, e.Reset, e.TimeWait,
		int64(e.Errno), e.InCall, reason,
	}
}

// addrKey is an address as 16 bytes, IPv4 mapped into IPv6, so that a
// network is a range of keys whatever its family.
func addrKey(a netip.Addr) []byte {
	if !a.IsValid() {
		a = netip.IPv6Unspecified()
	}
	b := a.As16()
	return b[:]
}

// retain deletes what is past the budget: by size after every commit, by
// age every RetentionInterval (byAge).
func (w *Writer) retain(ctx context.Context, now time.Time, byAge bool) error {
	if byAge {
		w.lastRetention = now
		res, err := w.db.ExecContext(ctx, `DELETE FROM lifetimes WHERE release_ns < ?`, now.Add(-w.cfg.MaxAge).UnixNano())
		if err != nil {
			return fmt.Errorf("deleting old lifetimes: %w", err)
		}
		if n, _ := res.RowsAffected(); n > 0 {
			w.deletedAge.Add(uint64(n))
			if err := w.vacuum(ctx); err != nil {
				return err
			}
		}
	}
	wal := w.walSize()
	w.walPeak = max(w.walPeak, wal)
	if wal > w.cfg.MaxSize/8 {
		if err := w.checkpoint(ctx); err != nil {
			return err
		}
	}
	limit := max(w.cfg.MaxSize*7/8-w.walPeak, w.cfg.MaxSize/4)
	db, err := w.dbSize(ctx)
	if err != nil {
		return err
	}
	if db > limit {
		// Pages freed by replaced open rows first, then the oldest rows.
		if err := w.vacuum(ctx); err != nil {
			return err
		}
		if db, err = w.dbSize(ctx); err != nil {
			return err
		}
		if db > limit {
			if err := w.shrink(ctx, db, limit*2/3); err != nil {
				return err
			}
		}
	}
	used, err := w.size(ctx)
	if err != nil {
		return err
	}
	w.bytes.Store(used)
	return nil
}

// size is what the store takes on disk: the database's pages, free ones
// included, and the WAL.
func (w *Writer) size(ctx context.Context) (int64, error) {
	db, err := w.dbSize(ctx)
	return db + w.walSize(), err
}

func (w *Writer) dbSize(ctx context.Context) (int64, error) {
	var pages int64
	if err := w.db.QueryRowContext(ctx, "PRAGMA page_count").Scan(&pages); err != nil {
		return 0, fmt.Errorf("reading the store's size: %w", err)
	}
	return pages * w.pageSize, nil
}

func (w *Writer) walSize() int64 {
	if fi, err := os.Stat(w.cfg.Path + "-wal"); err == nil {
		return fi.Size()
	}
	return 0
}

// shrink deletes the oldest rows, in the proportion the database (used
// bytes) is over target, then gives the freed pages back.
func (w *Writer) shrink(ctx context.Context, used, target int64) error {
	var lo, hi sql.NullInt64
	if err := w.db.QueryRowContext(ctx, "SELECT min(id), max(id) FROM lifetimes").Scan(&lo, &hi); err != nil {
		return fmt.Errorf("deleting rows over the size budget: %w", err)
	}
	if !lo.Valid {
		return nil // nothing to delete: the WAL alone, checkpointed below
	}
	rows := hi.Int64 - lo.Int64 + 1
	n := rows*(used-target)/used + 1
	res, err := w.db.ExecContext(ctx, "DELETE FROM lifetimes WHERE id < ?", lo.Int64+n)
	if err != nil {
		return fmt.Errorf("deleting rows over the size budget: %w", err)
	}
	if n, _ := res.RowsAffected(); n > 0 {
		w.deletedSize.Add(uint64(n))
	}
	return w.vacuum(ctx)
}

// vacuum returns free pages to the file system, then checkpoints the WAL so
// that the file shrinks now and the log is truncated.
func (w *Writer) vacuum(ctx context.Context) error {
	if _, err := w.db.ExecContext(ctx, "PRAGMA incremental_vacuum"); err != nil {
		return fmt.Errorf("vacuuming the store: %w", err)
	}
	return w.checkpoint(ctx)
}

// checkpoint copies the WAL into the database and truncates it. A reader
// holding an old snapshot makes it partial (busy): the WAL is then
// truncated at a later one.
func (w *Writer) checkpoint(ctx context.Context) error {
	if _, err := w.db.ExecContext(ctx, "PRAGMA wal_checkpoint(TRUNCATE)"); err != nil {
		return fmt.Errorf("checkpointing the store: %w", err)
	}
	return nil
}
