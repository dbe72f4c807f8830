package sink

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// diskBuf is a network sink's disk buffer (buffer_dir): records that did
// not fit in the memory queue, in order, in segment files of up to 16 MiB
// (seg-<sequence>), each record a 4-byte length and its bytes. It is bounded
// by limit bytes. Records left in it at exit are sent first by the next
// run with the same buffer_dir. It is not synced: it outlasts a receiver's
// outage and portlife's restart, not a power failure. Its methods are
// called with the sink's mutex held.
type diskBuf struct {
	dir     string
	limit   int64
	size    int64 // bytes on disk
	records int   // records on disk, not yet read
	segs    []segment
	w       *os.File // the newest segment, for appending
	r       *os.File // the oldest, for reading
	roff    int64    // where reading is in it
	hdr     [4]byte
}

type segment struct {
	seq     int64
	size    int64
	records int
}

const segmentMax = 16 << 20

func (d *diskBuf) name(seq int64) string {
	return filepath.Join(d.dir, fmt.Sprintf("seg-%020d", seq))
}

// openDiskBuf takes up what an earlier run left in dir.
func openDiskBuf(dir string, limit int64) (*diskBuf, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("buffer_dir: %w", err)
	}
	d := &diskBuf{dir: dir, limit: limit}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("buffer_dir: %w", err)
	}
	for _, e := range entries {
		n, ok := strings.CutPrefix(e.Name(), "seg-")
		seq, err := strconv.ParseInt(n, 10, 64)
		if !ok || err != nil {
			continue
		}
		seg, err := d.scan(seq)
		if err != nil {
			return nil, err
		}
		if seg.records == 0 {
			os.Remove(d.name(seq))
			continue
		}
		d.segs = append(d.segs, seg)
		d.size += seg.size
		d.records += seg.records
	}
	slices.SortFunc(d.segs, func(a, b segment) int { return int(a.seq - b.seq) })
	return d, nil
}

// scan counts a segment's whole records, and cuts off a record that a
// crash left half written.
func (d *diskBuf) scan(seq int64) (segment, error) {
	f, err := os.OpenFile(d.name(seq), os.O_RDWR, 0)
	if err != nil {
		return segment{}, fmt.Errorf("buffer_dir: %w", err)
	}
	defer f.Close()
	seg := segment{seq: seq}
	var hdr [4]byte
	for {
		if _, err := io.ReadFull(f, hdr[:]); err != nil {
			break
		}
		n := int64(binary.LittleEndian.Uint32(hdr[:]))
		if _, err := f.Seek(n, io.SeekCurrent); err != nil {
			break
		}
		if fi, err := f.Stat(); err != nil || seg.size+4+n > fi.Size() {
			break
		}
		seg.size += 4 + n
		seg.records++
	}
	return seg, f.Truncate(seg.size)
}

// append adds a record at the end, or says why it cannot.
func (d *diskBuf) append(rec []byte) error {
	if d.size+4+int64(len(rec)) > d.limit {
		return errBufferFull
	}
	if len(d.segs) == 0 || d.w == nil || d.segs[len(d.segs)-1].size >= segmentMax {
		seq := int64(1)
		if len(d.segs) > 0 {
			seq = d.segs[len(d.segs)-1].seq + 1
		}
		if err := d.newSegment(seq); err != nil {
			return err
		}
		d.segs = append(d.segs, segment{seq: seq})
	}
	binary.LittleEndian.PutUint32(d.hdr[:], uint32(len(rec)))
	last := &d.segs[len(d.segs)-1]
	if _, err := d.w.Write(d.hdr[:]); err != nil {
		d.w.Truncate(last.size)
		return err
	}
	if _, err := d.w.Write(rec); err != nil {
		d.w.Truncate(last.size)
		return err
	}
	last.size += 4 + int64(len(rec))
	last.records++
	d.size += 4 + int64(len(rec))
	d.records++
	return nil
}

var errBufferFull = errors.New("the disk buffer is full")

func (d *diskBuf) newSegment(seq int64) error {
	if d.w != nil {
		d.w.Close()
	}
	f, err := os.OpenFile(d.name(seq), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		d.w = nil
		return err
	}
	d.w = f
	return nil
}

// read appends up to max bytes of the oldest records to batch, with their
// ends, and forgets them: a segment read to its end is removed.
func (d *diskBuf) read(batch []byte, ends []int, max int) ([]byte, []int, int, error) {
	n := 0
	for d.records > 0 && len(batch) < max {
		seg := &d.segs[0]
		if d.r == nil {
			f, err := os.Open(d.name(seg.seq))
			if err != nil {
				return batch, ends, n, err
			}
			d.r, d.roff = f, 0
			if _, err := f.Seek(d.roff, io.SeekStart); err != nil {
				return batch, ends, n, err
			}
		}
		if d.roff < seg.size {
			if _, err := io.ReadFull(d.r, d.hdr[:]); err != nil {
				return batch, ends, n, err
			}
			k := int(binary.LittleEndian.Uint32(d.hdr[:]))
			start := len(batch)
			batch = slices.Grow(batch, k)[:start+k]
			if _, err := io.ReadFull(d.r, batch[start:]); err != nil {
				return batch[:start], ends, n, err
			}
			ends = append(ends, len(batch))
			d.roff += 4 + int64(k)
			d.records--
			n++
		}
		if d.roff == seg.size && (len(d.segs) > 1 || seg.size >= segmentMax) {
			d.r.Close()
			d.r, d.roff = nil, 0
			if len(d.segs) == 1 && d.w != nil {
				d.w.Close()
				d.w = nil
			}
			os.Remove(d.name(seg.seq))
			d.size -= seg.size
			d.segs = d.segs[1:]
		}
	}
	if d.records == 0 && len(d.segs) == 1 && d.r != nil && d.roff == d.segs[0].size {
		// All read: start over, so that the files do not grow forever.
		d.r.Close()
		d.r, d.roff = nil, 0
		if d.w != nil {
			d.w.Close()
			d.w = nil
		}
		os.Remove(d.name(d.segs[0].seq))
		d.size = 0
		d.segs = d.segs[:0]
	}
	return batch, ends, n, nil
}

// prepend puts records (ends relative to recs) before every other, in a
// segment of their own: what was in flight at exit goes first next time.
func (d *diskBuf) prepend(recs []byte, ends []int) error {
	if len(ends) == 0 {
		return nil
	}
	seq := int64(1)
	if len(d.segs) > 0 {
		seq = d.segs[0].seq - 1
	}
	f, err := os.OpenFile(d.name(seq), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	seg := segment{seq: seq}
	start := 0
	for _, end := range ends {
		binary.LittleEndian.PutUint32(d.hdr[:], uint32(end-start))
		if _, err := f.Write(d.hdr[:]); err != nil {
			f.Close()
			os.Remove(d.name(seq))
			return err
		}
		if _, err := f.Write(recs[start:end]); err != nil {
			f.Close()
			os.Remove(d.name(seq))
			return err
		}
		seg.size += 4 + int64(end-start)
		seg.records++
		start = end
	}
	if err := f.Close(); err != nil {
		return err
	}
	d.segs = append([]segment{seg}, d.segs...)
	d.size += seg.size
	d.records += seg.records
	return nil
}

// settle removes from the segment being read the records already read
// (sent, or in flight and about to be prepended), so that the next run
// does not send them again. prepend needs it first.
func (d *diskBuf) settle() error {
	if d.r == nil {
		return nil
	}
	d.r.Close()
	d.r = nil
	if d.roff == 0 || len(d.segs) == 0 {
		return nil
	}
	return d.rewriteFrom(d.segs[0], d.roff)
}

// rewriteFrom drops the first cut bytes of segment seg (already read).
func (d *diskBuf) rewriteFrom(seg segment, cut int64) error {
	b, err := os.ReadFile(d.name(seg.seq))
	if err != nil {
		return err
	}
	if err := os.WriteFile(d.name(seg.seq)+".tmp", b[cut:], 0o600); err != nil {
		return err
	}
	if err := os.Rename(d.name(seg.seq)+".tmp", d.name(seg.seq)); err != nil {
		return err
	}
	if d.w != nil && len(d.segs) == 1 {
		d.w.Close()
		d.w = nil
	}
	d.segs[0].size -= cut
	d.size -= cut
	d.roff = 0
	return nil
}

func (d *diskBuf) close() {
	if d.r != nil {
		d.r.Close()
	}
	if d.w != nil {
		d.w.Close()
	}
}
