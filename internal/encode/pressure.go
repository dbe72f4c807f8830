package encode

import (
	"strconv"

	"github.com/portlife/portlife/internal/event"
)

// appendPressure writes a pressure event's own fields, after the common
// ones: the key, U and C, and what is known of how it will evolve.
func appendPressure(b []byte, p *event.Pressure) []byte {
	b = appendString(b, `,"mechanism":"`, p.Mechanism.String())
	b = appendUint(b, `","used":`, uint64(p.Used))
	b = appendUint(b, `,"capacity":`, uint64(p.Capacity))
	b = appendFloat(b, `,"pressure":`, p.Ratio)
	b = appendFloat(b, `,"threshold":`, p.Threshold)
	b = appendBool(b, `,"rising":`, p.Rising)
	b = appendUint(b, `,"time_wait_ports":`, uint64(p.TimeWait))
	b = appendFloat(b, `,"rate":`, p.Rate)
	if p.Hold > 0 {
		b = appendMillis(b, `,"hold_ms":`, p.Hold)
	}
	if p.Exhaustion >= 0 {
		b = appendMillis(b, `,"exhaustion_ms":`, p.Exhaustion)
	}
	b = appendUint(b, `,"failures":`, p.Failures)
	b = append(b, `,"top":[`...)
	for i := range p.Top {
		t := &p.Top[i]
		if i > 0 {
			b = append(b, ',')
		}
		b = appendUint(b, `{"pid":`, uint64(t.PID))
		b = append(b, `,"comm":`...)
		b = appendJSONString(b, t.Comm.Bytes())
		b = appendUint(b, `,"ports":`, uint64(t.Ports))
		b = appendUint(b, `,"bind_before_connect":`, uint64(t.BindBeforeConnect))
		b = append(b, '}')
	}
	return append(b, ']')
}

// appendFloat writes a ratio or a rate with at most three decimals.
func appendFloat(b []byte, key string, f float64) []byte {
	return strconv.AppendFloat(append(b, key...), float64(int64(f*1000+0.5))/1000, 'f', -1, 64)
}

// appendPressureNotes is the text form's NOTES: the mechanism, U/C and the
// outlook, in one line.
func appendPressureNotes(b []byte, p *event.Pressure) []byte {
	b = append(b, p.Mechanism.String()...)
	b = append(b, ' ')
	b = strconv.AppendInt(b, int64(p.Ratio*100), 10)
	b = append(b, "% ("...)
	b = strconv.AppendInt(b, int64(p.Used), 10)
	b = append(b, '/')
	b = strconv.AppendInt(b, int64(p.Capacity), 10)
	b = append(b, ')')
	if p.Rising {
		b = append(b, " crossed "...)
	} else {
		b = append(b, " back under "...)
	}
	b = strconv.AppendFloat(b, p.Threshold*100, 'f', -1, 64)
	b = append(b, "% time_wait="...)
	b = strconv.AppendInt(b, int64(p.TimeWait), 10)
	b = append(b, " rate="...)
	b = strconv.AppendFloat(b, p.Rate, 'f', 1, 64)
	b = append(b, "/s"...)
	if p.Hold > 0 {
		b = appendHumanDuration(append(b, " hold="...), p.Hold)
	}
	switch {
	case p.Exhaustion == 0:
		b = append(b, " exhausted"...)
	case p.Exhaustion > 0:
		b = appendHumanDuration(append(b, " exhausted_in="...), p.Exhaustion)
	}
	if p.Failures > 0 {
		b = strconv.AppendUint(append(b, " failures="...), p.Failures, 10)
	}
	return b
}
