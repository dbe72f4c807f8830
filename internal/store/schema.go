package store

import (
	"context"
	"database/sql"
	"fmt"
)

// SchemaVersion is the version this build writes and reads, kept in the
// database's user_version. A newer store is refused rather than misread.
const SchemaVersion = 1

// migrations[i] takes a store from version i to i+1. Each runs in a
// transaction of its own, with the user_version it reaches, so a store is
// never left between two versions. Append; never edit one that shipped.
//
// Times are Unix nanoseconds, so `datetime(ts_ns/1e9, 'unixepoch')` reads
// them in the sqlite3 CLI. Enums are their JSON words, as in the events.
var migrations = []string{
	// 0 → 1: one row per port lifetime.
	`CREATE TABLE lifetimes (
		id                  INTEGER PRIMARY KEY,
		event               TEXT    NOT NULL, -- open (still open), close, connect_failed, bind_failed
		proto               TEXT    NOT NULL,
		family              INTEGER NOT NULL,
		ts_ns               INTEGER NOT NULL, -- the event's ts: the close or the failure; for open, the open
		start_ns            INTEGER,          -- the event's start; NULL when not seen
		begin_ns            INTEGER NOT NULL, -- the interval's start: start_ns, 0 for a socket from before tracing, else ts_ns
		release_ns          INTEGER,          -- when the port was free again: ts_ns, or after TIME_WAIT; NULL while open
		release_provisional INTEGER NOT NULL DEFAULT 0, -- 1: release_ns is ts_ns + 60s, TCP's TIME_WAIT, not yet the kernel's
		end_unseen          INTEGER NOT NULL DEFAULT 0, -- 1: portlife stopped while it was open; release_ns is then its last write
		established_ns      INTEGER,
		pid                 INTEGER NOT NULL,
		tid                 INTEGER NOT NULL,
		uid                 INTEGER NOT NULL,
		comm                TEXT    NOT NULL,
		thread              TEXT,
		cgroup_id           INTEGER NOT NULL,
		netns               INTEGER NOT NULL,
		pid_source          TEXT    NOT NULL,
		listener_pid        INTEGER,
		laddr               TEXT    NOT NULL,
		lport               INTEGER NOT NULL,
		raddr               TEXT    NOT NULL,
		rport               INTEGER NOT NULL,
		raddr_key           BLOB    NOT NULL, -- raddr as 16 bytes (IPv4 mapped into IPv6), for CIDR ranges
		direction           TEXT    NOT NULL,
		ephemeral           INTEGER NOT NULL,
		sock_cookie         INTEGER NOT NULL,
		pre_existing        INTEGER NOT NULL,
		connected           INTEGER NOT NULL,
		tx_bytes            INTEGER NOT NULL DEFAULT 0,
		rx_bytes            INTEGER NOT NULL DEFAULT 0,
		tx_packets          INTEGER NOT NULL DEFAULT 0,
		rx_packets          INTEGER NOT NULL DEFAULT 0,
		retransmits         INTEGER NOT NULL DEFAULT 0,
		destinations        INTEGER NOT NULL DEFAULT 0,
		closed_by           TEXT,
		reset               INTEGER NOT NULL DEFAULT 0,
		time_wait           INTEGER NOT NULL DEFAULT 0,
		errno               INTEGER NOT NULL DEFAULT 0,
		in_call             INTEGER NOT NULL DEFAULT 0,
		reason              TEXT
	);
	CREATE INDEX lifetimes_lport ON lifetimes(lport);
	CREATE INDEX lifetimes_rport ON lifetimes(rport);
	CREATE INDEX lifetimes_raddr ON lifetimes(raddr_key);
	CREATE INDEX lifetimes_pid ON lifetimes(pid);
	CREATE INDEX lifetimes_comm ON lifetimes(comm);
	CREATE INDEX lifetimes_begin ON lifetimes(begin_ns);
	CREATE INDEX lifetimes_release ON lifetimes(release_ns);
	-- The writer finds a socket's open row, and its TIME_WAIT row, by cookie.
	CREATE INDEX lifetimes_open ON lifetimes(sock_cookie) WHERE event = 'open';
	CREATE INDEX lifetimes_time_wait ON lifetimes(sock_cookie) WHERE release_provisional = 1;
	CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;`,
}

// migrate brings the store to SchemaVersion.
func migrate(ctx context.Context, db *sql.DB) error {
	var v int
	if err := db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return fmt.Errorf("reading the schema version: %w", err)
	}
	if v > SchemaVersion {
		return fmt.Errorf("the store has schema version %d, newer than this portlife's %d: upgrade portlife", v, SchemaVersion)
	}
	for ; v < SchemaVersion; v++ {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, migrations[v]); err != nil {
			tx.Rollback()
			return fmt.Errorf("migrating the store to version %d: %w", v+1, err)
		}
		// PRAGMA takes no bound parameters; v+1 is ours.
		if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", v+1)); err != nil {
			tx.Rollback()
			return fmt.Errorf("migrating the store to version %d: %w", v+1, err)
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("migrating the store to version %d: %w", v+1, err)
		}
	}
	return nil
}
