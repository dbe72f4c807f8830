package timewait

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"

	nspath "github.com/portlife/portlife/internal/netns" // the tests have a type netns
)

// nsHandle is what portlife keeps open in one network namespace: a
// sock_diag socket and that namespace's /proc/net/netstat, both made once
// from inside it. A socket and an open proc file stay bound to the
// namespace they were made in, so every sweep uses them from any thread,
// with no setns: the cost of a sweep does not grow with a thread switch per
// namespace. Both pin the namespace: the tracker closes the handle once the
// namespace holds nothing it tracks.
type nsHandle struct {
	diag    int      // NETLINK_SOCK_DIAG socket
	netstat *os.File // /proc/net/netstat as seen from the namespace
	maxTW   *os.File // its net.ipv4.tcp_max_tw_buckets
	buf     []byte   // for reads of both
}

func (h *nsHandle) Close() error {
	err := errors.Join(unix.Close(h.diag), h.netstat.Close())
	if h.maxTW != nil {
		err = errors.Join(err, h.maxTW.Close())
	}
	return err
}

// openHandle makes the handle inside network namespace ino, entered through
// nsPath (nspath.OpenPath: if nsPath leads elsewhere by now, its task gone
// home or exited and its pid reused, ino is looked for again), on a thread
// locked for the purpose and returned to its namespace after.
func openHandle(ino uint32, nsPath string) (*nsHandle, error) {
	ns, err := nspath.OpenPath(ino, nsPath)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	type result struct {
		h   *nsHandle
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		home, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: err}
			return
		}
		defer home.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("entering %s: %w", nsPath, err)}
			return
		}
		h, err := newHandle()
		if back := unix.Setns(int(home.Fd()), unix.CLONE_NEWNET); back != nil {
			// The thread stays locked, so the runtime retires it rather
			// than run other goroutines in the wrong namespace.
			if h != nil {
				h.Close()
			}
			done <- result{err: errors.Join(err, fmt.Errorf("coming back from %s: %w", nsPath, back))}
			return
		}
		runtime.UnlockOSThread()
		done <- result{h, err}
	}()
	r := <-done
	return r.h, r.err
}

// newHandle opens the handle in the calling thread's namespace.
func newHandle() (*nsHandle, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("opening a sock_diag socket: %w", err)
	}
	f, err := os.Open("/proc/thread-self/net/netstat")
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	// A sysctl file, like a proc file, stays the namespace's it was opened
	// in. Without it (a kernel that keeps it host-wide) overflows are told
	// by the counter alone.
	m, _ := os.Open("/proc/sys/net/ipv4/tcp_max_tw_buckets")
	return &nsHandle{diag: fd, netstat: f, maxTW: m, buf: make([]byte, 8<<10)}, nil
}

// maxBuckets reads the namespace's tcp_max_tw_buckets.
func (h *nsHandle) maxBuckets() (uint64, error) {
	if h.maxTW == nil {
		return 0, errors.New("no per-namespace tcp_max_tw_buckets")
	}
	n, err := h.maxTW.ReadAt(h.buf, 0)
	if n == 0 && err != nil {
		return 0, fmt.Errorf("reading tcp_max_tw_buckets: %w", err)
	}
	return strconv.ParseUint(string(bytes.TrimSpace(h.buf[:n])), 10, 64)
}

// overflows reads TcpExt's TCPTimeWaitOverflow: closes that made no
// TIME_WAIT because tcp_max_tw_buckets was full.
func (h *nsHandle) overflows() (uint64, error) {
	for {
		n, err := h.netstat.ReadAt(h.buf, 0)
		if n == len(h.buf) {
			h.buf = make([]byte, 2*len(h.buf)) // rare: the file grew
			continue
		}
		if n == 0 && err != nil {
			return 0, fmt.Errorf("reading netstat: %w", err)
		}
		return parseOverflows(h.buf[:n])
	}
}

// parseOverflows finds TCPTimeWaitOverflow in netstat's pairs of lines: a
// line of names, then a line of values, each starting with "TcpExt:".
func parseOverflows(b []byte) (uint64, error) {
	prefix := []byte("TcpExt:")
	var names [][]byte
	for len(b) > 0 {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		if !bytes.HasPrefix(line, prefix) {
			continue
		}
		fields := bytes.Fields(line[len(prefix):])
		if names == nil {
			names = fields
			continue
		}
		for i, name := range names {
			if string(name) == "TCPTimeWaitOverflow" && i < len(fields) {
				return strconv.ParseUint(string(fields[i]), 10, 64)
			}
		}
		break
	}
	return 0, errors.New("no TCPTimeWaitOverflow in netstat")
}

// findNetns returns a path that leads to the network namespace with inode
// ino: the owner's thread's or process's if it is still there, else any
// process's, mount's or thread's.
func findNetns(ino uint32, pid, tid uint32) (string, bool) {
	path, err := nspath.Find(ino, tid, pid)
	return path, err == nil
}
