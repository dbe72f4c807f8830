package tracer

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// PortRange is an inclusive range of ports; a single port has Lo == Hi.
type PortRange struct{ Lo, Hi uint16 }

func (r PortRange) Contains(p uint16) bool { return p >= r.Lo && p <= r.Hi }

func (r PortRange) String() string {
	if r.Lo == r.Hi {
		return strconv.Itoa(int(r.Lo))
	}
	return fmt.Sprintf("%d-%d", r.Lo, r.Hi)
}

// ParsePortRange reads "443" or "32768-60999".
func ParsePortRange(s string) (PortRange, error) {
	lo, hi, isRange := strings.Cut(strings.TrimSpace(s), "-")
	if !isRange {
		hi = lo
	}
	l, err := parsePort(lo)
	if err != nil {
		return PortRange{}, fmt.Errorf("port range %q: %w", s, err)
	}
	h, err := parsePort(hi)
	if err != nil {
		return PortRange{}, fmt.Errorf("port range %q: %w", s, err)
	}
	if l > h {
		return PortRange{}, fmt.Errorf("port range %q: %d is above %d", s, l, h)
	}
	return PortRange{l, h}, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 16)
	if err != nil {
		return 0, fmt.Errorf("%q is not a port (0-65535)", s)
	}
	return uint16(n), nil
}

// Filter selects the events to report. The zero Filter selects everything.
// Each part is applied in the kernel, so unwanted sockets cost no events.
type Filter struct {
	PID           uint32 // 0: any
	Comm          string // exact, as the kernel's 15-byte comm
	Protos        []Proto
	Family        int // 0: any; 4 or 6
	Direction     Direction
	LocalPorts    []PortRange
	RemotePorts   []PortRange
	RemoteNets    []netip.Prefix
	EphemeralOnly bool
	MinDuration   time.Duration // close events of shorter lifetimes are dropped
	Kinds         []Kind        // nil: all
}

// Validate reports the first part a kernel filter cannot express.
func (f *Filter) Validate() error {
	switch {
	case len(f.Comm) > 15:
		return fmt.Errorf("comm %q is longer than the kernel's 15 bytes", f.Comm)
	case f.Family != 0 && f.Family != 4 && f.Family != 6:
		return fmt.Errorf("family %d: want 4 or 6", f.Family)
	case len(f.LocalPorts) > MaxPortRanges:
		return fmt.Errorf("%d local port ranges: at most %d", len(f.LocalPorts), MaxPortRanges)
	case len(f.RemotePorts) > MaxPortRanges:
		return fmt.Errorf("%d remote port ranges: at most %d", len(f.RemotePorts), MaxPortRanges)
	case len(f.RemoteNets) > MaxRemoteNets:
		return fmt.Errorf("%d remote networks: at most %d", len(f.RemoteNets), MaxRemoteNets)
	case f.MinDuration < 0:
		return fmt.Errorf("min duration %v is negative", f.MinDuration)
	}
	return nil
}

func (f *Filter) wantsProto(p Proto) bool {
	if len(f.Protos) == 0 {
		return true
	}
	for _, q := range f.Protos {
		if q == p {
			return true
		}
	}
	return false
}

// Sizes of the kernel's filter tables (bpf/portlife.h).
const (
	MaxPortRanges = len(portlifeConfig{}.Lports)
	MaxRemoteNets = 64
)

// kernelConfig is the Filter as the kernel program reads it.
func (f *Filter) kernelConfig(wakeupBytes uint64) portlifeConfig {
	var c portlifeConfig
	c.MinDurationNs = uint64(f.MinDuration)
	c.WakeupBytes = wakeupBytes
	c.Pid = f.PID
	kinds := f.Kinds
	if len(kinds) == 0 {
		kinds = Kinds
	}
	for _, k := range kinds {
		c.Events |= 1 << k
	}
	for i, r := range f.LocalPorts {
		c.Lports[i].Lo, c.Lports[i].Hi = r.Lo, r.Hi
	}
	c.N_lports = uint8(len(f.LocalPorts))
	for i, r := range f.RemotePorts {
		c.Rports[i].Lo, c.Rports[i].Hi = r.Lo, r.Hi
	}
	c.N_rports = uint8(len(f.RemotePorts))
	c.Family = uint8(f.Family)
	c.Direction = uint8(f.Direction)
	c.EphemeralOnly = boolByte(f.EphemeralOnly)
	c.MatchRaddr = boolByte(len(f.RemoteNets) > 0)
	if f.Comm != "" {
		c.MatchComm = 1
		for i := 0; i < len(f.Comm); i++ {
			c.Comm[i] = int8(f.Comm[i])
		}
	}
	return c
}

// raddrKey is a --raddr network as the kernel's LPM trie keys it: IPv6,
// with IPv4 networks v4-mapped.
func raddrKey(p netip.Prefix) portlifeRaddrKey {
	p = p.Masked()
	bits := p.Bits()
	if p.Addr().Is4() {
		bits += 96
	}
	return portlifeRaddrKey{Prefixlen: uint32(bits), Addr: p.Addr().As16()}
}

func boolByte(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}
