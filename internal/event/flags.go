package event

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
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

// UnitsValue parses --unit: systemd unit names; a name without a type
// suffix is a service, as systemctl reads it (nginx is nginx.service).
func UnitsValue(p *[]string) *StringsValue {
	return &StringsValue{p: p, typ: "units", parse: func(s string) (string, error) {
		if s != "" && !strings.Contains(s, ".") {
			s += ".service"
		}
		return s, checkUnit(s)
	}}
}

// ContainersValue parses --container: container ids, or their first 12
// or more hex digits (docker ps shows 12).
func ContainersValue(p *[]string) *StringsValue {
	return &StringsValue{p: p, typ: "ids", parse: func(s string) (string, error) {
		s = strings.ToLower(s)
		return s, checkContainer(s)
	}}
}

// StringsValue is a repeatable, comma-separated list of strings.
type StringsValue struct {
	p     *[]string
	parse func(string) (string, error)
	typ   string
}

func (v *StringsValue) Set(s string) error {
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
	return nil
}

func (v *StringsValue) String() string { return strings.Join(*v.p, ",") }
func (v *StringsValue) Type() string   { return v.typ }

// NetNSValue parses --netns: a network namespace by its inode number (the
// netns field, `ls -Li /proc/PID/ns/net`) or by a file that is one
// (/proc/PID/ns/net, /run/netns/NAME), read as the flag is parsed.
type NetNSValue struct{ P *[]uint32 }

func (v NetNSValue) Set(s string) error {
	if strings.TrimSpace(s) == "" {
		return errEmpty
	}
	for _, item := range strings.Split(s, ",") {
		n, err := parseNetNS(strings.TrimSpace(item))
		if err != nil {
			return err
		}
		*v.P = append(*v.P, n)
	}
	return nil
}

func parseNetNS(s string) (uint32, error) {
	if n, err := strconv.ParseUint(s, 10, 32); err == nil && n != 0 {
		return uint32(n), nil
	}
	if !strings.Contains(s, "/") {
		return 0, fmt.Errorf("netns %q: want an inode number (ls -Li /proc/PID/ns/net) or a path such as /run/netns/NAME", s)
	}
	var st unix.Stat_t
	if err := unix.Stat(s, &st); err != nil {
		return 0, fmt.Errorf("netns %s: %w", s, err)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(s, &fs); err != nil || fs.Type != unix.NSFS_MAGIC {
		return 0, fmt.Errorf("netns %s is not a namespace file: want /proc/PID/ns/net or /run/netns/NAME", s)
	}
	return uint32(st.Ino), nil
}

func (v NetNSValue) String() string {
	items := make([]string, len(*v.P))
	for i, n := range *v.P {
		items[i] = strconv.FormatUint(uint64(n), 10)
	}
	return strings.Join(items, ",")
}

func (v NetNSValue) Type() string { return "netns" }
