package encode

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/portlife/portlife/internal/event"
)

func pressureEvent(exhaustion time.Duration) event.Event {
	var comm event.Comm
	copy(comm[:], "curl")
	return event.Event{
		Kind: event.KindPressure, Proto: event.ProtoTCP, Family: 4,
		Time: time.Date(2026, 12, 1, 18, 0, 0, 0, time.UTC),
		PID:  42, Comm: comm, NetNS: 4026531840,
		Local: netip.MustParseAddrPort("10.0.0.1:0"), Remote: netip.MustParseAddrPort("10.0.0.2:443"),
		Pressure: &event.Pressure{
			Mechanism: event.MechanismPerDestination, Used: 800, Capacity: 1000, Ratio: 0.8,
			Threshold: 0.8, Rising: true, TimeWait: 700, Rate: 20.25, Hold: 61 * time.Second,
			Exhaustion: exhaustion, Failures: 0,
			Top: []event.ProcessCount{{PID: 42, Comm: comm, Ports: 790, BindBeforeConnect: 3}, {PID: 7, Ports: 10}},
		},
	}
}

func TestJSONPressure(t *testing.T) {
	tests := []struct {
		name       string
		exhaustion time.Duration
		want       map[string]any // fields and values; nil value: must be absent
	}{
		{"estimated", 10 * time.Second, map[string]any{
			"event": "pressure", "mechanism": "per_destination", "used": 800.0, "capacity": 1000.0,
			"pressure": 0.8, "threshold": 0.8, "rising": true, "time_wait_ports": 700.0, "rate": 20.25,
			"hold_ms": 61000.0, "exhaustion_ms": 10000.0, "raddr": "10.0.0.2", "rport": 443.0, "pid": 42.0, "comm": "curl",
		}},
		{"exhausted", 0, map[string]any{"exhaustion_ms": 0.0}},
		{"never at this rate", -1, map[string]any{"exhaustion_ms": nil}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := pressureEvent(tt.exhaustion)
			var j JSON
			line := j.Append(nil, &ev)
			var got map[string]any
			if err := json.Unmarshal(line, &got); err != nil {
				t.Fatalf("invalid JSON %s: %v", line, err)
			}
			for k, v := range tt.want {
				if g, ok := got[k]; v == nil && ok || v != nil && g != v {
					t.Errorf("%s = %v, want %v in %s", k, g, v, line)
				}
			}
			top := got["top"].([]any)
			if len(top) != 2 || top[0].(map[string]any)["bind_before_connect"] != 3.0 {
				t.Errorf("top = %v", top)
			}
		})
	}
}

func TestTextPressure(t *testing.T) {
	ev := pressureEvent(10 * time.Second)
	var w Text
	out := string(w.Append(nil, &ev))
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 {
		t.Fatalf("want a header and one line, got %q", out)
	}
	for _, want := range []string{"pressure", " 42 ", "curl", "per_destination 80% (800/1000) crossed 80% time_wait=700 rate=20.2/s hold=1m1s exhausted_in=10.00s"} {
		if !strings.Contains(lines[1], want) {
			t.Errorf("%q lacks %q", lines[1], want)
		}
	}
}

func TestBindBeforeConnectField(t *testing.T) {
	ev := tcpClose()
	for _, bbc := range []bool{false, true} {
		ev.BindBeforeConnect = bbc
		var j JSON
		line := j.Append(nil, &ev)
		var got map[string]any
		if err := json.Unmarshal(line, &got); err != nil {
			t.Fatal(err)
		}
		if _, ok := got["bind_before_connect"]; ok != bbc {
			t.Errorf("bind_before_connect %v: field present = %v in %s", bbc, ok, line)
		}
	}
}
