package encode

import (
	"strconv"

	"github.com/portlife/portlife/internal/event"
)

// appendSummary is JSON.Append for a summary event (KindSummary): the key's
// fields, then the interval's figures. The `other` row has no key.
func (j *JSON) appendSummary(b []byte, e *event.Event) []byte {
	s := e.Summary
	b = append(b, `{"ts":"`...)
	b = j.ts.append(b, e.Time)
	b = append(b, `","event":"summary","start":"`...)
	b = j.start.append(b, e.Start)
	b = append(b, '"')
	if s.Other {
		b = appendBool(b, `,"other":`, true)
		b = appendUint(b, `,"keys":`, uint64(s.Keys))
	} else {
		b = appendString(b, `,"proto":"`, e.Proto.String())
		b = append(b, `","comm":`...)
		b = appendJSONString(b, e.Comm.Bytes())
		if e.Unit != "" {
			b = append(b, `,"unit":`...)
			b = appendJSONString(b, e.Unit)
		}
		if e.ContainerID != "" {
			b = appendString(b, `,"container_id":"`, e.ContainerID)
			b = append(b, '"')
		}
		b = appendString(b, `,"direction":"`, e.Direction.String())
		if e.Direction == event.DirectionInbound {
			b = appendUint(b, `","lport":`, uint64(e.Local.Port()))
		} else {
			b = append(b, `","raddr":"`...)
			b = e.Remote.Addr().AppendTo(b)
			b = appendUint(b, `","rport":`, uint64(e.Remote.Port()))
		}
	}
	b = appendUint(b, `,"opened":`, s.Opened)
	b = appendUint(b, `,"closed":`, s.Closed)
	b = appendUint(b, `,"failed":`, s.Failed)
	b = append(b, `,"failures":{`...)
	for i, f := range s.Failures {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, f.Reason)
		b = strconv.AppendUint(append(b, ':'), f.Count, 10)
	}
	b = append(b, '}')
	b = appendUint(b, `,"lifetimes":`, s.Lifetimes)
	if s.Lifetimes > 0 {
		b = appendMillis(b, `,"lifetime_p50_ms":`, s.P50)
		b = appendMillis(b, `,"lifetime_p90_ms":`, s.P90)
		b = appendMillis(b, `,"lifetime_p99_ms":`, s.P99)
		b = append(b, `,"under_1s_share":`...)
		b = strconv.AppendFloat(b, float64(s.UnderOneSecond)/float64(s.Lifetimes), 'f', -1, 64)
	}
	b = appendUint(b, `,"tx_bytes":`, s.TxBytes)
	b = appendUint(b, `,"rx_bytes":`, s.RxBytes)
	b = appendUint(b, `,"time_wait":`, s.TimeWait)
	if u := &s.Ports; u.Mechanism != 0 {
		// The port key's fields, named as a pressure event names them.
		b = appendString(b, `,"mechanism":"`, u.Mechanism.String())
		b = appendUint(b, `","used":`, uint64(u.Used))
		b = appendUint(b, `,"capacity":`, uint64(u.Capacity))
		b = appendFloat(b, `,"pressure":`, u.Ratio)
		b = appendUint(b, `,"time_wait_ports":`, uint64(u.TimeWait))
	}
	return append(b, "}\n"...)
}

// appendSummary is Text.Append for a summary event: one line, its figures
// as name=value notes after the key.
func (t *Text) appendSummary(b []byte, e *event.Event) []byte {
	s := e.Summary
	b = e.Time.Local().AppendFormat(b, "15:04:05.000")
	b = append(b, " summary "...)
	if s.Other {
		b = append(b, "other keys="...)
		b = strconv.AppendUint(b, uint64(s.Keys), 10)
	} else {
		b = append(b, e.Proto.String()...)
		b = append(b, ' ')
		b = appendPrintable(b, e.Comm.Bytes())
		b = append(b, ' ')
		b = append(b, e.Direction.String()...)
		if e.Direction == event.DirectionInbound {
			b = strconv.AppendUint(append(b, " port "...), uint64(e.Local.Port()), 10)
		} else {
			b = e.Remote.AppendTo(append(b, " to "...))
		}
		if e.Unit != "" {
			b = appendPrintable(append(b, " unit="...), e.Unit)
		}
		if e.ContainerID != "" {
			b = append(append(b, " container="...), e.ContainerID[:min(12, len(e.ContainerID))]...)
		}
	}
	b = strconv.AppendUint(append(b, " opened="...), s.Opened, 10)
	b = strconv.AppendUint(append(b, " closed="...), s.Closed, 10)
	b = strconv.AppendUint(append(b, " failed="...), s.Failed, 10)
	for _, f := range s.Failures {
		b = appendPrintable(append(b, ' '), f.Reason)
		b = strconv.AppendUint(append(b, '='), f.Count, 10)
	}
	if s.Lifetimes > 0 {
		b = appendHumanDuration(append(b, " p50="...), s.P50)
		b = appendHumanDuration(append(b, " p90="...), s.P90)
		b = appendHumanDuration(append(b, " p99="...), s.P99)
		b = strconv.AppendUint(append(b, " under_1s="...), 100*s.UnderOneSecond/s.Lifetimes, 10)
		b = append(b, '%')
	}
	b = appendHumanBytes(append(b, " tx="...), s.TxBytes)
	b = appendHumanBytes(append(b, " rx="...), s.RxBytes)
	b = strconv.AppendUint(append(b, " time_wait="...), s.TimeWait, 10)
	if u := &s.Ports; u.Mechanism != 0 {
		// Whole percents, rounded down (99.9% is not exhausted), past the
		// float's error: 29/100 is 29%, not 28.999...%.
		b = strconv.AppendInt(append(b, " pressure="...), int64(u.Ratio*100+1e-9), 10)
		b = strconv.AppendInt(append(b, "% ("...), int64(u.Used), 10)
		b = strconv.AppendInt(append(b, '/'), int64(u.Capacity), 10)
		b = append(append(append(b, ' '), u.Mechanism.String()...), ')')
	}
	return append(b, '\n')
}
