package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/portlife/portlife/internal/store"
	"github.com/portlife/portlife/internal/stream"
)

// storeQueue is the store's queue, in events (about 300 bytes each): a
// second or more of a heavy churn (5,000 connections/s traced on both
// sides is 20,000 events/s) while a commit or a checkpoint waits for the
// disk.
const storeQueue = 32 << 10

// storeOptions is `trace --store` and its budget.
type storeOptions struct {
	cfg store.Config // Path "" when off
}

func addStoreFlags(fs *pflag.FlagSet, o *storeOptions) {
	o.cfg = store.DefaultConfig("")
	fs.StringVar(&o.cfg.Path, "store", "", "also keep every lifetime in this SQLite database, for portlife query (e.g. /var/lib/portlife/history.db)")
	fs.Var(durationValue{&o.cfg.MaxAge}, "store-max-age", "delete lifetimes from the store once released this long ago")
	fs.Var(sizeValue{&o.cfg.MaxSize}, "store-max-size", "keep the store (database and WAL) under this size, deleting the oldest lifetimes, e.g. 1GiB or 200MiB")
}

// check reports a budget the store cannot work with, as a usage error.
func (o *storeOptions) check() error {
	if o.cfg.Path == "" {
		return nil
	}
	return o.cfg.Validate()
}

// openStore opens the store, if --store was given: before the tracer
// loads, so that a store it cannot write costs no load.
func openStore(ctx context.Context, o storeOptions, log *zap.Logger) (*store.Writer, error) {
	if o.cfg.Path == "" {
		return nil, nil
	}
	w, err := store.Open(ctx, o.cfg)
	if err != nil {
		return nil, err
	}
	log.Info("keeping history", zap.String("store", o.cfg.Path), zap.Duration("max_age", o.cfg.MaxAge),
		zap.Int64("max_size", o.cfg.MaxSize), zap.Duration("flush_interval", o.cfg.FlushInterval))
	return w, nil
}

func subscribeStore(s *stream.Stream, w *store.Writer) {
	if w != nil {
		s.Subscribe("store", w, storeQueue)
	}
}

// storeFields are the store's counters, as one log field.
func storeFields(w *store.Writer) []zap.Field {
	if w == nil {
		return nil
	}
	st := w.Stats()
	return []zap.Field{zap.Dict("store",
		zap.Uint64("rows_written", st.Written),
		zap.Uint64("batches", st.Batches),
		zap.Uint64("rows_failed", st.Failed),
		zap.Uint64("deleted_by_age", st.DeletedAge),
		zap.Uint64("deleted_by_size", st.DeletedSize),
		zap.Int64("bytes", st.Bytes),
	)}
}

// sizeValue is a size in bytes, written like 1GiB, 200MiB or 512KiB.
type sizeValue struct{ p *int64 }

func (v sizeValue) Set(s string) error {
	n, err := parseSize(s)
	if err != nil {
		return err
	}
	*v.p = n
	return nil
}

func (v sizeValue) String() string {
	switch n := *v.p; {
	case n >= 1<<30 && n%(1<<30) == 0:
		return strconv.FormatInt(n>>30, 10) + "GiB"
	case n >= 1<<20 && n%(1<<20) == 0:
		return strconv.FormatInt(n>>20, 10) + "MiB"
	case n >= 1<<10 && n%(1<<10) == 0:
		return strconv.FormatInt(n>>10, 10) + "KiB"
	}
	return strconv.FormatInt(*v.p, 10)
}

func (v sizeValue) Type() string { return "size" }

// parseSize reads "1GiB", "200MiB", "512KiB", "1G" or a byte count: at most
// 1TiB.
func parseSize(s string) (int64, error) {
	num, mult := strings.TrimSpace(s), int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40}} {
		if n, ok := strings.CutSuffix(num, u.suffix); ok {
			num, mult = n, u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a size such as 1GiB or 200MiB", s)
	}
	if n > (1<<40)/mult {
		return 0, fmt.Errorf("%s is above 1TiB", s)
	}
	return n * mult, nil
}

// closeStore commits what the store holds: after the stream is closed, so
// that its queue was written first.
func closeStore(w *store.Writer) error {
	if w == nil {
		return nil
	}
	return w.Close()
}
