package kerneltest

import (
	"fmt"
	"os"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// Thread is an OS thread of the test process, locked to a goroutine that
// runs functions on request: setns and unshare move one thread, so what a
// test does in a namespace must stay on it. When the test ends the
// goroutine returns still locked, so the runtime ends the thread rather
// than run other goroutines in whatever namespace it was left in; with the
// last thread in it, the namespace goes too.
type Thread struct {
	fns chan func()
	TID int
}

// NewThread starts a thread, in the test process's network namespace.
func NewThread(t testing.TB) *Thread {
	t.Helper()
	th := &Thread{fns: make(chan func())}
	ready := make(chan struct{})
	go func() {
		runtime.LockOSThread() // never unlocked: see Thread
		th.TID = unix.Gettid()
		close(ready)
		for fn := range th.fns {
			fn()
		}
	}()
	<-ready
	t.Cleanup(func() { close(th.fns) })
	return th
}

// Do runs fn on the thread and returns its error.
func (th *Thread) Do(fn func() error) error {
	errc := make(chan error, 1)
	th.fns <- func() { errc <- fn() }
	return <-errc
}

// NetnsPath is the thread's /proc path to its network namespace: the one it
// is in when the path is opened, not when it was taken.
func (th *Thread) NetnsPath() string {
	return fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), th.TID)
}

// Netns is a Thread in a network namespace of its own, made by the test:
// the sockets its functions make are that namespace's, and the events of
// them name the test's own pid.
type Netns struct {
	*Thread
	Inode uint32 // the namespace's, as events and sock_diag name it
}

// NewNetns starts a thread in a new network namespace, with loopback up and
// the sysctls given set (names under /proc/sys/net/ipv4, which each
// namespace has its own of). It fails the test if it cannot.
func NewNetns(t testing.TB, sysctls map[string]string) *Netns {
	t.Helper()
	ns := &Netns{Thread: NewThread(t)}
	err := ns.Do(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unshare: %w", err)
		}
		var st unix.Stat_t
		if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
			return err
		}
		ns.Inode = uint32(st.Ino)
		if err := LinkUp("lo"); err != nil {
			return err
		}
		for k, v := range sysctls {
			if err := os.WriteFile("/proc/sys/net/ipv4/"+k, []byte(v), 0); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("making a network namespace: %v", err)
	}
	return ns
}

// LinkUp brings the interface up in the calling thread's network namespace:
// a new namespace's loopback starts down.
func LinkUp(name string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("reading %s flags: %w", name, err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bringing %s up: %w", name, err)
	}
	return nil
}

// Visit moves the thread into the network namespace at path and back home,
// and returns the thread's own path as it was taken in there: a path that
// led to that namespace when it was found, and leads to the thread's home
// now. Whoever holds the path of a task that moved on, or exited and had its
// pid reused, holds such a path.
func (th *Thread) Visit(path string) (string, error) {
	var stale string
	err := th.Do(func() error {
		home, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			return err
		}
		defer home.Close()
		ns, err := os.Open(path)
		if err != nil {
			return err
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("entering %s: %w", path, err)
		}
		stale = th.NetnsPath()
		if err := unix.Setns(int(home.Fd()), unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("going home from %s: %w", path, err)
		}
		return nil
	})
	return stale, err
}
