package tracer

import (
	"math"
	"testing"
)

// The batches cover every inode number, each socket in exactly one, none
// holding more than the kernel's table.
func TestBatches(t *testing.T) {
	socks := func(inos ...uint64) *found {
		f := &found{}
		for _, ino := range inos {
			f.socks = append(f.socks, foundSock{ino: ino})
		}
		return f
	}
	type want struct {
		lo, hi uint64
		n      int
	}
	tests := []struct {
		name  string
		found *found
		size  int
		want  []want
	}{
		{"no sockets", socks(), 2, []want{{0, math.MaxUint64, 0}}},
		{"one batch", socks(5, 9), 2, []want{{0, math.MaxUint64, 2}}},
		{"exactly two", socks(5, 9, 12, 40), 2, []want{{0, 11, 2}, {12, math.MaxUint64, 2}}},
		{"a short last", socks(5, 9, 12), 2, []want{{0, 11, 2}, {12, math.MaxUint64, 1}}},
		{"batches of one", socks(1, 2, 3), 1, []want{{0, 1, 1}, {2, 2, 1}, {3, math.MaxUint64, 1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.found.batches(tt.size)
			if len(got) != len(tt.want) {
				t.Fatalf("%d batches, want %d: %+v", len(got), len(tt.want), got)
			}
			for i, b := range got {
				if w := tt.want[i]; b.lo != w.lo || b.hi != w.hi || len(b.socks) != w.n {
					t.Errorf("batch %d covers [%d, %d] with %d sockets, want [%d, %d] with %d", i, b.lo, b.hi, len(b.socks), w.lo, w.hi, w.n)
				}
				for _, s := range b.socks {
					if s.ino < b.lo || s.ino > b.hi {
						t.Errorf("batch %d [%d, %d] holds inode %d", i, b.lo, b.hi, s.ino)
					}
				}
			}
		})
	}
}
