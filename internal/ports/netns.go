package ports

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/internal/netns"
)

// Sysctls are the settings of one network namespace that decide its
// capacity and how long its ports stay taken. Each namespace has its own: a
// new one starts at 32768-60999, whatever the host's range.
type Sysctls struct {
	Lo, Hi uint16 // ip_local_port_range, both inclusive
	// Reserved is ip_local_reserved_ports, as ranges; ports in it are never
	// handed out as ephemeral ones.
	Reserved []portSpan
	TWReuse  int // tcp_tw_reuse: 0 off, 1 on, 2 loopback only
	// TWReuseDelay is how old a TIME_WAIT must be to be reused
	// (tcp_tw_reuse_delay, Linux 6.14; before it, one second).
	TWReuseDelay time.Duration
	Timestamps   bool // tcp_timestamps: TIME_WAIT reuse needs them
}

type portSpan struct{ lo, hi uint16 }

// DefaultSysctls are a new namespace's, for when a namespace cannot be read.
var DefaultSysctls = Sysctls{Lo: 32768, Hi: 60999, TWReuse: 2, TWReuseDelay: time.Second, Timestamps: true}

// InRange reports whether port p can be handed out as an ephemeral port.
func (s *Sysctls) InRange(p uint16) bool {
	if p < s.Lo || p > s.Hi {
		return false
	}
	for _, r := range s.Reserved {
		if p >= r.lo && p <= r.hi {
			return false
		}
	}
	return true
}

// reservedInRange counts the reserved ports inside the range.
func (s *Sysctls) reservedInRange() int {
	n := 0
	for _, r := range s.Reserved {
		lo, hi := max(r.lo, s.Lo), min(r.hi, s.Hi)
		if lo <= hi {
			n += int(hi-lo) + 1
		}
	}
	return n
}

// size is N, the ports in ip_local_port_range.
func (s *Sysctls) size() int { return int(s.Hi) - int(s.Lo) + 1 }

// connectCapacity is what connect() without a bound port can use before
// bound ports are taken out: it scans the range in steps of two, over a
// count of ports rounded down to even (__inet_hash_connect).
func (s *Sysctls) connectCapacity() int {
	n := s.size()
	if n > 1 {
		n &^= 1
	}
	return n - s.reservedInRange()
}

// poolCapacity is what bind() to port 0 and UDP can use: every port of the
// range that is not reserved.
func (s *Sysctls) poolCapacity() int { return s.size() - s.reservedInRange() }

// parseSysctls reads the files of dir (/proc/sys/net/ipv4 as seen from the
// namespace).
func parseSysctls(dir string) (Sysctls, error) {
	s := DefaultSysctls
	b, err := os.ReadFile(filepath.Join(dir, "ip_local_port_range"))
	if err != nil {
		return s, err
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return s, fmt.Errorf("ip_local_port_range: unexpected %q", b)
	}
	lo, err1 := strconv.ParseUint(f[0], 10, 16)
	hi, err2 := strconv.ParseUint(f[1], 10, 16)
	if err := errors.Join(err1, err2); err != nil || lo > hi {
		return s, fmt.Errorf("ip_local_port_range: unexpected %q", b)
	}
	s.Lo, s.Hi = uint16(lo), uint16(hi)
	if b, err := os.ReadFile(filepath.Join(dir, "ip_local_reserved_ports")); err == nil {
		s.Reserved = parseSpans(strings.TrimSpace(string(b)))
	}
	if n, err := readInt(filepath.Join(dir, "tcp_tw_reuse")); err == nil {
		s.TWReuse = n
	}
	if n, err := readInt(filepath.Join(dir, "tcp_tw_reuse_delay")); err == nil {
		s.TWReuseDelay = time.Duration(n) * time.Millisecond
	}
	if n, err := readInt(filepath.Join(dir, "tcp_timestamps")); err == nil {
		s.Timestamps = n != 0
	}
	return s, nil
}

// parseSpans reads "1000,2000-2005".
func parseSpans(s string) []portSpan {
	var out []portSpan
	for _, item := range strings.Split(s, ",") {
		if item == "" {
			continue
		}
		a, b, isRange := strings.Cut(item, "-")
		lo, err := strconv.ParseUint(a, 10, 16)
		if err != nil {
			continue
		}
		hi := lo
		if isRange {
			if hi, err = strconv.ParseUint(b, 10, 16); err != nil {
				continue
			}
		}
		out = append(out, portSpan{uint16(lo), uint16(hi)})
	}
	return out
}

func readInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// ownNetns is the namespace this process runs in: the calling thread's, for
// every thread no goroutine has locked and moved is in it. /proc/self would
// name the main thread's, which a goroutine may have locked and moved (a
// test's namespace, or a visit to read one).
func ownNetns() uint32 {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return 0
	}
	return uint32(st.Ino)
}

// inNetns runs fn on a thread inside network namespace inode, entered
// through path (netns.OpenPath: if path leads elsewhere by now, inode is
// looked for again), then moves the thread back. A thread that cannot move
// back is never reused: its goroutine ends locked, and the runtime ends the
// thread with it.
func inNetns(inode uint32, path string, fn func() error) error {
	target, err := netns.OpenPath(inode, path)
	if err != nil {
		return err
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- func() error {
			orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("opening this thread's network namespace: %w", err)
			}
			defer unix.Close(orig)
			if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
				return fmt.Errorf("entering %s: %w", path, err)
			}
			fnErr := fn()
			if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
				return errors.Join(fnErr, fmt.Errorf("leaving %s: %w", path, err))
			}
			runtime.UnlockOSThread()
			return fnErr
		}()
	}()
	return <-errc
}

// ReadSysctls reads the settings of network namespace inode, entering it
// through one of tasks (or any process in it) unless it is this process's.
func ReadSysctls(inode uint32, tasks ...uint32) (Sysctls, error) {
	const dir = "/proc/sys/net/ipv4"
	if inode == ownNetns() {
		return parseSysctls(dir)
	}
	path, err := netns.Find(inode, tasks...)
	if err != nil {
		return DefaultSysctls, err
	}
	var s Sysctls
	err = inNetns(inode, path, func() error {
		var err error
		s, err = parseSysctls(dir)
		return err
	})
	if err != nil {
		return DefaultSysctls, fmt.Errorf("reading network namespace %d's sysctls: %w", inode, err)
	}
	return s, nil
}
