package sink

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/leodido/go-syslog/v4/rfc5424"

	"github.com/portlife/portlife/internal/event"
)

// testEvent is the i-th of a run of events: kinds in turn, the cookie i+1,
// and a comm with every character RFC 5424 escapes in a parameter value.
func testEvent(i int) *event.Event {
	e := &event.Event{
		Kind: event.Kinds[i%len(event.Kinds)], Proto: event.ProtoTCP, Family: 4,
		Time: time.Date(2026, 12, 1, 17, 0, 0, i*1000, time.UTC),
		PID:  4242, TID: 4243, UID: 1000,
		Local:     netip.MustParseAddrPort("127.0.0.1:40000"),
		Remote:    netip.MustParseAddrPort("[::1]:443"),
		Direction: event.DirectionOutbound,
		Cookie:    uint64(i + 1),
	}
	copy(e.Comm[:], `cu"rl]\x`)
	return e
}

// Every message parses back, strictly, as RFC 5424, with the fields the
// README states and the JSON event intact as the message.
func TestSyslogParsesBack(t *testing.T) {
	s := NewSyslog(16) // local0
	var enc jsonOf
	parser := rfc5424.NewParser()
	for i := range len(event.Kinds) {
		e := testEvent(i)
		t.Run(e.Kind.String(), func(t *testing.T) {
			b := s.Append(nil, e)
			m, err := parser.Parse(b)
			if err != nil {
				t.Fatalf("%v:\n%s", err, b)
			}
			msg := m.(*rfc5424.SyslogMessage)
			wantSev := uint8(6)
			if e.Kind == event.KindConnectFailed {
				wantSev = 4
			}
			if *msg.Facility != 16 || *msg.Severity != wantSev {
				t.Errorf("facility %d severity %d, want 16 %d", *msg.Facility, *msg.Severity, wantSev)
			}
			if *msg.Appname != "portlife" || *msg.MsgID != e.Kind.String() || !msg.Timestamp.Equal(e.Time) {
				t.Errorf("app %q msgid %q ts %v", *msg.Appname, *msg.MsgID, msg.Timestamp)
			}
			sd := (*msg.StructuredData)[sdID]
			want := map[string]string{"event": e.Kind.String(), "proto": "tcp", "pid": "4242", "comm": `cu"rl]\x`,
				"laddr": "127.0.0.1", "lport": "40000", "raddr": "::1", "rport": "443", "direction": "outbound"}
			for k, v := range want {
				if sd[k] != v {
					t.Errorf("structured data %s=%q, want %q", k, sd[k], v)
				}
			}
			if *msg.Message != strings.TrimSuffix(enc.of(e), "\n") {
				t.Errorf("message %q, want the JSON event", *msg.Message)
			}
			var obj map[string]any
			if err := json.Unmarshal([]byte(*msg.Message), &obj); err != nil {
				t.Errorf("message is not JSON: %v", err)
			}
		})
	}
}

func TestSyslogNoAllocation(t *testing.T) {
	s, e := NewSyslog(3), testEvent(1)
	b := s.Append(nil, e)
	if n := testing.AllocsPerRun(1000, func() { b = s.Append(b[:0], e) }); n != 0 {
		t.Errorf("%v allocations per message, want 0", n)
	}
}
