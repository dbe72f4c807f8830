package event

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Flag values: each parses one Filter field from the command line as a
// pflag.Value, applying the rule Validate applies, so every subcommand that
// filters (trace, top, query) shares one parser and one set of messages. An
// empty value is a mistake, never "no filter": `--comm "$UNSET"` must not
// trace everything. List flags take comma-separated values and may repeat.

// KindsValue parses --events.
func KindsValue(p *[]Kind) *ListValue[Kind] {
	return &ListValue[Kind]{p: p, parse: ParseKind, typ: "kinds"}
}

// ProtosValue parses --proto.
func ProtosValue(p *[]Proto) *ListValue[Proto] {
	return &ListValue[Proto]{p: p, parse: ParseProto, typ: "protos"}
}

// PortRangesValue parses --lport and --rport: at most MaxPortRanges ranges.
func PortRangesValue(p *[]PortRange, what string) *ListValue[PortRange] {
	return &ListValue[PortRange]{p: p, parse: ParsePortRange, typ: "ports", what: what, max: MaxPortRanges}
}

// NetsValue parses --raddr: at most MaxRemoteNets networks.
func NetsValue(p *[]netip.Prefix) *ListValue[netip.Prefix] {
	return &ListValue[netip.Prefix]{p: p, parse: ParseNet, typ: "cidrs", what: "remote networks", max: MaxRemoteNets}
}

// ListValue is a repeatable, comma-separated list flag.
type ListValue[T fmt.Stringer] struct {
	p     *[]T
	parse func(string) (T, error)
	typ   string
	what  string // for the limit's message
	max   int    // 0: no limit
}

func (v *ListValue[T]) Set(s string) error {
	if strings.TrimSpace(s) == "" {
		return errEmpty
	}
	for _, item := range strings.Split(s, ",") {
		x, err := v.parse(strings.TrimSpace(item))
		if err != nil {
			return err
		}
		*v.p = append(*v.p, x)
	}
	if v.max > 0 {
		return checkCount(v.what, len(*v.p), v.max)
	}
	return nil
}

func (v *ListValue[T]) String() string {
	items := make([]string, len(*v.p))
	for i, x := range *v.p {
		items[i] = x.String()
	}
	return strings.Join(items, ",")
}

func (v *ListValue[T]) Type() string { return v.typ }

var errEmpty = errors.New("an empty value: leave the flag out to match everything")

// ParseKind is the inverse of Kind.String.
func ParseKind(s string) (Kind, error) {
	for _, k := range Kinds {
		if k.String() == s {
			return k, nil
		}
	}
	return 0, fmt.Errorf("unknown event %q: want open, close, connect_failed or bind_failed", s)
}

// ParseProto is the inverse of Proto.String.
func ParseProto(s string) (Proto, error) {
	for _, p := range Protos {
		if p.String() == s {
			return p, nil
		}
	}
	return 0, fmt.Errorf("unknown protocol %q: want tcp or udp", s)
}

// PIDValue parses --pid: a process id, not 0.
type PIDValue struct{ P *uint32 }

func (v PIDValue) Set(s string) error {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == 0 {
		return fmt.Errorf("%q is not a process id", s)
	}
	*v.P = uint32(n)
	return nil
}

func (v PIDValue) String() string {
	if *v.P == 0 {
		return ""
	}
	return strconv.FormatUint(uint64(*v.P), 10)
}

func (v PIDValue) Type() string { return "pid" }

// CommValue parses --comm: a command name the kernel could hold.
type CommValue struct{ P *string }

func (v CommValue) Set(s string) error {
	if s == "" {
		return errEmpty
	}
	if err := checkComm(s); err != nil {
		return err
	}
	*v.P = s
	return nil
}

func (v CommValue) String() string { return *v.P }
func (v CommValue) Type() string   { return "name" }

// FamilyValue parses --family: 4 or 6 (ipv4, ipv6).
type FamilyValue struct{ P *int }

func (v FamilyValue) Set(s string) error {
	n := 0
	switch s {
	case "4", "ipv4":
		n = 4
	case "6", "ipv6":
		n = 6
	default:
		return fmt.Errorf("%q: want 4 or 6", s)
	}
	*v.P = n
	return checkFamily(n)
}

func (v FamilyValue) String() string {
	if *v.P == 0 {
		return ""
	}
	return strconv.Itoa(*v.P)
}

func (v FamilyValue) Type() string { return "4|6" }

// DirectionValue parses --direction: outbound or inbound.
type DirectionValue struct{ P *Direction }

func (v DirectionValue) Set(s string) error {
	switch s {
	case DirectionOutbound.String():
		*v.P = DirectionOutbound
	case DirectionInbound.String():
		*v.P = DirectionInbound
	default:
		return fmt.Errorf("%q: want outbound or inbound", s)
	}
	return nil
}

func (v DirectionValue) String() string {
	if *v.P == DirectionUnknown {
		return ""
	}
	return v.P.String()
}

func (v DirectionValue) Type() string { return "outbound|inbound" }

// MinDurationValue parses --min-duration: a duration, not negative.
type MinDurationValue struct{ P *time.Duration }

func (v MinDurationValue) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is not a duration such as 10ms or 2s", s)
	}
	if err := checkMinDuration(d); err != nil {
		return err
	}
	*v.P = d
	return nil
}

func (v MinDurationValue) String() string {
	if *v.P == 0 {
		return ""
	}
	return v.P.String()
}

func (v MinDurationValue) Type() string { return "duration" }
