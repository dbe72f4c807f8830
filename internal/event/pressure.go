package event

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Mechanism says which of the kernel's port allocation rules a key follows,
// and so which fix applies when it runs out.
type Mechanism uint8

const (
	// MechanismPerDestination: TCP connect() without a bound port. A local
	// port is unique per (netns, saddr, daddr, dport): EADDRNOTAVAIL.
	MechanismPerDestination Mechanism = 1
	// MechanismBindPool: bind() to port 0, listen() without a port and
	// bind-before-connect share one pool per (netns, local address), whatever
	// the destination: EADDRINUSE from bind().
	MechanismBindPool Mechanism = 2
	// MechanismUDP: UDP ports are exclusive per (netns, local address),
	// whatever the destination: EAGAIN from connect() and sendto().
	MechanismUDP Mechanism = 3
)

var mechanismNames = [...]string{MechanismPerDestination: "per_destination", MechanismBindPool: "bind_pool", MechanismUDP: "udp"}

func (m Mechanism) String() string { return name(mechanismNames[:], int(m)) }

// Pressure is what a KindPressure event reports about one key. The key is
// in the Event: NetNS, Proto, Local (its address; port 0) and, for
// per_destination, Remote (the destination address and port). The Event's
// PID and Comm name the process holding most of the key's ports.
type Pressure struct {
	Mechanism Mechanism
	Used      int     // U: ports of the range this key holds now, TIME_WAIT included
	Capacity  int     // C: ports of the range this key can hold
	Ratio     float64 // U/C; 1 or more: exhausted
	// Threshold is the one crossed: upwards when Rising, else the level it
	// fell back under.
	Threshold float64
	Rising    bool
	TimeWait  int     // of Used, the ports waiting in TIME_WAIT
	Rate      float64 // new ports per second, over the last few seconds
	// Hold is τ, how long a port of this key stays taken: its lifetime plus
	// the TIME_WAIT that cannot be reused; 0 while no port was released.
	Hold time.Duration
	// Exhaustion is the estimated time until U reaches C at the current
	// rate, from the known TIME_WAIT expiries and τ; 0 when already
	// exhausted, negative when it never will at this rate.
	Exhaustion time.Duration
	Top        []ProcessCount // the processes holding most of Used, most first
	// Failures counts the calls that found no port on this key since
	// tracing started (connect_failed, bind_failed: no_ephemeral_port).
	Failures uint64
}

// ProcessCount is one process and the ports of a key it holds.
type ProcessCount struct {
	PID   uint32
	Comm  Comm
	Ports int
	// BindBeforeConnect: of Ports, those taken by bind() to port 0 before
	// connect().
	BindBeforeConnect int
}

// DefaultThresholds are the pressure levels reported when crossed.
var DefaultThresholds = []float64{0.5, 0.8, 0.95, 1}

// ThresholdsValue parses --pressure-thresholds: percentages, ascending,
// above 0 and at most 100, such as 50,80,95,100.
type ThresholdsValue struct{ P *[]float64 }

func (v ThresholdsValue) Set(s string) error {
	if strings.TrimSpace(s) == "" {
		return errEmpty
	}
	var out []float64
	for _, item := range strings.Split(s, ",") {
		f, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(item), "%"), 64)
		if err != nil || f <= 0 || f > 100 {
			return fmt.Errorf("%q: want percentages above 0 and at most 100, such as 50,80,95,100", item)
		}
		if len(out) > 0 && f/100 <= out[len(out)-1] {
			return fmt.Errorf("%q: list the thresholds in ascending order, such as 50,80,95,100", s)
		}
		out = append(out, f/100)
	}
	*v.P = out
	return nil
}

func (v ThresholdsValue) String() string {
	items := make([]string, len(*v.P))
	for i, f := range *v.P {
		items[i] = strconv.FormatFloat(f*100, 'f', -1, 64)
	}
	return strings.Join(items, ",")
}

func (v ThresholdsValue) Type() string { return "percents" }
