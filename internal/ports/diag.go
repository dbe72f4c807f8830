package ports

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/internal/event"
	"github.com/portlife/portlife/internal/netns"
)

// The sockets that hold ports when accounting starts come from sock_diag,
// once per network namespace: the tracer's adoption reports no TIME_WAIT
// (it has no full socket), and the ports a TIME_WAIT holds are what
// exhaustion is made of. A netlink socket belongs to the namespace it was
// made in, so one thread enters each namespace only to make it.

// Existing is one socket that sock_diag listed.
type Existing struct {
	NetNS   uint32
	Proto   event.Proto
	Family  int
	State   uint8 // TCP state (TCP_TIME_WAIT for every timewait socket, TCP_LISTEN...); UDP: TCP_ESTABLISHED if connected
	Local   netip.AddrPort
	Remote  netip.AddrPort
	Cookie  uint64
	Inode   uint32
	Expires time.Duration // TIME_WAIT: until it ends
	PID     uint32        // a process holding it; 0 if none (TIME_WAIT) or unknown
	Comm    event.Comm
}

const (
	tcpEstablished = 1
	tcpFinWait2    = 5
	tcpTimeWait    = 6
	tcpListen      = 10
	tcpSynRecv     = 3
	tcpClose       = 7
	// timerTimeWait is idiag_timer of a timewait socket.
	timerTimeWait = 3
)

// Namespaces lists every network namespace a process is in, with a path to
// enter each by; those only bind-mounted under /run/netns too.
func Namespaces() map[uint32]string {
	out := map[uint32]string{}
	add := func(p string) bool {
		if ino, ok := netns.Inode(p); ok {
			if _, dup := out[ino]; !dup {
				out[ino] = p
			}
		}
		return true
	}
	add("/proc/thread-self/ns/net") // the caller's: see ownNetns
	netns.Walk(add)
	return out
}

// Dump lists the TCP and UDP sockets of the namespaces given (inode to
// path), with their owners where a process holds them (withOwners: it reads
// every process's descriptors). It returns the namespaces it listed; one that
// cannot be read is reported in the error, and the others are still listed.
func Dump(namespaces map[uint32]string, withOwners bool) ([]Existing, map[uint32]bool, error) {
	own := ownNetns()
	var out []Existing
	var errs []error
	done := map[uint32]bool{}
	for inode, path := range namespaces {
		var fd int
		mk := func() (err error) {
			fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
			return err
		}
		var err error
		if inode == own {
			err = mk()
		} else {
			err = inNetns(inode, path, mk)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("network namespace %d: %w", inode, err))
			continue
		}
		// Each listing is appended to out in place: with 100,000 TIME_WAITs
		// a copy per family and namespace was tens of MB at start.
		first, ok := len(out), true
		for _, q := range []struct {
			proto  event.Proto
			family uint8
		}{{event.ProtoTCP, unix.AF_INET}, {event.ProtoTCP, unix.AF_INET6}, {event.ProtoUDP, unix.AF_INET}, {event.ProtoUDP, unix.AF_INET6}} {
			if out, err = dumpOne(fd, q.proto, q.family, out); err != nil {
				errs = append(errs, fmt.Errorf("network namespace %d: %w", inode, err))
				ok = false
				break
			}
		}
		unix.Close(fd)
		if !ok {
			out = out[:first]
			continue
		}
		done[inode] = true
		for i := first; i < len(out); i++ {
			out[i].NetNS = inode
		}
	}
	if withOwners {
		owners(out)
	}
	return out, done, errors.Join(errs...)
}

// inet_diag_req_v2 and inet_diag_msg, from linux/inet_diag.h.
type diagReq struct {
	family, protocol, ext, pad uint8
	states                     uint32
	id                         diagSockID
}

type diagSockID struct {
	sport, dport [2]byte // network order
	src, dst     [16]byte
	ifindex      uint32
	cookie       [2]uint32
}

type diagMsg struct {
	family, state, timer, retrans uint8
	id                            diagSockID
	expires, rqueue, wqueue       uint32
	uid, inode                    uint32
}

// dumpOne appends the sockets of one protocol and family to out.
func dumpOne(fd int, proto event.Proto, family uint8, out []Existing) ([]Existing, error) {
	req := diagReq{family: family, protocol: uint8(proto), states: ^uint32(0) &^ (1 << tcpSynRecv)}
	hdr := unix.NlMsghdr{
		Len:   uint32(unix.SizeofNlMsghdr + unsafe.Sizeof(req)),
		Type:  20, // SOCK_DIAG_BY_FAMILY
		Flags: unix.NLM_F_REQUEST | unix.NLM_F_DUMP,
		Seq:   1,
	}
	buf := make([]byte, hdr.Len)
	*(*unix.NlMsghdr)(unsafe.Pointer(&buf[0])) = hdr
	*(*diagReq)(unsafe.Pointer(&buf[unix.SizeofNlMsghdr])) = req
	if err := unix.Sendto(fd, buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return out, fmt.Errorf("sock_diag request: %w", err)
	}
	rb := make([]byte, 64<<10)
	for {
		n, _, err := unix.Recvfrom(fd, rb, 0)
		if err != nil {
			return out, fmt.Errorf("sock_diag reply: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(rb[:n])
		if err != nil {
			return out, fmt.Errorf("sock_diag reply: %w", err)
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return out, nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if errno := int32(binary.NativeEndian.Uint32(m.Data)); errno != 0 {
						return out, fmt.Errorf("sock_diag: %w", unix.Errno(-errno))
					}
				}
				return out, nil
			}
			if len(m.Data) < int(unsafe.Sizeof(diagMsg{})) {
				continue
			}
			d := (*diagMsg)(unsafe.Pointer(&m.Data[0]))
			state := d.state
			if proto == event.ProtoTCP && state == tcpFinWait2 && d.timer == timerTimeWait {
				// A timewait socket reports its substate: FIN_WAIT2 while
				// an orphan that closed first waits for the peer's FIN,
				// TIME_WAIT once it came. Either way no socket is left
				// to close, and it holds its port until its timer.
				state = tcpTimeWait
			}
			x := Existing{
				Proto:  proto,
				State:  state,
				Cookie: uint64(d.id.cookie[0]) | uint64(d.id.cookie[1])<<32,
				Inode:  d.inode,
				Local:  diagAddr(d.family, d.id.src, d.id.sport),
				Remote: diagAddr(d.family, d.id.dst, d.id.dport),
			}
			x.Family = 4
			if x.Local.Addr().Is6() {
				x.Family = 6
			}
			if state == tcpTimeWait {
				x.Expires = time.Duration(d.expires) * time.Millisecond
			}
			out = append(out, x)
		}
	}
}

// diagAddr reads an address as sock_diag gives it; a v4-mapped one is IPv4,
// as the tracer reports it.
func diagAddr(family uint8, a [16]byte, port [2]byte) netip.AddrPort {
	p := binary.BigEndian.Uint16(port[:])
	if family == unix.AF_INET {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(a[:4])), p)
	}
	return netip.AddrPortFrom(netip.AddrFrom16(a).Unmap(), p)
}

// owners fills in the process holding each socket, from the descriptors
// /proc lists: the oldest process, where several hold one.
func owners(socks []Existing) {
	want := map[uint32][]int{}
	for i, s := range socks {
		if s.Inode != 0 {
			want[s.Inode] = append(want[s.Inode], i)
		}
	}
	if len(want) == 0 {
		return
	}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.ParseUint(p.Name(), 10, 32)
		if err != nil {
			continue
		}
		dir := "/proc/" + p.Name() + "/fd"
		fds, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		var comm event.Comm
		for _, fd := range fds {
			link, err := os.Readlink(dir + "/" + fd.Name())
			if err != nil || !strings.HasPrefix(link, "socket:[") {
				continue
			}
			ino, err := strconv.ParseUint(strings.TrimSuffix(link[len("socket:["):], "]"), 10, 32)
			if err != nil {
				continue
			}
			for _, i := range want[uint32(ino)] {
				if socks[i].PID != 0 && socks[i].PID < uint32(pid) {
					continue
				}
				if comm[0] == 0 {
					b, _ := os.ReadFile("/proc/" + p.Name() + "/comm")
					copy(comm[:15], strings.TrimSuffix(string(b), "\n"))
				}
				socks[i].PID, socks[i].Comm = uint32(pid), comm
			}
		}
	}
}

// Prime counts the sockets that existed at start, as of now: the ports they
// hold are counted from the first second, and their ends are followed by
// cookie like any other.
func (a *Accountant) Prime(socks []Existing) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.cfg.Now()
	a.priming = true
	defer func() {
		a.priming = false
		for _, k := range a.keys {
			a.check(k, now, nil)
		}
	}()
	a.adopt(socks, now)
}

// adopt counts the sockets listed that are not tracked yet, and returns how
// many it counted.
func (a *Accountant) adopt(socks []Existing, now time.Time) int {
	keep := a.cfg.Keep
	n := a.sockets.len()
	// TIME_WAITs by when they end, so their deadlines queue in order.
	slices.SortFunc(socks, func(x, y Existing) int { return cmp.Compare(x.Expires, y.Expires) })
	type port struct {
		netns uint32
		port  uint16
	}
	listening := map[port]bool{}
	for _, x := range socks {
		if x.Proto == event.ProtoTCP && x.State == tcpListen {
			listening[port{x.NetNS, x.Local.Port()}] = true
		}
	}
	var e event.Event
	for _, x := range socks {
		if x.Local.Port() == 0 || keep != nil && !keep(&x) {
			continue
		}
		if x.Proto == event.ProtoTCP && x.State != tcpListen && listening[port{x.NetNS, x.Local.Port()}] {
			continue // accepted: it shares its listener's port
		}
		if a.sockets.has(x.Cookie) {
			continue
		}
		e = event.Event{
			Kind: event.KindOpen, Proto: x.Proto, Family: x.Family, Time: now, PID: x.PID, Comm: x.Comm,
			NetNS: x.NetNS, Local: x.Local, Remote: x.Remote, Cookie: x.Cookie, PreExisting: true,
			Direction: event.DirectionOutbound,
		}
		switch {
		case x.Proto == event.ProtoTCP && x.State == tcpListen, x.Proto == event.ProtoTCP && x.State == tcpClose:
			// A listener, or a socket bound and not connected: it took its
			// port with bind() or listen(), so connect() skips that port
			// for every destination (B), and bind() too.
			a.add(&e, false, time.Time{}, true)
		case x.Proto == event.ProtoTCP && x.State == tcpTimeWait:
			a.add(&e, true, now.Add(x.Expires-timeWaitLen), false)
		case x.Proto == event.ProtoUDP:
			// Connected or not, a UDP socket's port in the range is its own.
			a.add(&e, false, time.Time{}, false)
		case x.Proto == event.ProtoTCP:
			a.add(&e, false, time.Time{}, false)
		}
	}
	return a.sockets.len() - n
}

// Reconcile compares what is tracked with the sockets the kernel lists now,
// in the namespaces seen so far: a socket tracked but gone (its end was not
// seen: a consumer queue that dropped it, a TIME_WAIT reused, killed or never
// made) is forgotten, a TIME_WAIT's end is taken from the kernel's timer, and
// a socket present but not tracked (its open was not seen) is counted. Only
// sockets tracked since before the dump began are forgotten, so one whose
// open came in meanwhile stays. It runs the dump without the lock.
func (a *Accountant) Reconcile() error {
	a.mu.Lock()
	paths := map[uint32]string{}
	var errs []error
	for _, s := range a.sockets.all() {
		paths[s.netns] = ""
	}
	for inode := range paths {
		n := a.netns[inode]
		if ino, ok := netns.Inode(n.path); ok && ino == inode {
			paths[inode] = n.path
			continue
		}
		p, err := netns.Find(inode, n.tasks[0], n.tasks[1])
		if err != nil {
			delete(paths, inode) // no process left in it: its sockets end with it
			continue
		}
		paths[inode], n.path = p, p
	}
	began := a.cfg.Now()
	a.mu.Unlock()

	socks, listed, err := a.cfg.Dump(paths, false)
	if err != nil {
		errs = append(errs, err)
	}
	byCookie := make(map[uint64]*Existing, len(socks))
	var missing []Existing
	a.mu.Lock()
	for i := range socks {
		x := &socks[i]
		byCookie[x.Cookie] = x
		if a.sockets.has(x.Cookie) || x.Inode == 0 {
			continue
		}
		// Only those it would count need an owner: the /proc walk is the
		// dear part.
		if n := a.netns[x.NetNS]; n != nil && n.sys.InRange(x.Local.Port()) && (a.cfg.Keep == nil || a.cfg.Keep(x)) {
			missing = append(missing, *x)
		}
	}
	a.mu.Unlock()
	if len(missing) > 0 {
		owners(missing) // the few whose open was not seen, from /proc
	}

	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.cfg.Now()
	for cookie, s := range a.sockets.all() {
		if !listed[s.netns] || !s.added.time().Before(began.Add(-time.Second)) {
			continue
		}
		x := byCookie[cookie]
		switch {
		case x == nil:
			a.stats.ReconciledGone++
			a.drop(cookie, s, began, nil)
		case s.timeWait && x.State == tcpTimeWait:
			// The kernel's timer: later if a FIN retransmitted rescheduled it.
			if exp := began.Add(x.Expires); exp.Sub(s.expires.time()) > time.Second {
				s.expires = stampOf(exp)
				a.sockets.put(cookie, s)
				a.expireQ.push(deadline{cookie, exp})
			}
		}
	}
	for i := range missing {
		if o := byCookie[missing[i].Cookie]; o != nil {
			o.PID, o.Comm = missing[i].PID, missing[i].Comm
		}
	}
	var fresh []Existing
	for i := range socks {
		if !a.sockets.has(socks[i].Cookie) && listed[socks[i].NetNS] {
			fresh = append(fresh, socks[i])
		}
	}
	a.stats.ReconciledFound += uint64(a.adopt(fresh, now))
	return errors.Join(errs...)
}
