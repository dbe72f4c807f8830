package sink

import (
	"os"
	"strconv"

	"github.com/portlife/portlife/internal/encode"
	"github.com/portlife/portlife/internal/event"
)

// sdID names portlife's structured data element. 32473 is the private
// enterprise number RFC 5612 reserves for examples: portlife has none of
// its own, and an SD-ID with an @ is the form RFC 5424 leaves to anyone.
const sdID = "portlife@32473"

// Syslog formats events as RFC 5424 messages: app-name portlife, msgid the
// event kind, the key fields as structured data, and the JSON event as the
// message. It appends to a reused buffer, with no allocation per event; the
// tests parse every message back with github.com/leodido/go-syslog/v4.
// Framing (octet counting on streams, RFC 6587) is the transport's.
type Syslog struct {
	Facility int
	hostname string
	procID   string
	json     encode.JSON
}

// NewSyslog formats messages from this host and process.
func NewSyslog(facility int) *Syslog {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "-"
	}
	return &Syslog{Facility: facility, hostname: printUSASCII(host, 255), procID: strconv.Itoa(os.Getpid())}
}

// Severity by kind: a failed connect (and, once it exists, port pressure)
// is a warning; the rest is informational.
func severity(k event.Kind) int {
	switch k.String() {
	case "connect_failed", "pressure":
		return 4 // warning
	}
	return 6 // informational
}

// Append appends e's message, without framing, to b.
func (s *Syslog) Append(b []byte, e *event.Event) []byte {
	b = append(b, '<')
	b = strconv.AppendInt(b, int64(s.Facility*8+severity(e.Kind)), 10)
	b = append(b, ">1 "...)
	// RFC 5424 allows six digits of fraction at most.
	b = e.Time.UTC().AppendFormat(b, "2006-01-02T15:04:05.000000Z07:00")
	b = append(b, ' ')
	b = append(b, s.hostname...)
	b = append(b, " portlife "...)
	b = append(b, s.procID...)
	b = append(b, ' ')
	b = append(b, e.Kind.String()...)
	b = append(b, " ["...)
	b = append(b, sdID...)
	b = append(b, ` event="`...)
	b = append(b, e.Kind.String()...)
	b = append(b, `" proto="`...)
	b = append(b, e.Proto.String()...)
	b = append(b, `" pid="`...)
	b = strconv.AppendUint(b, uint64(e.PID), 10)
	b = append(b, `" comm="`...)
	b = appendEscaped(b, e.Comm.Bytes())
	b = append(b, `" laddr="`...)
	b = e.Local.Addr().AppendTo(b)
	b = append(b, `" lport="`...)
	b = strconv.AppendUint(b, uint64(e.Local.Port()), 10)
	b = append(b, `" raddr="`...)
	b = e.Remote.Addr().AppendTo(b)
	b = append(b, `" rport="`...)
	b = strconv.AppendUint(b, uint64(e.Remote.Port()), 10)
	b = append(b, `" direction="`...)
	b = append(b, e.Direction.String()...)
	b = append(b, `"] `...)
	b = s.json.Append(b, e)
	return b[:len(b)-1] // the JSON encoder's newline is not part of the message
}

// appendEscaped escapes what RFC 5424 forbids bare in a parameter value.
func appendEscaped(b, v []byte) []byte {
	for _, c := range v {
		if c == '"' || c == '\\' || c == ']' {
			b = append(b, '\\')
		}
		b = append(b, c)
	}
	return b
}

// printUSASCII keeps a header field within what RFC 5424 allows.
func printUSASCII(s string, n int) string {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s) && len(out) < n; i++ {
		if s[i] >= 33 && s[i] <= 126 {
			out = append(out, s[i])
		}
	}
	if len(out) == 0 {
		return "-"
	}
	return string(out)
}
