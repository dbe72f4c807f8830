package sink

import (
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/portlife/portlife/internal/encode"
	"github.com/portlife/portlife/internal/event"
)

// fileSink appends NDJSON to a file. Records are buffered whole and written
// at each flush (every --flush-interval) or when the buffer fills; a write
// the disk cannot take whole is cut back to the last whole line
// (ftruncate), so a line is never split, within a file or across a
// rotation, and its records are counted dropped (disk_full, write_failed).
//
// Rotation renames PATH to PATH.1 (PATH.1 to PATH.2, and so on, keeping
// keep of them, gzip-compressed if asked) before the file would pass
// max_size, or at the first flush after it is max_age old. Reopen (SIGHUP)
// closes and reopens PATH at the next write or flush, for logrotate.
type fileSink struct {
	spec Spec
	enc  encode.JSON
	rec  []byte

	f      *os.File
	size   int64     // bytes in the file
	opened time.Time // when the file was created or reopened
	synced time.Time
	buf    []byte // whole records not yet written
	nbuf   int    // how many

	reopen atomic.Bool
	counters
}

const fileBuffer = 256 << 10

func openFile(spec Spec) (*fileSink, error) {
	s := &fileSink{spec: spec, buf: make([]byte, 0, fileBuffer)}
	if err := s.open(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *fileSink) open() error {
	f, err := os.OpenFile(s.spec.Path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return err // it names the file
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("opening %s: %w", s.spec.Path, err)
	}
	s.f, s.size, s.opened, s.synced = f, fi.Size(), time.Now(), time.Now()
	return nil
}

func (s *fileSink) Name() string { return s.spec.Name() }
func (s *fileSink) Stats() Stats { return s.counters.stats(s.spec.Name()) }

// QueueEvents: the file sink's memory queue is the stream's, in events.
func (s *fileSink) QueueEvents() int { return max(s.spec.Queue/eventSize, 1) }

// Reopen asks the sink to reopen its file at its next write or flush. It is
// safe to call from any goroutine (a SIGHUP handler).
func (s *fileSink) Reopen() { s.reopen.Store(true) }

func (s *fileSink) Write(e *event.Event) error {
	s.rec = s.enc.Append(s.rec[:0], e)
	var err error
	if s.spec.MaxSize > 0 && s.size+int64(len(s.buf)+len(s.rec)) > s.spec.MaxSize && s.size+int64(len(s.buf)) > 0 {
		err = s.rotate()
	} else if len(s.buf)+len(s.rec) > cap(s.buf) {
		err = s.write()
	}
	s.buf = append(s.buf, s.rec...)
	s.nbuf++
	s.queued.Add(1)
	return err
}

func (s *fileSink) Flush() error {
	var err error
	switch {
	case s.reopen.Swap(false):
		err = s.reopenFile()
	case s.spec.MaxAge > 0 && time.Since(s.opened) >= s.spec.MaxAge && s.size+int64(len(s.buf)) > 0:
		err = s.rotate()
	default:
		err = s.write()
	}
	if p := s.spec.Fsync; s.f != nil && (p.Always || !p.Never && p.Every > 0 && time.Since(s.synced) >= p.Every) {
		s.synced = time.Now()
		if serr := s.f.Sync(); serr != nil {
			s.setErr(serr)
			err = errors.Join(err, serr)
		}
	}
	return err
}

// write hands the buffered records to the file, whole or not at all.
func (s *fileSink) write() error {
	if len(s.buf) == 0 {
		return nil
	}
	n := s.nbuf
	s.queued.Add(-int64(n))
	buf := s.buf
	s.buf, s.nbuf = s.buf[:0], 0
	if s.f == nil { // a reopen or rotation failed: try again now
		if err := s.open(); err != nil {
			s.drop(DropWriteFailed, n, err)
			return err
		}
	}
	w, err := s.f.Write(buf)
	if err == nil {
		s.size += int64(w)
		s.sent.Add(uint64(n))
		return nil
	}
	if w > 0 {
		// No partial line stays behind: the next write starts a line.
		if terr := s.f.Truncate(s.size); terr != nil {
			err = errors.Join(err, terr)
		}
	}
	reason := DropWriteFailed
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		reason = DropDiskFull
	}
	err = fmt.Errorf("writing %s: %w", s.spec.Path, err)
	s.drop(reason, n, err)
	return err
}

func (s *fileSink) reopenFile() error {
	werr := s.write()
	if s.f != nil {
		s.closeFile()
	}
	if err := s.open(); err != nil {
		s.setErr(err)
		return errors.Join(werr, err)
	}
	return werr
}

func (s *fileSink) closeFile() error {
	var err error
	if !s.spec.Fsync.Never {
		err = s.f.Sync()
	}
	err = errors.Join(err, s.f.Close())
	s.f = nil
	return err
}

// rotate writes what is buffered, shifts the rotated files up by one and
// starts a new file.
func (s *fileSink) rotate() error {
	err := s.write()
	if s.f != nil {
		err = errors.Join(err, s.closeFile())
	}
	suffix := ""
	if s.spec.Compress {
		suffix = ".gz"
	}
	name := func(i int) string { return s.spec.Path + "." + strconv.Itoa(i) + suffix }
	os.Remove(name(s.spec.Keep))
	for i := s.spec.Keep - 1; i >= 1; i-- {
		if rerr := os.Rename(name(i), name(i+1)); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			err = errors.Join(err, rerr)
		}
	}
	if rerr := os.Rename(s.spec.Path, s.spec.Path+".1"); rerr != nil {
		err = errors.Join(err, fmt.Errorf("rotating %s: %w", s.spec.Path, rerr))
	} else if s.spec.Compress {
		if cerr := compress(s.spec.Path+".1", name(1)); cerr != nil {
			err = errors.Join(err, fmt.Errorf("compressing %s.1: %w", s.spec.Path, cerr))
		}
	}
	if oerr := s.open(); oerr != nil {
		err = errors.Join(err, oerr)
	}
	if err != nil {
		s.setErr(err)
	}
	return err
}

// compress gzips src into dst and removes src. A failure leaves src as it
// was: the lines stay, uncompressed.
func compress(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return err
	}
	zw := gzip.NewWriter(out)
	_, err = io.Copy(zw, in)
	err = errors.Join(err, zw.Close(), out.Sync(), out.Close())
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Remove(src)
}

func (s *fileSink) Close() error {
	err := s.write()
	if s.f != nil {
		err = errors.Join(err, s.closeFile())
	}
	return err
}
