package tracer

import (
	"bufio"
	"cmp"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"slices"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/internal/event"
	"github.com/portlife/portlife/internal/netns"
)

// adoptExisting hands the kernel side the sockets that existed before the
// hooks were attached, so that their ends and their listeners' children are
// reported too (bpf/existing.bpf.h). The kernel lists every socket that a
// process holds, with the process; then, in batches that fit the kernel's
// owner table, the TCP and UDP socket iterators, which see one network
// namespace at a time, adopt the batch's sockets in every namespace that
// holds a socket or a process. What only adoption uses is freed when it
// returns.
func (t *Tracer) adoptExisting() error {
	defer t.closeAdoption()
	found, err := t.findSockets()
	if err != nil {
		return fmt.Errorf("listing the sockets processes hold: %w", err)
	}
	namespaces, unreachable := t.namespaces(found)
	defer func() {
		for _, ns := range namespaces {
			ns.close()
		}
	}()

	// Sockets in a namespace that cannot be entered are not adopted: their
	// ends are lost, and counted.
	var lost uint64
	for i := range found.socks {
		if s := &found.socks[i]; unreachable[s.netns] && s.adoptable {
			lost++
		}
	}
	if lost > 0 {
		t.notAdopted.Store(lost)
		t.log.Warn("some sockets that existed at start are in network namespaces portlife cannot enter: their ends are not reported",
			zap.Uint64("sockets", lost), zap.Int("netns", len(unreachable)))
	}

	if !t.KernelCookies() && t.cfg.Filter.WantsProto(event.ProtoTCP) {
		t.giveCookies(namespaces)
	}
	batches := found.batches(int(t.objs.FdOwners.MaxEntries()))
	listeners := found.listeners()
	for _, b := range batches {
		if err := t.adoptBatch(found, b, namespaces, listeners); err != nil {
			return err
		}
	}
	t.log.Debug("adopted existing sockets", zap.Int("sockets", len(found.socks)),
		zap.Int("batches", len(batches)), zap.Int("netns", len(namespaces)))
	return nil
}

// closeAdoption frees the programs and maps that only adoption uses.
func (t *Tracer) closeAdoption() {
	for _, c := range []io.Closer{
		t.objs.FindOwners, t.objs.TcpExisting, t.objs.UdpExisting, t.objs.FdOwners, t.objs.ListenPorts,
	} {
		c.Close()
	}
}

// foundSock is a socket a process held at start, as find_owners told it.
type foundSock struct {
	ino       uint64
	proc      int // index into found.procs
	netns     uint32
	fd        uint32 // in procs[proc]
	lport     uint16
	listening bool
	foreign   bool // held by a process outside the socket's namespace
	adoptable bool // a walk adopts it: it is connected, listening or bound
}

// found is every TCP and UDP socket processes held at start, once each
// with its oldest holder, sorted by inode number.
type found struct {
	socks []foundSock
	procs []foundProc
}

type foundProc struct {
	owner portlifeOwner
	start uint64 // when it started (CLOCK_MONOTONIC, ns): the oldest holder of a socket owns it
}

const sockFileSize = int(unsafe.Sizeof(portlifeSockFile{}))

// findSockets runs find_owners, which writes one record per socket
// descriptor of every process.
func (t *Tracer) findSockets() (*found, error) {
	it, err := link.AttachIter(link.IterOptions{Program: t.objs.FindOwners})
	if err != nil {
		return nil, fmt.Errorf("attaching the iterator: %w", err)
	}
	defer it.Close()
	r, err := it.Open()
	if err != nil {
		return nil, err
	}
	defer r.Close()

	f := &found{}
	procs := map[uint32]int{}
	in := bufio.NewReaderSize(r, 64<<10)
	buf := make([]byte, sockFileSize)
	for {
		if _, err := io.ReadFull(in, buf); err != nil {
			if err == io.EOF {
				break
			}
			return nil, fmt.Errorf("reading the iterator: %w", err)
		}
		rec := (*portlifeSockFile)(unsafe.Pointer(&buf[0]))
		p, ok := procs[rec.Pid]
		if !ok {
			p = len(f.procs)
			procs[rec.Pid] = p
			f.procs = append(f.procs, foundProc{
				owner: portlifeOwner{CgroupId: rec.CgroupId, Pid: rec.Pid, Uid: rec.Uid, Comm: rec.Comm},
				start: rec.Start,
			})
		}
		tcp := event.Proto(rec.Proto) == event.ProtoTCP
		f.socks = append(f.socks, foundSock{
			ino:       rec.Ino,
			proc:      p,
			netns:     rec.Netns,
			fd:        rec.Fd,
			lport:     rec.Lport,
			listening: tcp && rec.State == tcpListen,
			foreign:   rec.Netns != rec.TaskNetns,
			adoptable: tcp && rec.State != tcpClose || !tcp && rec.Lport != 0,
		})
	}
	// Where several processes hold a socket (a server that forked workers),
	// the oldest owns it: the one that made it, as the live hooks would have
	// recorded.
	older := func(a, b *foundSock) int {
		pa, pb := &f.procs[a.proc], &f.procs[b.proc]
		return cmp.Or(cmp.Compare(pa.start, pb.start), cmp.Compare(pa.owner.Pid, pb.owner.Pid))
	}
	slices.SortFunc(f.socks, func(a, b foundSock) int {
		return cmp.Or(cmp.Compare(a.ino, b.ino), older(&a, &b))
	})
	f.socks = slices.CompactFunc(f.socks, func(a, b foundSock) bool { return a.ino == b.ino })
	return f, nil
}

// TCP states (include/net/tcp_states.h), as find_owners reports them.
const (
	tcpClose  = 7 // never connected nor listening: no walk visits it
	tcpListen = 10
)

// batch is the sockets whose inode lies in [lo, hi]: socks, in found's order.
type batch struct {
	lo, hi uint64
	socks  []foundSock
}

// batches splits the sockets into batches of at most n, whose inode ranges
// cover every number: a socket no process holds (inode 0), or one made
// since, is adopted, without an owner, in the batch its number falls in.
func (f *found) batches(n int) []batch {
	var out []batch
	lo := uint64(0)
	for i := 0; i < len(f.socks) || i == 0; i += n {
		end := min(i+n, len(f.socks))
		b := batch{lo: lo, hi: math.MaxUint64, socks: f.socks[i:end]}
		if end < len(f.socks) {
			b.hi = f.socks[end].ino - 1
			lo = f.socks[end].ino
		}
		out = append(out, b)
	}
	return out
}

// adoptBatch puts the batch's owners in the kernel's table and runs each
// protocol's iterator in every namespace, then empties the table.
func (t *Tracer) adoptBatch(f *found, b batch, namespaces []netnsRef, listeners map[uint32]map[uint16]portlifeOwner) error {
	keys := make([]uint64, len(b.socks))
	owners := make([]portlifeOwner, len(b.socks))
	for i, s := range b.socks {
		keys[i], owners[i] = s.ino, f.procs[s.proc].owner
	}
	if len(keys) > 0 {
		if _, err := t.objs.FdOwners.BatchUpdate(keys, owners, nil); err != nil {
			return fmt.Errorf("recording the owners of existing sockets: %w", err)
		}
		defer t.objs.FdOwners.BatchDelete(keys, nil)
	}
	if err := t.objs.AdoptBatch.Set(portlifeBatch{Lo: b.lo, Hi: b.hi}); err != nil {
		return fmt.Errorf("setting the batch: %w", err)
	}
	for _, w := range []struct {
		proto     event.Proto
		prog      *ebpf.Program
		listeners map[uint32]map[uint16]portlifeOwner
	}{{event.ProtoTCP, t.objs.TcpExisting, listeners}, {event.ProtoUDP, t.objs.UdpExisting, nil}} {
		if !t.cfg.Filter.WantsProto(w.proto) {
			continue
		}
		if err := t.walkAll(w.prog, namespaces, w.listeners); err != nil {
			return fmt.Errorf("walking existing %s sockets: %w", w.proto, err)
		}
	}
	return nil
}

// listeners are the listening sockets processes hold, by namespace and
// port, with their owners: the owners of the connections they accepted
// that no process holds yet.
func (f *found) listeners() map[uint32]map[uint16]portlifeOwner {
	out := map[uint32]map[uint16]portlifeOwner{}
	for _, s := range f.socks {
		if !s.listening {
			continue
		}
		if out[s.netns] == nil {
			out[s.netns] = map[uint16]portlifeOwner{}
		}
		if _, ok := out[s.netns][s.lport]; !ok {
			out[s.netns][s.lport] = f.procs[s.proc].owner
		}
	}
	return out
}

// walkAll runs a socket iterator in every network namespace. For each, the
// kernel's table of listening ports starts with the listeners processes
// hold there, and is emptied after.
func (t *Tracer) walkAll(prog *ebpf.Program, namespaces []netnsRef, listeners map[uint32]map[uint16]portlifeOwner) error {
	it, err := link.AttachIter(link.IterOptions{Program: prog})
	if err != nil {
		return fmt.Errorf("attaching the iterator: %w", err)
	}
	defer it.Close()
	for _, ns := range namespaces {
		for port, o := range listeners[ns.ino] {
			key := portlifeListenKey{Netns: ns.ino, Port: port}
			if err := t.objs.ListenPorts.Put(&key, &o); err != nil {
				return fmt.Errorf("recording the listeners of netns %d: %w", ns.ino, err)
			}
		}
		err := walkIn(ns, it)
		clearMap(t.objs.ListenPorts)
		if err != nil {
			return fmt.Errorf("in netns %d: %w", ns.ino, err)
		}
	}
	return nil
}

// walkIn runs the iterator in the network namespace ns. The iterator takes
// its namespace from the thread that opens it.
func walkIn(ns netnsRef, it *link.Iter) error {
	return inNetns(ns, func() error { return readIter(it) })
}

// inNetns runs fn on a thread in the network namespace ns: the thread
// enters ns and comes back. It stays locked if it cannot come back: the
// runtime then retires it, unless it is the main thread, which it parks
// instead, and /proc/self/ns/net, which shows the main thread's namespace,
// would lie.
func inNetns(ns netnsRef, fn func() error) error {
	if ns.own {
		return fn()
	}
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			done <- err
			return
		}
		defer home.Close()
		if err := unix.Setns(int(ns.file.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("entering it: %w", err)
			return
		}
		err = fn()
		if back := unix.Setns(int(home.Fd()), unix.CLONE_NEWNET); back != nil {
			done <- errors.Join(err, fmt.Errorf("coming back from it: %w", back))
			return
		}
		runtime.UnlockOSThread()
		done <- err
	}()
	return <-done
}

// readIter runs an iterator to its end.
func readIter(it *link.Iter) error {
	r, err := it.Open()
	if err != nil {
		return err
	}
	defer r.Close()
	_, err = io.Copy(io.Discard, r)
	return err
}

// clearMap empties a map whose keys may all be held at once.
func clearMap(m *ebpf.Map) {
	var keys [][]byte
	var key, value []byte
	iter := m.Iterate()
	for iter.Next(&key, &value) {
		keys = append(keys, append([]byte(nil), key...))
	}
	for _, k := range keys {
		m.Delete(k)
	}
}

// netnsRef is a way into one network namespace: ours, or an open namespace
// file, so that it can be entered even once whatever showed it is gone.
type netnsRef struct {
	ino  uint32
	own  bool
	file *os.File
}

func (n netnsRef) close() {
	if n.file != nil {
		n.file.Close()
	}
}

// namespaces lists every network namespace that holds a process or a
// socket, once each, with a way into it: a process's /proc/PID/ns/net, a
// bind mount under /run/netns (ip netns), or, for a namespace no process is
// in, a socket in it that a process holds from outside. It also returns the
// namespaces holding sockets that it found no way into.
func (t *Tracer) namespaces(f *found) ([]netnsRef, map[uint32]bool) {
	var out []netnsRef
	seen := map[uint32]bool{}
	if own, ok := netns.Inode("/proc/self/ns/net"); ok {
		out = append(out, netnsRef{ino: own, own: true})
		seen[own] = true
	}
	for _, path := range netns.Paths() {
		ino, ok := netns.Inode(path)
		if !ok || seen[ino] {
			continue
		}
		// Checked: the process may have exited, and its pid been reused
		// by one in another namespace, since the path was looked at.
		file, err := netns.OpenPath(ino, path)
		if err != nil {
			continue // nothing leads there any more
		}
		ns := netnsRef{ino: ino, file: file}
		if err := inNetns(ns, func() error { return nil }); err != nil {
			ns.close() // without CAP_SYS_ADMIN; its sockets are counted below
			continue
		}
		seen[ino] = true
		out = append(out, ns)
	}

	unreachable := map[uint32]bool{}
	for _, s := range f.socks {
		if seen[s.netns] {
			continue
		}
		if !s.foreign {
			unreachable[s.netns] = true // its holder is in it, and /proc did not show it
			continue
		}
		file, err := socketNetns(f.procs[s.proc].owner.Pid, s.fd, s.netns)
		if err == nil {
			ns := netnsRef{ino: s.netns, file: file}
			if err = inNetns(ns, func() error { return nil }); err != nil {
				ns.close()
			}
		}
		if err != nil {
			t.log.Debug("a network namespace no process is in cannot be entered through this socket",
				zap.Uint32("netns", s.netns), zap.Error(err))
			unreachable[s.netns] = true
			continue
		}
		seen[s.netns] = true
		delete(unreachable, s.netns)
		out = append(out, netnsRef{ino: s.netns, file: file})
	}
	return out, unreachable
}

// socketNetns opens the network namespace of descriptor fd of process pid,
// a socket: it duplicates the descriptor (pidfd_getfd) and asks the socket
// for its namespace (SIOCGSKNS), which must be ino: the descriptor may have
// been closed, and its number reused, since it was listed.
func socketNetns(pid, fd, ino uint32) (*os.File, error) {
	pidfd, err := unix.PidfdOpen(int(pid), 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_open(%d): %w", pid, err)
	}
	defer unix.Close(pidfd)
	sock, err := unix.PidfdGetfd(pidfd, int(fd), 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_getfd(%d, %d): %w", pid, fd, err)
	}
	defer unix.Close(sock)
	nsfd, err := unix.IoctlRetInt(sock, unix.SIOCGSKNS)
	if err != nil {
		return nil, fmt.Errorf("SIOCGSKNS on fd %d of %d: %w", fd, pid, err)
	}
	file := os.NewFile(uintptr(nsfd), fmt.Sprintf("netns %d", ino))
	var st unix.Stat_t
	if err := unix.Fstat(nsfd, &st); err != nil || uint32(st.Ino) != ino {
		file.Close()
		return nil, errors.New("the descriptor is no longer that socket")
	}
	return file, nil
}
