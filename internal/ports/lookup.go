package ports

import (
	"cmp"
	"net/netip"
	"slices"

	"github.com/portlife/portlife/internal/event"
)

// Cheap reads of the accounting for the views (summaries, top, /metrics):
// a key's usage and the most pressed keys, without Snapshot's per-key
// TIME_WAIT expiries and exhaustion estimate, which walk every tracked
// socket. They read the state as the last event and flush left it (a flush
// comes at least every flush interval).

// KeyUsage is one key and its usage, for the metrics' pressure gauges.
type KeyUsage struct {
	Mechanism event.Mechanism
	NetNS     uint32
	Local     netip.Addr     // bind_pool: the wildcard
	Remote    netip.AddrPort // per_destination only
	Usage     event.KeyUsage
}

func (a *Accountant) usage(k *key) event.KeyUsage {
	return event.KeyUsage{Mechanism: k.id.mech, Used: k.used, Capacity: a.capacity(k), Ratio: a.ratio(k), TimeWait: k.timeWait}
}

// UsageOf returns the usage of the key a connection takes its local port
// from, by the kernel's rules: a TCP connect() without a bound port, the
// per-destination key; after bind() to port 0 (bindBeforeConnect), the
// namespace's bind pool; UDP, the local address's key. With no local
// address (a connect that failed before choosing one), the most pressed key
// of that destination or family, as a failure is counted. false: the key
// is not tracked (no port of it is held, or it was left out).
func (a *Accountant) UsageOf(netns uint32, family int, proto event.Proto, bindBeforeConnect bool, local netip.Addr, remote netip.AddrPort) (event.KeyUsage, bool) {
	id := keyID{netns: netns, family: uint8(family)}
	switch {
	case proto == event.ProtoTCP && bindBeforeConnect:
		id.mech, id.local = event.MechanismBindPool, wildcard(id.family)
	case proto == event.ProtoTCP:
		id.mech, id.local, id.remote = event.MechanismPerDestination, local, remote
	case proto == event.ProtoUDP:
		id.mech, id.local = event.MechanismUDP, local
	default:
		return event.KeyUsage{}, false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if k := a.keys[id]; k != nil {
		return a.usage(k), true
	}
	if local.IsValid() && !local.IsUnspecified() {
		return event.KeyUsage{}, false
	}
	var best *key
	for _, k := range a.keys {
		if k.id.netns != id.netns || k.id.mech != id.mech || k.id.family != id.family ||
			id.mech == event.MechanismPerDestination && k.id.remote != remote {
			continue
		}
		if best == nil || a.ratio(k) > a.ratio(best) {
			best = k
		}
	}
	if best == nil {
		return event.KeyUsage{}, false
	}
	return a.usage(best), true
}

// Top returns the n most pressed keys that hold a port, most pressed first
// (then most used), and how many keys are tracked in all.
func (a *Accountant) Top(n int) (top []KeyUsage, keys int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	top = make([]KeyUsage, 0, min(n, len(a.keys)))
	for _, k := range a.keys {
		if k.used == 0 {
			continue
		}
		u := KeyUsage{Mechanism: k.id.mech, NetNS: k.id.netns, Local: k.id.local, Remote: k.id.remote, Usage: a.usage(k)}
		// A bounded insertion: n is small (the metrics' 20), the keys up to
		// --port-keys.
		i, _ := slices.BinarySearchFunc(top, u, morePressed)
		if i >= n {
			continue
		}
		if len(top) == n {
			top = top[:n-1]
		}
		top = slices.Insert(top, i, u)
	}
	return top, len(a.keys)
}

func morePressed(x, y KeyUsage) int {
	if c := cmp.Compare(y.Usage.Ratio, x.Usage.Ratio); c != 0 {
		return c
	}
	if c := cmp.Compare(y.Usage.Used, x.Usage.Used); c != 0 {
		return c
	}
	// The same order at every scrape, so a tie does not swap the series.
	if c := cmp.Compare(x.NetNS, y.NetNS); c != 0 {
		return c
	}
	if c := cmp.Compare(x.Mechanism, y.Mechanism); c != 0 {
		return c
	}
	if c := x.Local.Compare(y.Local); c != 0 {
		return c
	}
	return x.Remote.Compare(y.Remote)
}

// Sockets is how many sockets the accounting tracks now: each holds a port
// of its namespace's range, TIME_WAITs included.
func (a *Accountant) Sockets() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.sockets.len()
}
