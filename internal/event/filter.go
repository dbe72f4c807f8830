package event

import (
	"fmt"
	"net/netip"
	"slices"
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

// ParseNet reads a CIDR; a bare address is a network of one.
func ParseNet(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is neither a CIDR (10.0.0.0/8, fd00::/8) nor an address", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// Sizes of the kernel's filter tables (MAX_PORT_RANGES and MAX_RADDR_NETS
// in bpf/portlife.h); a tracer test checks them against the compiled object.
const (
	MaxPortRanges = 8
	MaxRemoteNets = 64
	// MaxCommLen is the kernel's TASK_COMM_LEN less its NUL.
	MaxCommLen = 15
)

// Filter selects the events to report. The zero Filter selects everything.
// The tracer applies each part in the kernel, so unwanted sockets cost no
// events.
type Filter struct {
	PID           uint32 // 0: any
	Comm          string // exact, as the kernel's 15-byte comm; "": any
	Protos        []Proto
	Family        int // 0: any; 4 or 6
	Direction     Direction
	LocalPorts    []PortRange
	RemotePorts   []PortRange
	RemoteNets    []netip.Prefix
	EphemeralOnly bool
	MinDuration   time.Duration // close events of shorter lifetimes are dropped
	Kinds         []Kind        // nil: all

	// The workload filters. The kernel knows a cgroup by its id alone, so
	// the tracer applies these to each event it reads, once the event's
	// names are resolved (Keeps).
	Units      []string // systemd units, exact: nginx.service
	Containers []string // container ids, or prefixes of 12 digits or more
	NetNS      []uint32 // network namespace inodes
}

// Keeps reports whether e passes the filters the tracer applies in user
// space: unit, container, network namespace. It allocates nothing.
func (f *Filter) Keeps(e *Event) bool {
	if len(f.Units) > 0 && !slices.Contains(f.Units, e.Unit) {
		return false
	}
	if len(f.Containers) > 0 {
		ok := false
		for _, c := range f.Containers {
			if e.ContainerID != "" && strings.HasPrefix(e.ContainerID, c) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if len(f.NetNS) > 0 && !slices.Contains(f.NetNS, e.NetNS) {
		return false
	}
	return true
}

// Validate reports the first part of f that the kernel cannot express. The
// command line's flag values (flags.go) apply the same rules as they parse,
// so a mistake is caught there with the flag's name.
func (f *Filter) Validate() error {
	if f.Comm != "" {
		if err := checkComm(f.Comm); err != nil {
			return err
		}
	}
	if f.Family != 0 {
		if err := checkFamily(f.Family); err != nil {
			return err
		}
	}
	for _, err := range []error{
		checkCount("local port ranges", len(f.LocalPorts), MaxPortRanges),
		checkCount("remote port ranges", len(f.RemotePorts), MaxPortRanges),
		checkCount("remote networks", len(f.RemoteNets), MaxRemoteNets),
		checkMinDuration(f.MinDuration),
	} {
		if err != nil {
			return err // one line: the first mistake
		}
	}
	for _, u := range f.Units {
		if err := checkUnit(u); err != nil {
			return err
		}
	}
	for _, c := range f.Containers {
		if err := checkContainer(c); err != nil {
			return err
		}
	}
	return nil
}

// WantsProto reports whether the filter keeps protocol p.
func (f *Filter) WantsProto(p Proto) bool {
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

// WantsKind reports whether the filter keeps events of kind k.
func (f *Filter) WantsKind(k Kind) bool {
	if len(f.Kinds) == 0 {
		return true
	}
	for _, q := range f.Kinds {
		if q == k {
			return true
		}
	}
	return false
}

// The rules, one copy each: Validate and the flag values both call them.

func checkComm(s string) error {
	if len(s) > MaxCommLen {
		return fmt.Errorf("comm %q is longer than the kernel's %d bytes", s, MaxCommLen)
	}
	return nil
}

func checkFamily(n int) error {
	if n != 4 && n != 6 {
		return fmt.Errorf("family %d: want 4 or 6", n)
	}
	return nil
}

func checkCount(what string, n, max int) error {
	if n > max {
		return fmt.Errorf("%d %s: at most %d", n, what, max)
	}
	return nil
}

// checkUnit takes a unit's full name: systemd's units all have a type
// suffix, and the unit flag adds .service to a bare name, as systemctl does.
func checkUnit(u string) error {
	if u == "" || strings.ContainsAny(u, "/ ") || !strings.Contains(u, ".") {
		return fmt.Errorf("unit %q: want a systemd unit name such as nginx.service", u)
	}
	return nil
}

// MinContainerPrefix is the shortest container id prefix a filter takes:
// docker's short ids are 12 digits.
const MinContainerPrefix = 12

func checkContainer(c string) error {
	if len(c) < MinContainerPrefix || len(c) > 64 || strings.Trim(c, "0123456789abcdef") != "" {
		return fmt.Errorf("container %q: want its id, or the first %d or more of its hex digits", c, MinContainerPrefix)
	}
	return nil
}

func checkMinDuration(d time.Duration) error {
	if d < 0 {
		return fmt.Errorf("min duration %v is negative", d)
	}
	return nil
}
