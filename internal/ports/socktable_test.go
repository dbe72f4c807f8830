package ports

import (
	"math/rand/v2"
	"testing"
	"time"
	"unsafe"
)

// The table behaves as a map under any mix of puts and deletes, with
// cookies that cluster (the kernel's counter), collide in their home
// buckets, or are 0; and ranging while deleting sees every socket once.
func TestSockTableIsAMap(t *testing.T) {
	tests := []struct {
		name   string
		cookie func(r *rand.Rand) uint64
	}{
		{"consecutive cookies", func(r *rand.Rand) uint64 { return 1 + r.Uint64N(5000) }},
		{"spread cookies", func(r *rand.Rand) uint64 { return r.Uint64() }},
		{"cookies that share home buckets", func(r *rand.Rand) uint64 { return r.Uint64N(64) << 54 }},
		{"addresses as cookies", func(r *rand.Rand) uint64 { return 0xffff888000000000 + 0x800*r.Uint64N(3000) }},
		{"zero among them", func(r *rand.Rand) uint64 { return r.Uint64N(20) }},
		{"runs that wrap around the index's end", func(r *rand.Rand) uint64 { return wrapping[r.IntN(len(wrapping))] }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(1, 2))
			var tab sockTable
			want := map[uint64]uint32{}
			for op := range 200_000 {
				c := tt.cookie(r)
				switch r.IntN(3) {
				case 0, 1:
					tab.put(c, sock{pid: uint32(op)})
					want[c] = uint32(op)
				case 2:
					tab.delete(c)
					delete(want, c)
				}
				if op%997 == 0 {
					check(t, &tab, want)
				}
			}
			check(t, &tab, want)
			// Range, deleting every other socket as it goes.
			seen := map[uint64]bool{}
			i := 0
			for c := range tab.all() {
				if seen[c] {
					t.Fatalf("cookie %#x seen twice", c)
				}
				seen[c] = true
				if i++; i%2 == 0 {
					tab.delete(c)
					delete(want, c)
				}
			}
			if len(seen) != len(want)+i/2 {
				t.Errorf("ranged over %d sockets, want %d", len(seen), len(want)+i/2)
			}
			check(t, &tab, want)
		})
	}
}

// wrapping are 200 cookies whose home is in the last 8 or the first 2
// buckets of the smallest index, which they never grow past: their runs
// wrap around its end.
var wrapping = func() []uint64 {
	tab := sockTable{}
	tab.grow()
	var cs []uint64
	for c := uint64(1); len(cs) < 200; c++ {
		if h := tab.home(c); h >= minIndex-8 || h < 2 {
			cs = append(cs, c)
		}
	}
	return cs
}()

func check(t *testing.T, tab *sockTable, want map[uint64]uint32) {
	t.Helper()
	if tab.len() != len(want) {
		t.Fatalf("len %d, want %d", tab.len(), len(want))
	}
	for c, pid := range want {
		if s, ok := tab.get(c); !ok || s.pid != pid {
			t.Fatalf("get(%#x) = %v, %v; want pid %d", c, s.pid, ok, pid)
		}
	}
	n := 0
	for c, s := range tab.all() {
		if want[c] != s.pid {
			t.Fatalf("all: %#x has pid %d, want %d", c, s.pid, want[c])
		}
		n++
	}
	if n != len(want) {
		t.Fatalf("all ranged over %d, want %d", n, len(want))
	}
}

func TestStamp(t *testing.T) {
	now := time.Unix(1_800_000_000, 123456789)
	tests := []struct {
		name string
		t    time.Time
	}{{"none", time.Time{}}, {"a time", now}, {"the epoch itself is not none", time.Unix(0, 1)}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := stampOf(tt.t).time(); !got.Equal(tt.t) {
				t.Errorf("stampOf(%v).time() = %v", tt.t, got)
			}
		})
	}
	if n := unsafe.Sizeof(sock{}); n > 56 {
		t.Errorf("sock is %d bytes, want at most 56", n)
	}
}
