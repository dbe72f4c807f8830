package encode

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/internal/event"
)

// A zone east of UTC: the JSON "ts" must still come out in UTC.
var cet = time.FixedZone("CET", 3600)

// t0 is 2024-03-05T11:00:01.123456789Z, written in CET.
var t0 = time.Date(2024, 3, 5, 12, 0, 1, 123456789, cet)

func comm(s string) (c event.Comm) {
	copy(c[:], s)
	return c
}

// tcpClose is a typical outbound TCP close: 1.5s and 2.5µs long.
func tcpClose() event.Event {
	return event.Event{
		Kind: event.KindClose, Proto: event.ProtoTCP,
		Start:       t0,
		Established: t0.Add(12345678 * time.Nanosecond),
		Time:        t0.Add(1500*time.Millisecond + 2500*time.Nanosecond),
		PID:         4242, TID: 4243, UID: 1000, Comm: comm("curl"),
		CgroupID: 1 << 60, NetNS: 4026531840, PIDSource: event.PIDSourceConnect,
		Local:     netip.MustParseAddrPort("10.0.0.5:41234"),
		Remote:    netip.MustParseAddrPort("93.184.216.34:443"),
		Family:    4,
		Direction: event.DirectionOutbound, Ephemeral: true, Cookie: 1<<63 + 1,
		TxBytes: 4096, RxBytes: 12 << 20, TxPackets: 40, RxPackets: 9000, Retransmits: 2,
		ClosedBy: event.ClosedByRemote, Reset: true,
	}
}

// common is the key set every event has.
var common = []string{
	"ts", "event", "proto", "family", "pid", "tid", "comm", "uid", "cgroup_id", "netns",
	"pid_source", "laddr", "lport", "raddr", "rport", "direction", "ephemeral", "sock_cookie", "pre_existing",
}

func keys(extra ...string) []string {
	k := append(slices.Clone(common), extra...)
	slices.Sort(k)
	return k
}

// num is how a number reads back with json.Decoder.UseNumber: exact, even
// above 2^53 (cgroup ids and cookies are 64-bit).
func num(s string) json.Number { return json.Number(s) }

func TestJSON(t *testing.T) {
	tests := []struct {
		name     string
		ev       func() event.Event
		wantKeys []string
		want     map[string]any // values checked; the key set is checked by wantKeys
	}{
		{
			name:     "tcp close has counters, TCP close fields and a duration in ms with µs precision",
			ev:       tcpClose,
			wantKeys: keys("start", "duration_ms", "tx_bytes", "rx_bytes", "tx_packets", "rx_packets", "retransmits", "closed_by", "reset", "time_wait"),
			want: map[string]any{
				"ts":           "2024-03-05T11:00:02.623459289Z",
				"start":        "2024-03-05T11:00:01.123456789Z",
				"event":        "close",
				"proto":        "tcp",
				"family":       "ipv4",
				"pid":          num("4242"),
				"tid":          num("4243"),
				"uid":          num("1000"),
				"comm":         "curl",
				"cgroup_id":    num("1152921504606846976"),
				"netns":        num("4026531840"),
				"pid_source":   "connect",
				"laddr":        "10.0.0.5",
				"lport":        num("41234"),
				"raddr":        "93.184.216.34",
				"rport":        num("443"),
				"direction":    "outbound",
				"ephemeral":    true,
				"sock_cookie":  num("9223372036854775809"),
				"duration_ms":  num("1500.002"),
				"tx_bytes":     num("4096"),
				"rx_bytes":     num("12582912"),
				"tx_packets":   num("40"),
				"rx_packets":   num("9000"),
				"retransmits":  num("2"),
				"closed_by":    "remote",
				"reset":        true,
				"time_wait":    false,
				"pre_existing": false,
			},
		},
		{
			name: "pre-existing tcp close has neither start nor duration_ms",
			ev: func() event.Event {
				e := tcpClose()
				e.Start, e.Established = time.Time{}, time.Time{}
				e.PreExisting, e.Reset, e.TimeWait, e.ClosedBy = true, false, true, event.ClosedByLocal
				return e
			},
			wantKeys: keys("tx_bytes", "rx_bytes", "tx_packets", "rx_packets", "retransmits", "closed_by", "reset", "time_wait"),
			want: map[string]any{
				"pre_existing": true,
				"time_wait":    true,
				"reset":        false,
				"closed_by":    "local",
			},
		},
		{
			name: "udp close has destinations and connected, not the TCP close fields",
			ev: func() event.Event {
				return event.Event{
					Kind: event.KindClose, Proto: event.ProtoUDP,
					Start: t0, Time: t0.Add(850 * time.Microsecond),
					PID: 99, Comm: comm("dig"), PIDSource: event.PIDSourceSocket,
					Local:     netip.MustParseAddrPort("[2001:db8::5]:50001"),
					Remote:    netip.MustParseAddrPort("[2001:4860:4860::8888]:53"),
					Family:    6,
					Direction: event.DirectionOutbound, Ephemeral: true,
					TxBytes: 40, RxBytes: 512, TxPackets: 1, RxPackets: 1,
					Destinations: 3, Connected: true,
				}
			},
			wantKeys: keys("start", "duration_ms", "tx_bytes", "rx_bytes", "tx_packets", "rx_packets", "destinations", "connected"),
			want: map[string]any{
				"proto":        "udp",
				"family":       "ipv6",
				"laddr":        "2001:db8::5",
				"raddr":        "2001:4860:4860::8888",
				"pid_source":   "socket",
				"duration_ms":  num("0.85"),
				"destinations": num("3"),
				"connected":    true,
			},
		},
		{
			name: "outbound tcp open has its connect latency",
			ev: func() event.Event {
				e := tcpClose()
				e.Kind, e.Time = event.KindOpen, e.Established
				return e
			},
			wantKeys: keys("start", "connect_latency_ms"),
			want: map[string]any{
				"event":              "open",
				"connect_latency_ms": num("12.345"),
			},
		},
		{
			name: "inbound tcp open over IPv6 has no connect latency",
			ev: func() event.Event {
				return event.Event{
					Kind: event.KindOpen, Proto: event.ProtoTCP,
					Start: t0, Established: t0.Add(time.Millisecond), Time: t0.Add(time.Millisecond),
					PIDSource: event.PIDSourceListener, Comm: comm("nginx"),
					Local:     netip.MustParseAddrPort("[::1]:443"),
					Remote:    netip.MustParseAddrPort("[::1]:50000"),
					Family:    6,
					Direction: event.DirectionInbound,
				}
			},
			wantKeys: keys("start"),
			want: map[string]any{
				"family":     "ipv6",
				"direction":  "inbound",
				"pid_source": "listener",
				"ephemeral":  false,
			},
		},
		{
			name: "udp open has no latency either",
			ev: func() event.Event {
				return event.Event{
					Kind: event.KindOpen, Proto: event.ProtoUDP, Start: t0, Time: t0,
					Local:  netip.MustParseAddrPort("10.0.0.5:5353"),
					Remote: netip.MustParseAddrPort("224.0.0.251:5353"),
					Family: 4,
				}
			},
			wantKeys: keys("start"),
			want:     map[string]any{"proto": "udp", "event": "open", "raddr": "224.0.0.251", "rport": num("5353")},
		},
		{
			name: "the workload's unit and container are named when known",
			ev: func() event.Event {
				e := tcpClose()
				e.Unit, e.ContainerID = `web "blue".service`, strings.Repeat("ab", 32)
				return e
			},
			wantKeys: keys("start", "duration_ms", "tx_bytes", "rx_bytes", "tx_packets", "rx_packets", "retransmits", "closed_by", "reset", "time_wait", "unit", "container_id"),
			want:     map[string]any{"unit": `web "blue".service`, "container_id": strings.Repeat("ab", 32)},
		},
		{
			name: "a thread named apart from its process is named too",
			ev: func() event.Event {
				e := tcpClose()
				e.Kind, e.Time = event.KindOpen, e.Established
				e.Comm, e.Thread = comm("dig"), comm("isc-net-0000")
				return e
			},
			wantKeys: keys("start", "connect_latency_ms", "thread"),
			want:     map[string]any{"comm": "dig", "thread": "isc-net-0000", "tid": num("4243")},
		},
		{
			name: "a thread with the process's name is not named again",
			ev: func() event.Event {
				e := tcpClose()
				e.Kind, e.Time = event.KindOpen, e.Established
				e.Thread = e.Comm
				return e
			},
			wantKeys: keys("start", "connect_latency_ms"),
			want:     map[string]any{"comm": "curl"},
		},
		{
			name: "refused connect has a reason, errno and how long it tried",
			ev: func() event.Event {
				return event.Event{
					Kind: event.KindConnectFailed, Proto: event.ProtoTCP,
					Start: t0, Time: t0.Add(250 * time.Microsecond),
					PIDSource: event.PIDSourceConnect,
					Local:     netip.MustParseAddrPort("127.0.0.1:40000"),
					Remote:    netip.MustParseAddrPort("127.0.0.1:1"),
					Family:    4,
					Direction: event.DirectionOutbound, Ephemeral: true,
					Errno: unix.ECONNREFUSED,
				}
			},
			wantKeys: keys("start", "duration_ms", "reason", "errno"),
			want: map[string]any{
				"event":       "connect_failed",
				"duration_ms": num("0.25"),
				"reason":      "refused",
				"errno":       num("111"),
			},
		},
		{
			name: "connect with no ephemeral port left",
			ev: func() event.Event {
				return event.Event{
					Kind: event.KindConnectFailed, Proto: event.ProtoTCP, Time: t0,
					Local:     netip.MustParseAddrPort("0.0.0.0:0"),
					Remote:    netip.MustParseAddrPort("10.0.0.1:80"),
					Family:    4,
					Direction: event.DirectionOutbound, Ephemeral: true,
					Errno: unix.EADDRNOTAVAIL,
				}
			},
			wantKeys: keys("reason", "errno"),
			want:     map[string]any{"reason": "no_ephemeral_port", "errno": num("99"), "lport": num("0")},
		},
		{
			name: "a connect refused in the call by policy",
			ev: func() event.Event {
				return event.Event{
					Kind: event.KindConnectFailed, Proto: event.ProtoUDP,
					Start: t0, Time: t0.Add(8 * time.Microsecond),
					PIDSource: event.PIDSourceConnect,
					Local:     netip.MustParseAddrPort("0.0.0.0:0"),
					Remote:    netip.MustParseAddrPort("10.0.0.1:53"),
					Family:    4,
					Direction: event.DirectionOutbound, Ephemeral: true,
					Errno: unix.EPERM, InCall: true,
				}
			},
			wantKeys: keys("start", "duration_ms", "reason", "errno"),
			want:     map[string]any{"event": "connect_failed", "proto": "udp", "reason": "denied", "errno": num("1"), "duration_ms": num("0.008")},
		},
		{
			name: "bind_failed: a reason, an errno and how long the call took",
			ev: func() event.Event {
				return event.Event{
					Kind: event.KindBindFailed, Proto: event.ProtoTCP,
					Start: t0, Time: t0.Add(3 * time.Microsecond),
					PIDSource: event.PIDSourceBind,
					Local:     netip.MustParseAddrPort("0.0.0.0:0"),
					Remote:    netip.MustParseAddrPort("0.0.0.0:0"),
					Family:    4,
					Direction: event.DirectionOutbound, Ephemeral: true,
					Errno: unix.EADDRINUSE, InCall: true,
				}
			},
			wantKeys: keys("start", "duration_ms", "reason", "errno"),
			want: map[string]any{
				"event":       "bind_failed",
				"pid_source":  "bind",
				"reason":      "no_ephemeral_port",
				"errno":       num("98"),
				"duration_ms": num("0.003"),
			},
		},
		{
			name: "an accepted connection served by a worker names the listener too",
			ev: func() event.Event {
				e := tcpClose()
				e.Direction, e.PIDSource, e.PID, e.ListenerPID = event.DirectionInbound, event.PIDSourceClose, 301, 300
				return e
			},
			wantKeys: keys("listener_pid", "start", "duration_ms", "tx_bytes", "rx_bytes", "tx_packets", "rx_packets", "retransmits", "closed_by", "reset", "time_wait"),
			want: map[string]any{
				"pid":          num("301"),
				"pid_source":   "close",
				"listener_pid": num("300"),
				"direction":    "inbound",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := tt.ev()
			line := encodeJSON(t, &ev)
			got := decodeJSONLine(t, line)
			gotKeys := make([]string, 0, len(got))
			for k := range got {
				gotKeys = append(gotKeys, k)
			}
			slices.Sort(gotKeys)
			if !slices.Equal(gotKeys, tt.wantKeys) {
				t.Errorf("keys:\n got  %v\n want %v\nline: %s", gotKeys, tt.wantKeys, line)
			}
			for k, want := range tt.want {
				if !reflect.DeepEqual(got[k], want) {
					t.Errorf("%s = %#v, want %#v", k, got[k], want)
				}
			}
		})
	}
}

// encodeJSON writes one event and returns exactly what reached the writer.
func encodeJSON(t *testing.T, ev *event.Event) string {
	t.Helper()
	var j JSON
	line := string(j.Append(nil, ev))
	if !strings.HasSuffix(line, "\n") || strings.Count(line, "\n") != 1 {
		t.Fatalf("want one line ending in a newline, got %q", line)
	}
	return line
}

func decodeJSONLine(t *testing.T, line string) map[string]any {
	t.Helper()
	if !json.Valid([]byte(line)) {
		t.Fatalf("invalid JSON: %s", line)
	}
	dec := json.NewDecoder(strings.NewReader(line))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("json: %v\nline: %s", err, line)
	}
	return m
}

// A process sets its own comm (prctl PR_SET_NAME), so it can hold anything;
// the line must stay valid JSON and say what the bytes were.
func TestJSONCommEscaping(t *testing.T) {
	tests := []struct {
		name string
		comm string
		want string
	}{
		{"plain", "sshd", "sshd"},
		{"quote", `a"b`, `a"b`},
		{"backslash", `a\b`, `a\b`},
		{"control bytes", "a\x01b\nc\td\x1b", "a\x01b\nc\td\x1b"},
		{"DEL", "a\x7fb", "a\x7fb"},
		{"valid UTF-8 is kept", "café", "café"},
		{"invalid UTF-8 becomes U+FFFD", "a\xffb\xc3", "a\ufffdb\ufffd"},
		{"everything at once", "\"\\\x02\xfe\u00e9x", "\"\\\x02\ufffd\u00e9x"},
		{"a full 16 bytes", "0123456789abcdef", "0123456789abcdef"},
		{"HTML-looking bytes pass through", "<a&b>", "<a&b>"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := tcpClose()
			ev.Comm = comm(tt.comm)
			line := encodeJSON(t, &ev)
			got := decodeJSONLine(t, line)
			if got["comm"] != tt.want {
				t.Errorf("comm = %q, want %q\nline: %s", got["comm"], tt.want, line)
			}
			// Control bytes must not reach a log pipeline raw.
			for i := 0; i < len(line)-1; i++ {
				if line[i] < 0x20 || line[i] == 0x7f {
					t.Fatalf("raw control byte %#x at %d in %q", line[i], i, line)
				}
			}
			if !utf8.ValidString(line) {
				t.Errorf("line is not valid UTF-8: %q", line)
			}
		})
	}
}

// The encoder reuses its buffer: a long line must not leak into a shorter one
// that follows.
func TestJSONLinesAreIndependent(t *testing.T) {
	var (
		buf bytes.Buffer
		j   JSON
		b   []byte // reused, as a sink reuses it
	)
	long, short := tcpClose(), tcpClose()
	long.Comm = comm(`""""""""""""""`) // every byte escaped: a long line
	short.Kind = event.KindOpen
	for _, ev := range []*event.Event{&long, &short, &long} {
		b = j.Append(b[:0], ev)
		buf.Write(b)
	}
	lines := strings.SplitAfter(buf.String(), "\n")
	if len(lines) != 4 || lines[3] != "" {
		t.Fatalf("want 3 lines, got %q", buf.String())
	}
	for i, want := range []string{"close", "open", "close"} {
		if m := decodeJSONLine(t, lines[i]); m["event"] != want {
			t.Errorf("line %d event = %v, want %s", i, m["event"], want)
		}
	}
	if lines[0] != lines[2] {
		t.Errorf("the same event encoded twice differs:\n%s%s", lines[0], lines[2])
	}
}

// textLines writes events and returns the output's lines, without newlines.
func textLines(t *testing.T, evs ...event.Event) []string {
	t.Helper()
	var (
		w Text
		b []byte
	)
	for i := range evs {
		b = w.Append(b, &evs[i])
	}
	out := string(b)
	if !strings.HasSuffix(out, "\n") {
		t.Fatalf("output does not end in a newline: %q", out)
	}
	return strings.Split(strings.TrimSuffix(out, "\n"), "\n")
}

func textEvents() []event.Event {
	open := tcpClose()
	open.Kind, open.Time = event.KindOpen, open.Established

	v6 := event.Event{
		Kind: event.KindClose, Proto: event.ProtoUDP, Start: t0, Time: t0.Add(4500 * time.Millisecond),
		PID: 1, Comm: comm("systemd-resolve"), PIDSource: event.PIDSourceSocket,
		Local:     netip.MustParseAddrPort("[2001:db8::5]:53"),
		Remote:    netip.MustParseAddrPort("[2001:db8::6]:50000"),
		Family:    6,
		Direction: event.DirectionInbound, TxBytes: 512, RxBytes: 1024, Destinations: 3,
	}
	failed := event.Event{
		Kind: event.KindConnectFailed, Proto: event.ProtoTCP, Start: t0, Time: t0.Add(3 * time.Second),
		Local:     netip.MustParseAddrPort("10.0.0.5:40000"),
		Remote:    netip.MustParseAddrPort("192.0.2.1:443"),
		Family:    4,
		Direction: event.DirectionOutbound, Errno: unix.ETIMEDOUT,
	}
	return []event.Event{tcpClose(), open, v6, failed}
}

func TestTextHeaderOnceAndOneLinePerEvent(t *testing.T) {
	evs := textEvents()
	lines := textLines(t, evs...)
	if len(lines) != 1+len(evs) {
		t.Fatalf("got %d lines, want a header and %d events:\n%s", len(lines), len(evs), strings.Join(lines, "\n"))
	}
	for _, col := range []string{"TIME", "EVENT", "PROTO", "PID", "COMM", "LOCAL", "REMOTE", "DIR", "DURATION", "TX", "RX", "NOTES"} {
		if !strings.Contains(lines[0], col) {
			t.Errorf("header %q has no %s column", lines[0], col)
		}
	}
	for i, l := range lines[1:] {
		if strings.Contains(l, "LOCAL") {
			t.Errorf("line %d repeats the header: %q", i+1, l)
		}
		if want := evs[i].Kind.String(); !strings.Contains(l, " "+want+" ") {
			t.Errorf("line %d = %q, want the event kind %s", i+1, l, want)
		}
	}
	// A second encoder starts its own output with a header.
	if again := textLines(t, evs[0]); len(again) != 2 || again[0] != lines[0] {
		t.Errorf("a new encoder's output = %q, want the header then the event", again)
	}
}

// columnStarts returns, for each header column, its offset in display cells
// (runes: every character here is one cell wide).
func columnStarts(header string) map[string]int {
	starts := map[string]int{}
	for _, f := range strings.Fields(header) {
		i := strings.Index(header, f+" ")
		if f == "NOTES" {
			i = strings.Index(header, f)
		}
		starts[f] = utf8.RuneCountInString(header[:i])
	}
	return starts
}

// field returns the text of line from display cell start up to the next
// space.
func field(line string, start int) string {
	r := []rune(line)
	if start > len(r) {
		return ""
	}
	rest := string(r[start:])
	if i := strings.IndexByte(rest, ' '); i >= 0 {
		rest = rest[:i]
	}
	return rest
}

func TestTextLocalColumnAligned(t *testing.T) {
	evs := textEvents()
	lines := textLines(t, evs...)
	local := strings.Index(lines[0], "LOCAL")
	for i, l := range lines[1:] {
		want := evs[i].Local.String()
		if got := l[local : local+len(want)]; got != want {
			t.Errorf("line %d: at the LOCAL offset %d found %q, want %q\n%s\n%s", i+1, local, got, want, lines[0], l)
		}
		if l[local-1] != ' ' {
			t.Errorf("line %d: the column before LOCAL runs into it: %q", i+1, l)
		}
	}
}

// Every column must start under its header on a terminal, which counts
// cells, not bytes: "850µs" is 5 cells but 6 bytes.
func TestTextColumnsAlignedOnTerminal(t *testing.T) {
	ev := tcpClose()
	ev.Time = ev.Start.Add(850 * time.Microsecond)
	lines := textLines(t, ev)
	starts := columnStarts(lines[0])
	for col, want := range map[string]string{
		"EVENT": "close", "PROTO": "tcp", "PID": "4242", "COMM": "curl",
		"LOCAL": "10.0.0.5:41234", "REMOTE": "93.184.216.34:443", "DIR": "outbound",
		"DURATION": "850µs", "TX": "4.0K", "RX": "12M", "NOTES": "closed_by=remote",
	} {
		if got := field(lines[1], starts[col]); got != want {
			t.Errorf("%s column (cell %d) reads %q, want %q: the column is not under its header on a terminal"+
				" (a multi-byte µ in DURATION is padded as 2 cells)\n%s\n%s", col, starts[col], got, want, lines[0], lines[1])
		}
	}
}

func TestTextCells(t *testing.T) {
	tests := []struct {
		name string
		ev   func() event.Event
		want map[string]string // column -> text at its start
	}{
		{"tcp close shows lifetime, bytes and notes", tcpClose, map[string]string{
			"DURATION": "1.50s", "TX": "4.0K", "RX": "12M", "PID": "4242",
		}},
		{"outbound open shows the connect latency and no bytes", func() event.Event {
			e := tcpClose()
			e.Kind, e.Time = event.KindOpen, e.Established
			return e
		}, map[string]string{"DURATION": "12.3ms", "TX": "", "RX": ""}},
		{"unknown pid shows a question mark", func() event.Event {
			e := tcpClose()
			e.PIDSource, e.PID = event.PIDSourceUnknown, 0
			return e
		}, map[string]string{"PID": "?"}},
		{"pre-existing close has no duration", func() event.Event {
			e := tcpClose()
			e.Start, e.PreExisting = time.Time{}, true
			return e
		}, map[string]string{"DURATION": "", "TX": "4.0K"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lines := textLines(t, tt.ev())
			starts := columnStarts(lines[0])
			for col, want := range tt.want {
				if got := field(lines[1], starts[col]); got != want {
					t.Errorf("%s = %q, want %q\n%s\n%s", col, got, want, lines[0], lines[1])
				}
			}
		})
	}
}

func TestTextNotes(t *testing.T) {
	tests := []struct {
		name string
		ev   func() event.Event
		want string
	}{
		{"tcp close: who closed, and a reset", tcpClose, "closed_by=remote reset"},
		{"tcp close into time_wait", func() event.Event {
			e := tcpClose()
			e.Reset, e.TimeWait, e.ClosedBy = false, true, event.ClosedByLocal
			return e
		}, "closed_by=local time_wait"},
		{"pre-existing", func() event.Event {
			e := tcpClose()
			e.Reset, e.PreExisting, e.ClosedBy = false, true, event.ClosedByUnknown
			return e
		}, "closed_by=unknown pre_existing"},
		{"a connect in progress at start ends: its open or its failure is pre-existing too", func() event.Event {
			e := tcpClose()
			e.Kind, e.Errno, e.PreExisting = event.KindConnectFailed, unix.ETIMEDOUT, true
			return e
		}, "timeout pre_existing"},
		{"a pre-existing open has only that note", func() event.Event {
			e := tcpClose()
			e.Kind, e.PreExisting = event.KindOpen, true
			return e
		}, "pre_existing"},
		{"udp close counts destinations", func() event.Event {
			e := tcpClose()
			e.Proto, e.Destinations = event.ProtoUDP, 7
			return e
		}, "destinations=7"},
		{"connect_failed gives the reason", func() event.Event {
			e := tcpClose()
			e.Kind, e.Errno = event.KindConnectFailed, unix.EHOSTUNREACH
			return e
		}, "unreachable"},
		{"bind_failed gives the reason", func() event.Event {
			e := tcpClose()
			e.Kind, e.Errno, e.Local = event.KindBindFailed, unix.EADDRINUSE, netip.MustParseAddrPort("0.0.0.0:8080")
			return e
		}, "address_in_use"},
		{"a worker's close names the listener", func() event.Event {
			e := tcpClose()
			e.Reset, e.PIDSource, e.ListenerPID = false, event.PIDSourceClose, 300
			return e
		}, "closed_by=remote listener=300"},
		{"unknown pid is noted", func() event.Event {
			e := tcpClose()
			e.Kind, e.Errno, e.PIDSource = event.KindConnectFailed, unix.ECONNREFUSED, event.PIDSourceUnknown
			return e
		}, "refused pid_unknown"},
		{"unknown pid on an open is the only note", func() event.Event {
			e := tcpClose()
			e.Kind, e.PIDSource = event.KindOpen, event.PIDSourceUnknown
			return e
		}, "pid_unknown"},
		{"unit and the container's short id", func() event.Event {
			e := tcpClose()
			e.Kind, e.Unit, e.ContainerID = event.KindOpen, "web\x1b.service", strings.Repeat("ab", 32)
			return e
		}, "unit=web?.service container=abababababab"},
		{"an open has no notes", func() event.Event {
			e := tcpClose()
			e.Kind = event.KindOpen
			return e
		}, ""},
		{"a thread named apart from its process", func() event.Event {
			e := tcpClose()
			e.Kind, e.Comm, e.Thread = event.KindOpen, comm("dig"), comm("isc-net-0000")
			return e
		}, "thread=isc-net-0000"},
		{"the thread after the close notes, its control bytes made safe", func() event.Event {
			e := tcpClose()
			e.Thread = comm("w\x1b[2J")
			return e
		}, "closed_by=remote reset thread=w?[2J"},
		{"a thread with the process's name is no note", func() event.Event {
			e := tcpClose()
			e.Kind, e.Thread = event.KindOpen, e.Comm
			return e
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lines := textLines(t, tt.ev())
			notes := columnStarts(lines[0])["NOTES"]
			r := []rune(lines[1])
			got := ""
			if notes <= len(r) {
				got = string(r[notes:])
			}
			if got != tt.want {
				t.Errorf("notes = %q, want %q: notes must start under the NOTES header, with no leading space\n%s\n%s", got, tt.want, lines[0], lines[1])
			}
		})
	}
}

func TestAppendHumanBytes(t *testing.T) {
	tests := []struct {
		n    uint64
		want string
	}{
		{0, "0B"},
		{512, "512B"},
		{1023, "1023B"},
		{1024, "1.0K"},
		{1536, "1.5K"},
		{4096, "4.0K"},
		{10 << 10, "10K"},
		{12 << 20, "12M"},
		{3328599654, "3.1G"}, // 3.1 GiB
		{5 << 40, "5.0T"},
		{1 << 63, "8.0E"},
	}
	for _, tt := range tests {
		if got := string(appendHumanBytes([]byte("x"), tt.n)); got != "x"+tt.want {
			t.Errorf("appendHumanBytes(%d) = %q, want %q after the existing bytes", tt.n, got, "x"+tt.want)
		}
	}
}

func TestAppendHumanDuration(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{0, ""},
		{-time.Second, ""},
		{850 * time.Microsecond, "850µs"},
		{999 * time.Microsecond, "999µs"},
		{time.Millisecond, "1.0ms"},
		{12300 * time.Microsecond, "12.3ms"},
		{time.Second, "1.00s"},
		{4500 * time.Millisecond, "4.50s"},
		{200 * time.Second, "3m20s"},
		{2*time.Hour + 400*time.Millisecond, "2h0m0s"},
	}
	for _, tt := range tests {
		if got := string(appendHumanDuration([]byte("x"), tt.d)); got != "x"+tt.want {
			t.Errorf("appendHumanDuration(%v) = %q, want %q", tt.d, got, "x"+tt.want)
		}
	}
}

// The cached timestamp formatter must agree with time.RFC3339Nano for any
// time, across minute, day and year boundaries and nanosecond patterns.
func TestTimestampsMatchRFC3339Nano(t *testing.T) {
	var c timestamps
	base := []time.Time{
		time.Date(2026, 12, 31, 23, 59, 59, 999999999, time.UTC),
		time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2024, 2, 29, 12, 30, 5, 120000000, time.UTC),
		time.Date(2026, 6, 1, 8, 0, 59, 1, time.FixedZone("CEST", 2*3600)),
		time.Date(1969, 12, 31, 23, 59, 59, 500, time.UTC),
	}
	for _, b := range base {
		for _, d := range []time.Duration{0, time.Nanosecond, time.Millisecond, time.Second, time.Minute, 90 * time.Second, 24 * time.Hour} {
			tm := b.Add(d)
			got := string(c.append(nil, tm))
			want := tm.UTC().Format(time.RFC3339Nano)
			if got != want {
				t.Errorf("%v: got %s, want %s", tm, got, want)
			}
		}
	}
}

func TestAppendMillisMatchesShortestFloat(t *testing.T) {
	for _, us := range []int64{0, 1, 10, 51, 100, 999, 1000, 1001, 12340, 12345, 3000000, 123456789} {
		d := time.Duration(us) * time.Microsecond
		got := string(appendMillis(nil, "", d))
		want := strconv.FormatFloat(float64(us)/1000, 'f', -1, 64)
		if got != want {
			t.Errorf("%v: got %s, want %s", d, got, want)
		}
	}
}

// A full IPv6 address and port (47 bytes) does not fit the default LOCAL
// and REMOTE columns: they grow, and the header is written again above the
// first wider line, so every line's cells stand under the header above it.
func TestTextColumnsGrowForLongAddresses(t *testing.T) {
	v4 := tcpClose()
	v6 := tcpClose()
	v6.Family = 6
	v6.Local = netip.MustParseAddrPort("[2001:db8:1234:5678:9abc:def0:1234:5678]:65535")
	v6.Remote = netip.MustParseAddrPort("[2001:db8:ffff:ffff:ffff:ffff:ffff:ffff]:443")
	lines := textLines(t, v4, v6, v4)
	if len(lines) != 5 || !strings.HasPrefix(lines[0], "TIME") || !strings.HasPrefix(lines[2], "TIME") {
		t.Fatalf("want header, IPv4 line, header, IPv6 line, IPv4 line; got:\n%s", strings.Join(lines, "\n"))
	}
	for i, ev := range map[int]event.Event{1: v4, 3: v6, 4: v4} {
		header := lines[0]
		if i > 2 {
			header = lines[2]
		}
		starts := columnStarts(header)
		for col, want := range map[string]string{
			"LOCAL": ev.Local.String(), "REMOTE": ev.Remote.String(), "DIR": "outbound", "NOTES": "closed_by=remote",
		} {
			if got := field(lines[i], starts[col]); got != want {
				t.Errorf("line %d: %s column reads %q, want %q\n%s\n%s", i, col, got, want, header, lines[i])
			}
		}
	}
}

// Naming the workload costs no allocation per event: the names are the
// resolver's strings, appended in place.
func TestEncodeWorkloadNoAllocs(t *testing.T) {
	e := tcpClose()
	e.Unit = "a-rather-long-unit-name-beyond-32-bytes@instance.service"
	e.ContainerID = strings.Repeat("ab", 32)
	var (
		j   JSON
		x   Text
		buf = make([]byte, 0, 4096)
	)
	if n := testing.AllocsPerRun(100, func() { buf = j.Append(buf[:0], &e) }); n != 0 {
		t.Errorf("JSON allocates %v times per event", n)
	}
	if n := testing.AllocsPerRun(100, func() { buf = x.Append(buf[:0], &e) }); n != 0 {
		t.Errorf("Text allocates %v times per event", n)
	}
}

func TestSummary(t *testing.T) {
	sum := event.Event{
		Kind: event.KindSummary, Start: t0, Time: t0.Add(10 * time.Second),
		Proto: event.ProtoTCP, Comm: comm("curl"), Unit: "web.service", Direction: event.DirectionOutbound, Family: 4,
		Remote: netip.MustParseAddrPort("10.0.0.1:443"),
		Summary: &event.Summary{Keys: 1, Opened: 10, Closed: 9, Failed: 3,
			Failures:  []event.ReasonCount{{Reason: "refused", Count: 2}, {Reason: "timeout", Count: 1}},
			Lifetimes: 8, P50: 1500 * time.Microsecond, P90: 20 * time.Millisecond, P99: 2 * time.Second, UnderOneSecond: 6,
			TxBytes: 2048, RxBytes: 4096, TimeWait: 9},
	}
	in := sum
	in.Direction, in.Local, in.Remote = event.DirectionInbound, netip.MustParseAddrPort("0.0.0.0:8080"), netip.AddrPort{}
	pressed := sum
	pressed.Summary = &event.Summary{Keys: 1, Opened: 37, TimeWait: 0,
		Ports: event.KeyUsage{Mechanism: event.MechanismPerDestination, Used: 47, Capacity: 100, Ratio: 0.47, TimeWait: 10}}
	other := event.Event{Kind: event.KindSummary, Start: t0, Time: t0.Add(10 * time.Second), Comm: comm("other"),
		Summary: &event.Summary{Other: true, Keys: 40, Opened: 100, Closed: 100, TimeWait: 5}}
	for _, tt := range []struct {
		name      string
		ev        event.Event
		json      string
		textParts []string
	}{
		{"outbound", sum,
			`{"ts":"2024-03-05T11:00:11.123456789Z","event":"summary","start":"2024-03-05T11:00:01.123456789Z","proto":"tcp","comm":"curl","unit":"web.service","direction":"outbound","raddr":"10.0.0.1","rport":443,` +
				`"opened":10,"closed":9,"failed":3,"failures":{"refused":2,"timeout":1},"lifetimes":8,"lifetime_p50_ms":1.5,"lifetime_p90_ms":20,"lifetime_p99_ms":2000,"under_1s_share":0.75,"tx_bytes":2048,"rx_bytes":4096,"time_wait":9}`,
			[]string{" summary tcp curl outbound to 10.0.0.1:443 unit=web.service opened=10 closed=9 failed=3 refused=2 timeout=1 p50=1.5ms p90=20.0ms p99=2.00s under_1s=75% tx=2.0K rx=4.0K time_wait=9"}},
		{"inbound is keyed by the port served", in,
			`{"ts":"2024-03-05T11:00:11.123456789Z","event":"summary","start":"2024-03-05T11:00:01.123456789Z","proto":"tcp","comm":"curl","unit":"web.service","direction":"inbound","lport":8080,` +
				`"opened":10,"closed":9,"failed":3,"failures":{"refused":2,"timeout":1},"lifetimes":8,"lifetime_p50_ms":1.5,"lifetime_p90_ms":20,"lifetime_p99_ms":2000,"under_1s_share":0.75,"tx_bytes":2048,"rx_bytes":4096,"time_wait":9}`,
			[]string{" summary tcp curl inbound port 8080 unit=web.service opened=10"}},
		{"outbound, with its port key's pressure", pressed,
			`{"ts":"2024-03-05T11:00:11.123456789Z","event":"summary","start":"2024-03-05T11:00:01.123456789Z","proto":"tcp","comm":"curl","unit":"web.service","direction":"outbound","raddr":"10.0.0.1","rport":443,` +
				`"opened":37,"closed":0,"failed":0,"failures":{},"lifetimes":0,"tx_bytes":0,"rx_bytes":0,"time_wait":0,"mechanism":"per_destination","used":47,"capacity":100,"pressure":0.47,"time_wait_ports":10}`,
			[]string{" time_wait=0 pressure=47% (47/100 per_destination)\n"}},
		{"other", other,
			`{"ts":"2024-03-05T11:00:11.123456789Z","event":"summary","start":"2024-03-05T11:00:01.123456789Z","other":true,"keys":40,"opened":100,"closed":100,"failed":0,"failures":{},"lifetimes":0,"tx_bytes":0,"rx_bytes":0,"time_wait":5}`,
			[]string{" summary other keys=40 opened=100 closed=100 failed=0 tx=0B rx=0B time_wait=5"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var j JSON
			got := string(j.Append(nil, &tt.ev))
			if got != tt.json+"\n" {
				t.Errorf("JSON\n got %s\nwant %s", got, tt.json)
			}
			var m map[string]any
			if err := json.Unmarshal([]byte(got), &m); err != nil {
				t.Errorf("not JSON: %v", err)
			}
			var x Text
			line := string(x.Append(nil, &tt.ev))
			for _, p := range tt.textParts {
				if !strings.Contains(line, p) {
					t.Errorf("text %q lacks %q", line, p)
				}
			}
			if strings.Count(line, "\n") != 1 {
				t.Errorf("text is not one line: %q", line)
			}
		})
	}
}
