package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
)

// portCounts is a multiset of ports. Ports are reused many times within a
// run, so matching compares how often each port occurs rather than sets.
type portCounts [1 << 16]int32

func countPorts(ports []uint16) *portCounts {
	c := new(portCounts)
	for _, p := range ports {
		c[p]++
	}
	return c
}

// matchMultiset counts events that can be paired with a ground-truth
// connection: per port, the smaller of the two counts. Extra events on a
// port (duplicates, other processes) therefore cannot raise completeness.
func matchMultiset(truth, events *portCounts) int {
	n := 0
	for p := range truth {
		n += int(min(truth[p], events[p]))
	}
	return n
}

// both is, per port, the smaller of the two counts: the connections on a
// port that have both events.
func both(a, b *portCounts) *portCounts {
	c := new(portCounts)
	for p := range c {
		c[p] = min(a[p], b[p])
	}
	return c
}

func total(c *portCounts) int {
	n := 0
	for _, v := range c {
		n += int(v)
	}
	return n
}

// matchSpec says which tracer events belong to this run. Events must have
// the server port on the far (client side) or near (server side) end, so
// unrelated host traffic cannot match.
type matchSpec struct {
	proto      string
	clientPID  int
	serverPID  int
	serverPort uint16
	// opens: count the tracer's open events too (the data path, whose few
	// connections open at the start and close at the end).
	opens bool
}

// eventCounts holds, per side, events with the right pid and events with
// the right ports but any pid; the gap between them is misattribution.
type eventCounts struct {
	client, clientAnyPID portCounts // keyed by the client's local port
	server, serverAnyPID portCounts // keyed by the server's remote port
	// Opens with the right pid, when matchSpec.opens; the others count
	// closes.
	clientOpen, serverOpen portCounts
	badLines               int
}

func (ec *eventCounts) addClient(pid int, lport uint16, s matchSpec) {
	ec.clientAnyPID[lport]++
	if pid == s.clientPID {
		ec.client[lport]++
	}
}

func (ec *eventCounts) addServer(pid int, rport uint16, s matchSpec) {
	ec.serverAnyPID[rport]++
	if pid == s.serverPID {
		ec.server[rport]++
	}
}

// portlifeEvent is the subset of a portlife JSON line the benchmark needs;
// decoding into it skips the rest cheaply.
type portlifeEvent struct {
	Event     string `json:"event"`
	Proto     string `json:"proto"`
	Direction string `json:"direction"`
	LPort     int    `json:"lport"`
	RPort     int    `json:"rport"`
	PID       int    `json:"pid"`
}

// closeMarker prefilters lines: only close events are decoded (and opens
// when asked for, on the data path, which has a few), which keeps the parse
// of several hundred thousand lines well under a second.
var (
	closeMarker = []byte(`"close"`)
	openMarker  = []byte(`"open"`)
)

func parsePortlife(r io.Reader, s matchSpec) (*eventCounts, error) {
	ec := new(eventCounts)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	var ev portlifeEvent
	for sc.Scan() {
		line := sc.Bytes()
		if !bytes.Contains(line, closeMarker) && !(s.opens && bytes.Contains(line, openMarker)) {
			continue
		}
		ev = portlifeEvent{}
		if err := json.Unmarshal(line, &ev); err != nil {
			ec.badLines++
			continue
		}
		addPortlifeEvent(ec, &ev, s)
	}
	if err := sc.Err(); err != nil {
		return ec, fmt.Errorf("read portlife output: %w", err)
	}
	return ec, nil
}

func addPortlifeEvent(ec *eventCounts, ev *portlifeEvent, s matchSpec) {
	if ev.Proto != s.proto || !validPort(ev.LPort) || !validPort(ev.RPort) {
		return
	}
	if ev.Event == "open" && s.opens {
		switch {
		case ev.Direction == "outbound" && uint16(ev.RPort) == s.serverPort && ev.PID == s.clientPID:
			ec.clientOpen[ev.LPort]++
		case ev.Direction == "inbound" && uint16(ev.LPort) == s.serverPort && ev.PID == s.serverPID:
			ec.serverOpen[ev.RPort]++
		}
		return
	}
	if ev.Event != "close" {
		return
	}
	switch {
	case ev.Direction == "outbound" && uint16(ev.RPort) == s.serverPort:
		ec.addClient(ev.PID, uint16(ev.LPort), s)
	case ev.Direction == "inbound" && uint16(ev.LPort) == s.serverPort:
		ec.addServer(ev.PID, uint16(ev.RPort), s)
	}
}

func validPort(p int) bool { return p > 0 && p < 1<<16 }

// tcplifeLine is one parsed row of tcplife's default output:
//
//	PID COMM LADDR LPORT RADDR RPORT TX_KB RX_KB MS
//
// COMM is the task name and may contain spaces, so the fixed columns are
// taken from both ends of the line.
type tcplifeLine struct {
	PID          int
	LPort, RPort uint16
}

func parseTcplifeLine(line []byte) (tcplifeLine, bool) {
	f := bytes.Fields(line)
	if len(f) < 9 {
		return tcplifeLine{}, false
	}
	pid, err := strconv.Atoi(string(f[0]))
	if err != nil {
		return tcplifeLine{}, false // header or noise
	}
	n := len(f)
	lport, err1 := strconv.ParseUint(string(f[n-6]), 10, 16)
	rport, err2 := strconv.ParseUint(string(f[n-4]), 10, 16)
	if err1 != nil || err2 != nil {
		return tcplifeLine{}, false
	}
	return tcplifeLine{PID: pid, LPort: uint16(lport), RPort: uint16(rport)}, true
}

func parseTcplife(r io.Reader, s matchSpec) (*eventCounts, error) {
	ec := new(eventCounts)
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		l, ok := parseTcplifeLine(sc.Bytes())
		if !ok {
			continue
		}
		switch {
		case l.RPort == s.serverPort:
			ec.addClient(l.PID, l.LPort, s)
		case l.LPort == s.serverPort:
			ec.addServer(l.PID, l.RPort, s)
		}
	}
	if err := sc.Err(); err != nil {
		return ec, fmt.Errorf("read tcplife output: %w", err)
	}
	return ec, nil
}

// tcplifeLost matches libbpf-tools' perf buffer callback message,
// "lost %llu events on CPU #%d", printed to stderr once per overflow.
var tcplifeLost = regexp.MustCompile(`lost (\d+) events`)

func parseTcplifeLost(r io.Reader) int {
	lost := 0
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if m := tcplifeLost.FindSubmatch(sc.Bytes()); m != nil {
			n, _ := strconv.Atoi(string(m[1]))
			lost += n
		}
	}
	return lost
}

// parsePortlifeLost finds the "lost" field of the last "tracing stopped" log
// line (zap JSON, one object per line). ok is false if there is none.
func parsePortlifeLost(r io.Reader) (lost int, ok bool) {
	st := parsePortlifeStopped(r)
	if st == nil || st.Lost == nil {
		return 0, false
	}
	n, err := st.Lost.Int64()
	return int(n), err == nil
}

func parseFile[T any](path string, parse func(io.Reader) T) (T, error) {
	f, err := os.Open(path)
	if err != nil {
		var zero T
		return zero, err
	}
	defer f.Close()
	return parse(f), nil
}
