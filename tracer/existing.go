package tracer

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/internal/event"
)

// adoptExisting hands the kernel side the TCP sockets that existed before
// the hooks were attached, with the owners /proc shows for them, so their
// closes and their listeners' children are reported too. The kernel's TCP
// iterator sees one network namespace at a time: it runs in each.
func (t *Tracer) adoptExisting() error {
	scan, err := scanProc("/proc", t.cgroupRoot)
	if err != nil {
		return err
	}
	defer clearMap(t.objs.FdOwners)
	defer clearMap(t.objs.ListenPorts)
	unrecorded := 0
	for ino, p := range scan.owners {
		o := portlifeOwner{CgroupId: p.cgroupID, Pid: p.pid, Uid: p.uid}
		copy(unsafeBytes(o.Comm[:]), p.comm)
		if err := t.objs.FdOwners.Put(ino, &o); err != nil {
			unrecorded++
		}
	}
	if unrecorded > 0 {
		t.log.Warn("too many sockets at start: some existing connections are reported without their process",
			zap.Int("sockets", len(scan.owners)), zap.Int("unrecorded", unrecorded))
	}

	for _, w := range []struct {
		proto event.Proto
		prog  *ebpf.Program
	}{{event.ProtoTCP, t.objs.TcpExisting}, {event.ProtoUDP, t.objs.UdpExisting}} {
		if !t.cfg.Filter.WantsProto(w.proto) {
			continue
		}
		if err := walkAll(w.prog, scan.netns); err != nil {
			return fmt.Errorf("walking existing %s sockets: %w", w.proto, err)
		}
	}
	t.log.Debug("adopted existing sockets", zap.Int("sockets", len(scan.owners)), zap.Int("netns", len(scan.netns)))
	return nil
}

// walkAll runs a socket iterator in every network namespace.
func walkAll(prog *ebpf.Program, netns map[uint32]uint32) error {
	it, err := link.AttachIter(link.IterOptions{Program: prog})
	if err != nil {
		return fmt.Errorf("attaching the iterator: %w", err)
	}
	defer it.Close()
	own, _ := nsInode("/proc/self/ns/net")
	for ns, pid := range netns {
		path := ""
		if ns != own {
			path = fmt.Sprintf("/proc/%d/ns/net", pid)
		}
		err := walkIn(path, it)
		if err != nil && !errors.Is(err, os.ErrNotExist) { // its last process may have exited
			return fmt.Errorf("in netns %d: %w", ns, err)
		}
	}
	return nil
}

// walkIn runs the iterator in the network namespace at netnsPath ("" for
// our own). The iterator takes its namespace from the thread that opens it.
func walkIn(netnsPath string, it *link.Iter) error {
	var (
		r   io.ReadCloser
		err error
	)
	if netnsPath == "" {
		r, err = it.Open()
	} else {
		r, err = openIn(netnsPath, it)
	}
	if err != nil {
		return err
	}
	defer r.Close()
	_, err = io.Copy(io.Discard, r)
	return err
}

// openIn opens the iterator from a thread in the network namespace at
// netnsPath. The thread enters the namespace and comes back before it is
// unlocked. Leaving it locked in the namespace for the runtime to retire is
// not enough: when the goroutine runs on the process's main thread, the
// runtime parks that thread instead, and the whole process (whose
// /proc/self is the main thread) would then seem to live, and dial, in the
// other namespace.
func openIn(netnsPath string, it *link.Iter) (io.ReadCloser, error) {
	type opened struct {
		r   io.ReadCloser
		err error
	}
	ch := make(chan opened, 1)
	go func() {
		runtime.LockOSThread()
		own, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			ch <- opened{err: err}
			return
		}
		defer own.Close()
		r, err := inNetns(netnsPath, it.Open)
		if unix.Setns(int(own.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		} // else the thread stays locked, and the runtime retires it
		ch <- opened{r, err}
	}()
	o := <-ch
	return o.r, o.err
}

// inNetns runs open with the calling thread, which must be locked, in the
// network namespace at path.
func inNetns(path string, open func() (io.ReadCloser, error)) (io.ReadCloser, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		return nil, fmt.Errorf("entering %s: %w", path, err)
	}
	return open()
}

// clearMap empties a start-up table, so it holds no memory while tracing.
func clearMap(m *ebpf.Map) {
	var keys [][]byte
	var key []byte
	iter := m.Iterate()
	var value []byte
	for iter.Next(&key, &value) {
		keys = append(keys, append([]byte(nil), key...))
	}
	for _, k := range keys {
		m.Delete(k)
	}
}

// unsafeBytes views a generated C char array as bytes.
func unsafeBytes(s []int8) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(s))), len(s))
}
