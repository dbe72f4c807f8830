package encode

import (
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/portlife/portlife/internal/event"
)

// Text encodes aligned columns for a terminal, like tcplife, with human
// units, under a header line. A column grows when a cell would not fit (a
// full IPv6 address and port takes 47 bytes), and the header is written
// again above the first line of the wider layout, so the columns below any
// header stay aligned. Its zero value is ready to use; it is not safe for
// concurrent use.
type Text struct {
	widths [len(defaultWidths)]int // 0 until the first event
	header bool                    // written for the current widths
}

// column widths, in order: time, event, proto, pid, comm, local, remote,
// direction, duration, tx, rx; then the notes.
var defaultWidths = [...]int{12, 14, 5, 7, 15, 26, 26, 8, 9, 7, 7}

var columnNames = [len(defaultWidths)]string{"TIME", "EVENT", "PROTO", "PID", "COMM", "LOCAL", "REMOTE", "DIR", "DURATION", "TX", "RX"}

const colLocal, colRemote = 5, 6

func (t *Text) appendHeader(b []byte) []byte {
	for i, name := range columnNames {
		b = append(b, name...)
		for j := len(name); j <= t.widths[i]; j++ {
			b = append(b, ' ')
		}
	}
	return append(b, "NOTES\n"...)
}

// fit widens col to hold the cell n bytes long.
func (t *Text) fit(col, n int) {
	if n > t.widths[col] {
		t.widths[col] = n
		t.header = false
	}
}

// Append appends e as one line to b, after a header if the layout is new.
func (t *Text) Append(b []byte, e *event.Event) []byte {
	if e.Kind == event.KindSummary {
		return t.appendSummary(b, e)
	}
	if t.widths[0] == 0 {
		t.widths = defaultWidths
	}
	var cell [64]byte
	t.fit(colLocal, len(e.Local.AppendTo(cell[:0])))
	t.fit(colRemote, len(e.Remote.AppendTo(cell[:0])))
	if !t.header {
		b = t.appendHeader(b)
		t.header = true
	}
	widths := &t.widths
	col := 0
	pad := func(start int) {
		// Runes, not bytes: "µs" is one cell wide on a terminal.
		for n := utf8.RuneCount(b[start:]); n < widths[col]; n++ {
			b = append(b, ' ')
		}
		b = append(b, ' ')
		col++
	}
	s := len(b)
	b = e.Time.Local().AppendFormat(b, "15:04:05.000")
	pad(s)
	s = len(b)
	b = append(b, e.Kind.String()...)
	pad(s)
	s = len(b)
	b = append(b, e.Proto.String()...)
	pad(s)
	s = len(b)
	if e.PIDSource == event.PIDSourceUnknown && (e.Kind != event.KindPressure || e.PID == 0) {
		b = append(b, '?')
	} else {
		b = strconv.AppendUint(b, uint64(e.PID), 10)
	}
	pad(s)
	s = len(b)
	b = appendPrintable(b, e.Comm.Bytes())
	pad(s)
	s = len(b)
	b = e.Local.AppendTo(b)
	pad(s)
	s = len(b)
	b = e.Remote.AppendTo(b)
	pad(s)
	s = len(b)
	b = append(b, e.Direction.String()...)
	pad(s)
	s = len(b)
	switch e.Kind {
	case event.KindOpen:
		b = appendHumanDuration(b, e.ConnectLatency())
	default:
		b = appendHumanDuration(b, e.Duration())
	}
	pad(s)
	s = len(b)
	if e.Kind == event.KindClose && !e.Uncounted {
		b = appendHumanBytes(b, e.TxBytes)
	}
	pad(s)
	s = len(b)
	if e.Kind == event.KindClose && !e.Uncounted {
		b = appendHumanBytes(b, e.RxBytes)
	}
	pad(s)
	b = appendNotes(b, e)
	return append(b, '\n')
}

func appendNotes(b []byte, e *event.Event) []byte {
	start := len(b)
	switch e.Kind {
	case event.KindConnectFailed, event.KindBindFailed:
		b = append(b, e.Reason()...)
	case event.KindReleased:
		b = appendReleasedNotes(b, e)
	case event.KindPressure:
		if e.Pressure != nil {
			b = appendPressureNotes(b, e.Pressure)
		}
	case event.KindClose:
		if e.Proto == event.ProtoTCP {
			b = append(b, "closed_by="...)
			b = append(b, e.ClosedBy.String()...)
			if e.Reset {
				b = append(b, " reset"...)
			}
			if e.TimeWait {
				b = append(b, " time_wait"...)
			}
			if e.ListenerPID != 0 && e.PID != e.ListenerPID {
				// A worker served it: name the listener too.
				b = append(b, " listener="...)
				b = strconv.AppendUint(b, uint64(e.ListenerPID), 10)
			}
		} else {
			b = append(b, "destinations="...)
			b = strconv.AppendUint(b, uint64(e.Destinations), 10)
		}
	}
	if e.BindBeforeConnect {
		b = append(separate(b, start), "bind_before_connect"...)
	}
	if e.Unit != "" {
		b = appendPrintable(append(separate(b, start), "unit="...), e.Unit)
	}
	if e.ContainerID != "" {
		// docker ps's short form: enough on a terminal; JSON has it all.
		b = append(append(separate(b, start), "container="...), e.ContainerID[:min(12, len(e.ContainerID))]...)
	}
	if e.PreExisting {
		b = append(separate(b, start), "pre_existing"...)
	}
	if t := e.ThreadName(); t != nil {
		b = appendPrintable(append(separate(b, start), "thread="...), t)
	}
	if e.PIDSource == event.PIDSourceUnknown && e.Kind != event.KindPressure {
		b = append(separate(b, start), "pid_unknown"...)
	}
	return b
}

// separate adds a space between notes: after start, if a note is there.
func separate(b []byte, start int) []byte {
	if len(b) > start {
		b = append(b, ' ')
	}
	return b
}

// appendPrintable writes a comm or a unit for a terminal: a process names itself, so
// control bytes (an escape sequence, a newline) become '?'.
func appendPrintable[T string | []byte](b []byte, s T) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c == 0x7f {
			c = '?'
		}
		b = append(b, c)
	}
	return b
}

// appendHumanDuration writes 850µs, 12.3ms, 4.50s or 3m20s; nothing for 0.
func appendHumanDuration(b []byte, d time.Duration) []byte {
	switch {
	case d <= 0:
		return b
	case d < time.Millisecond:
		return append(strconv.AppendInt(b, d.Microseconds(), 10), "µs"...)
	case d < time.Second:
		return append(strconv.AppendFloat(b, float64(d)/float64(time.Millisecond), 'f', 1, 64), "ms"...)
	case d < time.Minute:
		return append(strconv.AppendFloat(b, d.Seconds(), 'f', 2, 64), 's')
	}
	return append(b, d.Round(time.Second).String()...)
}

// appendHumanBytes writes 512B, 4.0K, 12M, 3.1G (powers of 1024).
func appendHumanBytes(b []byte, n uint64) []byte {
	const units = "KMGTPE"
	if n < 1024 {
		return append(strconv.AppendUint(b, n, 10), 'B')
	}
	v, i := float64(n)/1024, 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	prec := 1
	if v >= 10 {
		prec = 0
	}
	return append(strconv.AppendFloat(b, v, 'f', prec, 64), units[i])
}
