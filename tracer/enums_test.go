package tracer

import (
	"testing"

	"github.com/cilium/ebpf/btf"

	"github.com/portlife/portlife/internal/event"
)

// internal/event states the kernel's enum values without importing eBPF, and
// decode converts them with a cast. This ties each Go constant to the C
// enumerator of the same meaning in the compiled object's BTF, and checks
// that no C enumerator lacks a Go constant.
func TestEnumsMatchKernel(t *testing.T) {
	spec, err := loadPortlife()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		enum string
		goes map[string]uint64 // C enumerator -> Go value
	}{
		{"event_kind", map[string]uint64{
			"EVENT_OPEN":           uint64(event.KindOpen),
			"EVENT_CLOSE":          uint64(event.KindClose),
			"EVENT_CONNECT_FAILED": uint64(event.KindConnectFailed),
			"EVENT_BIND_FAILED":    uint64(event.KindBindFailed),
		}},
		{"direction", map[string]uint64{
			"DIRECTION_UNKNOWN":  uint64(event.DirectionUnknown),
			"DIRECTION_OUTBOUND": uint64(event.DirectionOutbound),
			"DIRECTION_INBOUND":  uint64(event.DirectionInbound),
		}},
		{"pid_source", map[string]uint64{
			"PID_SOURCE_UNKNOWN":           uint64(event.PIDSourceUnknown),
			"PID_SOURCE_CONNECT":           uint64(event.PIDSourceConnect),
			"PID_SOURCE_LISTENER":          uint64(event.PIDSourceListener),
			"PID_SOURCE_CLOSE":             uint64(event.PIDSourceClose),
			"PID_SOURCE_SOCKET":            uint64(event.PIDSourceSocket),
			"PID_SOURCE_FD_OWNER":          uint64(event.PIDSourceFDOwner),
			"PID_SOURCE_BIND":              uint64(event.PIDSourceBind),
			"PID_SOURCE_LISTENER_FD_OWNER": uint64(event.PIDSourceListenerFDOwner),
		}},
		{"closed_by", map[string]uint64{
			"CLOSED_BY_UNKNOWN": uint64(event.ClosedByUnknown),
			"CLOSED_BY_LOCAL":   uint64(event.ClosedByLocal),
			"CLOSED_BY_REMOTE":  uint64(event.ClosedByRemote),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.enum, func(t *testing.T) {
			var e *btf.Enum
			if err := spec.Types.TypeByName(tt.enum, &e); err != nil {
				t.Fatalf("enum %s in the ELF's BTF: %v", tt.enum, err)
			}
			for _, v := range e.Values {
				want, ok := tt.goes[v.Name]
				switch {
				case !ok:
					t.Errorf("%s = %d has no Go constant in internal/event", v.Name, v.Value)
				case want != v.Value:
					t.Errorf("%s is %d in the kernel, %d in internal/event", v.Name, v.Value, want)
				}
			}
			if len(e.Values) != len(tt.goes) {
				t.Errorf("enum %s has %d values, the test names %d", tt.enum, len(e.Values), len(tt.goes))
			}
		})
	}
	// Kinds made in user space, never by the kernel: they must not collide
	// with a kernel kind, and every other kind Go names must be the kernel's.
	goOnly := map[event.Kind]bool{event.KindReleased: true, event.KindPressure: true, event.KindSummary: true}
	var kinds *btf.Enum
	if err := spec.Types.TypeByName("event_kind", &kinds); err != nil {
		t.Fatal(err)
	}
	inKernel := map[uint64]bool{}
	for _, v := range kinds.Values {
		inKernel[v.Value] = true
	}
	for k := event.Kind(1); k != 0; k++ {
		switch {
		case k.String() == "unknown":
		case goOnly[k] && inKernel[uint64(k)]:
			t.Errorf("Go-only kind %v = %d is a kernel event_kind too", k, k)
		case !goOnly[k] && !inKernel[uint64(k)]:
			t.Errorf("kind %v = %d is neither the kernel's nor listed as Go-only", k, k)
		}
	}
	if uint8(event.ProtoTCP) != 6 || uint8(event.ProtoUDP) != 17 {
		t.Errorf("ProtoTCP, ProtoUDP = %d, %d: want IPPROTO_TCP (6), IPPROTO_UDP (17)", event.ProtoTCP, event.ProtoUDP)
	}
}
