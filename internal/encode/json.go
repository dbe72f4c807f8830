// Package encode formats Events for people (aligned text columns) and for
// log pipelines (one JSON object per line). An encoder only appends bytes to
// the caller's buffer: writing, buffering and delivery belong to sinks, so
// one encoder serves stdout, a file or a network stream alike. Appending to
// a reused buffer allocates nothing per event.
package encode

import (
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/portlife/portlife/internal/event"
)

// JSON encodes one object per line, with the field names of the README's
// schema table. Fields that do not apply to an event are left out. Its zero
// value is ready to use; it is not safe for concurrent use.
type JSON struct {
	// One formatter per field: a lifetime's start and end may lie in
	// different minutes, and each field's times come in order.
	ts, start timestamps
}

// Append appends e and a newline to b.
func (j *JSON) Append(b []byte, e *event.Event) []byte {
	if e.Kind == event.KindSummary {
		return j.appendSummary(b, e)
	}
	b = append(b, `{"ts":"`...)
	b = j.ts.append(b, e.Time)
	b = appendString(b, `","event":"`, e.Kind.String())
	b = appendString(b, `","proto":"`, e.Proto.String())
	if e.Family == 4 {
		b = append(b, `","family":"ipv4"`...)
	} else {
		b = append(b, `","family":"ipv6"`...)
	}
	b = appendUint(b, `,"pid":`, uint64(e.PID))
	b = appendUint(b, `,"tid":`, uint64(e.TID))
	b = append(b, `,"comm":`...)
	b = appendJSONString(b, e.Comm.Bytes())
	if t := e.ThreadName(); t != nil {
		b = append(b, `,"thread":`...)
		b = appendJSONString(b, t)
	}
	b = appendUint(b, `,"uid":`, uint64(e.UID))
	b = appendUint(b, `,"cgroup_id":`, e.CgroupID)
	if e.Unit != "" {
		b = append(b, `,"unit":`...)
		b = appendJSONString(b, e.Unit)
	}
	if e.ContainerID != "" {
		b = appendString(b, `,"container_id":"`, e.ContainerID)
		b = append(b, '"')
	}
	b = appendUint(b, `,"netns":`, uint64(e.NetNS))
	b = appendString(b, `,"pid_source":"`, e.PIDSource.String())
	b = append(b, '"')
	if e.ListenerPID != 0 {
		b = appendUint(b, `,"listener_pid":`, uint64(e.ListenerPID))
	}
	b = append(b, `,"laddr":"`...)
	b = e.Local.Addr().AppendTo(b)
	b = appendUint(b, `","lport":`, uint64(e.Local.Port()))
	b = append(b, `,"raddr":"`...)
	b = e.Remote.Addr().AppendTo(b)
	b = appendUint(b, `","rport":`, uint64(e.Remote.Port()))
	b = appendString(b, `,"direction":"`, e.Direction.String())
	b = appendBool(b, `","ephemeral":`, e.Ephemeral)
	b = appendUint(b, `,"sock_cookie":`, e.Cookie)
	b = appendBool(b, `,"pre_existing":`, e.PreExisting)
	if !e.Start.IsZero() {
		b = append(b, `,"start":"`...)
		b = j.start.append(b, e.Start)
		b = append(b, '"')
	}

	switch e.Kind {
	case event.KindOpen:
		if lat := e.ConnectLatency(); lat > 0 {
			b = appendMillis(b, `,"connect_latency_ms":`, lat)
		}
	case event.KindClose:
		if !e.Start.IsZero() {
			b = appendMillis(b, `,"duration_ms":`, e.Duration())
		}
		if !e.Uncounted {
			b = appendUint(b, `,"tx_bytes":`, e.TxBytes)
			b = appendUint(b, `,"rx_bytes":`, e.RxBytes)
			b = appendUint(b, `,"tx_packets":`, uint64(e.TxPackets))
			b = appendUint(b, `,"rx_packets":`, uint64(e.RxPackets))
		}
		if e.Proto == event.ProtoTCP {
			b = appendUint(b, `,"retransmits":`, uint64(e.Retransmits))
			b = appendString(b, `,"closed_by":"`, e.ClosedBy.String())
			b = appendBool(b, `","reset":`, e.Reset)
			b = appendBool(b, `,"time_wait":`, e.TimeWait)
		} else {
			b = appendUint(b, `,"destinations":`, uint64(e.Destinations))
			b = appendBool(b, `,"connected":`, e.Connected)
		}
	case event.KindConnectFailed, event.KindBindFailed:
		if !e.Start.IsZero() {
			b = appendMillis(b, `,"duration_ms":`, e.Duration())
		}
		b = appendString(b, `,"reason":"`, e.Reason())
		b = appendUint(b, `","errno":`, uint64(e.Errno))
	case event.KindReleased:
		b = appendReleasedJSON(b, e)
	case event.KindPressure:
		if e.Pressure != nil {
			b = appendPressure(b, e.Pressure)
		}
	}
	if e.BindBeforeConnect {
		b = append(b, `,"bind_before_connect":true`...)
	}
	return append(b, "}\n"...)
}

func appendString(b []byte, key, s string) []byte {
	return append(append(b, key...), s...)
}

func appendUint(b []byte, key string, n uint64) []byte {
	return strconv.AppendUint(append(b, key...), n, 10)
}

func appendBool(b []byte, key string, v bool) []byte {
	return strconv.AppendBool(append(b, key...), v)
}

// appendMillis writes a duration in milliseconds with microsecond
// precision, as strconv's shortest float would (12.5, 0.051, 3), in
// integer arithmetic.
func appendMillis(b []byte, key string, d time.Duration) []byte {
	us := d.Microseconds()
	b = append(b, key...)
	if us < 0 {
		b = append(b, '-')
		us = -us
	}
	b = strconv.AppendInt(b, us/1000, 10)
	frac := us % 1000
	if frac == 0 {
		return b
	}
	b = append(b, '.', byte('0'+frac/100), byte('0'+frac/10%10), byte('0'+frac%10))
	for b[len(b)-1] == '0' {
		b = b[:len(b)-1]
	}
	return b
}

// timestamps formats times as RFC 3339 in UTC with nanoseconds, like
// time.RFC3339Nano. Events come in time order, so the date and the minute
// are formatted once a minute, and each event writes only its seconds.
type timestamps struct {
	minute int64    // Unix minute the prefix is for
	prefix [17]byte // "2006-01-02T15:04:"
	valid  bool
}

func (c *timestamps) append(b []byte, t time.Time) []byte {
	sec, nsec := t.Unix(), t.Nanosecond()
	minute := sec / 60
	if sec < 0 || !c.valid || minute != c.minute {
		if sec < 0 {
			return t.UTC().AppendFormat(b, time.RFC3339Nano)
		}
		copy(c.prefix[:], time.Unix(minute*60, 0).UTC().AppendFormat(c.prefix[:0], "2006-01-02T15:04:"))
		c.minute, c.valid = minute, true
	}
	s := sec % 60
	b = append(b, c.prefix[:]...)
	b = append(b, byte('0'+s/10), byte('0'+s%10))
	if nsec != 0 {
		var frac [10]byte
		frac[0] = '.'
		for i, n := 9, nsec; i > 0; i-- {
			frac[i] = byte('0' + n%10)
			n /= 10
		}
		end := len(frac)
		for frac[end-1] == '0' {
			end--
		}
		b = append(b, frac[:end]...)
	}
	return append(b, 'Z')
}

// appendJSONString quotes s. A comm is set by the process itself, and a
// cgroup's name by whoever made it, so either may hold quotes, control
// bytes or invalid UTF-8. It takes a string or bytes alike, without
// converting (a conversion would copy).
func appendJSONString[T string | []byte](b []byte, s T) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20 || c == 0x7f:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		var r4 [utf8.UTFMax]byte
		r, size := utf8.DecodeRune(r4[:copy(r4[:], s[i:])])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}
