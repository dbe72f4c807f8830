package ports

import "iter"

// sockTable holds the tracked sockets by cookie: a slab of entries, and an
// open-addressing index over it (linear probing, deletion by backward
// shift). It stands in for a Go map because of the churn it sees: every
// socket is added once and deleted once, 60 s after its close on a client
// host, with 600,000 held at 10,000 connections a second. Go's map leaves a
// tombstone per deletion, so its probe sequences lengthened and its tables
// kept splitting, about 4 µs a connection (BenchmarkChurn); a deletion here
// leaves nothing behind. A socket keeps its slab slot while the index
// moves, so deleting while ranging over the table is safe. The slab grows
// a chunk at a time and never moves: doubling a slice of 600,000 sockets
// copied it, and faulted in twice its memory, every time.
type sockTable struct {
	index  []indexEntry // a power of two long, at most half full
	shift  uint         // 64 - log2(len(index)): the hash's top bits pick a bucket
	chunks [][]slabEntry
	used   int     // slab slots ever handed out
	free   []int32 // slab slots to reuse
	n      int
}

// chunkBits: a chunk holds 4,096 sockets, 512 KiB.
const chunkBits = 12

func (t *sockTable) entry(slot int32) *slabEntry {
	return &t.chunks[slot>>chunkBits][slot&(1<<chunkBits-1)]
}

type indexEntry struct {
	cookie uint64
	slot   int32 // into slab, plus one: 0 is an empty entry
}

type slabEntry struct {
	cookie uint64
	live   bool
	s      sock
}

const minIndex = 1 << 10

// home is where a cookie's probe sequence starts: Fibonacci hashing, which
// spreads the kernel's consecutive cookies over the whole index.
func (t *sockTable) home(cookie uint64) int {
	return int((cookie * 0x9e3779b97f4a7c15) >> t.shift)
}

// find returns the index position that holds cookie, or the empty one where
// it would go.
func (t *sockTable) find(cookie uint64) (int, bool) {
	if t.index == nil {
		return 0, false
	}
	mask := len(t.index) - 1
	for i := t.home(cookie); ; i = (i + 1) & mask {
		switch e := t.index[i]; {
		case e.slot == 0:
			return i, false
		case e.cookie == cookie:
			return i, true
		}
	}
}

func (t *sockTable) len() int { return t.n }

// get returns a copy of the socket with this cookie.
func (t *sockTable) get(cookie uint64) (sock, bool) {
	i, ok := t.find(cookie)
	if !ok {
		return sock{}, false
	}
	return t.entry(t.index[i].slot - 1).s, true
}

func (t *sockTable) has(cookie uint64) bool {
	_, ok := t.find(cookie)
	return ok
}

// put adds the socket, or replaces the one with its cookie.
func (t *sockTable) put(cookie uint64, s sock) {
	i, ok := t.find(cookie)
	if ok {
		t.entry(t.index[i].slot - 1).s = s
		return
	}
	if 2*(t.n+1) > len(t.index) {
		t.grow()
		i, _ = t.find(cookie)
	}
	var slot int32
	if n := len(t.free); n > 0 {
		slot, t.free = t.free[n-1], t.free[:n-1]
	} else {
		if t.used == len(t.chunks)<<chunkBits {
			t.chunks = append(t.chunks, make([]slabEntry, 1<<chunkBits))
		}
		slot = int32(t.used)
		t.used++
	}
	*t.entry(slot) = slabEntry{cookie: cookie, live: true, s: s}
	t.index[i] = indexEntry{cookie: cookie, slot: slot + 1}
	t.n++
}

// delete removes the socket with this cookie, if there is one.
func (t *sockTable) delete(cookie uint64) {
	i, ok := t.find(cookie)
	if !ok {
		return
	}
	slot := t.index[i].slot - 1
	*t.entry(slot) = slabEntry{}
	t.free = append(t.free, slot)
	t.n--
	// Move back each later entry of the run that may sit at i, so that no
	// probe sequence has a hole in it (Knuth's algorithm R).
	mask := len(t.index) - 1
	for j := i; ; {
		j = (j + 1) & mask
		e := t.index[j]
		if e.slot == 0 {
			break
		}
		// An entry whose home lies cyclically in (i, j] must stay.
		if h := t.home(e.cookie); i <= j && i < h && h <= j || i > j && (i < h || h <= j) {
			continue
		}
		t.index[i] = e
		i = j
	}
	t.index[i] = indexEntry{}
}

func (t *sockTable) grow() {
	old := t.index
	size := max(minIndex, 2*len(old))
	t.index = make([]indexEntry, size)
	t.shift = 64
	for s := size; s > 1; s >>= 1 {
		t.shift--
	}
	mask := size - 1
	for _, e := range old {
		if e.slot == 0 {
			continue
		}
		i := t.home(e.cookie)
		for t.index[i].slot != 0 {
			i = (i + 1) & mask
		}
		t.index[i] = e
	}
}

// all ranges over the sockets, as copies. The body may delete any socket,
// and put any: one added meanwhile may or may not be seen, as with a map.
func (t *sockTable) all() iter.Seq2[uint64, sock] {
	return func(yield func(uint64, sock) bool) {
		for i := range t.used {
			if e := t.entry(int32(i)); e.live && !yield(e.cookie, e.s) {
				return
			}
		}
	}
}
