package ports

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/internal/kerneltest"
	"github.com/portlife/portlife/internal/netns"
)

// A thread's /proc path names the namespace the thread is in now: one that
// was in namespace X when the path was found may have moved on (portlife's
// own threads visit namespaces to read their sysctls). Dump must list X's
// sockets, or say it could not, and never another namespace's as X's.
func TestDumpFollowsTheNamespaceNotThePath(t *testing.T) {
	kerneltest.RequireRoot(t)
	owner, visitor := kerneltest.NewNetns(t, nil), kerneltest.NewThread(t)
	inode := owner.Inode
	var nsPort uint16
	if err := owner.Do(func() (err error) {
		_, nsPort, err = kerneltest.ListenLoopback(1)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	// A listener of the host's, on another port, that X must not show.
	hostLn, hostPort, err := kerneltest.ListenLoopback(1)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(hostLn)

	// The visitor enters X, its path is taken, and it goes back home.
	path, err := visitor.Visit(owner.NetnsPath())
	if err != nil {
		t.Fatal(err)
	}
	if ino, _ := netns.Inode(path); ino == inode {
		t.Fatalf("%s still leads to network namespace %d: the test tests nothing", path, inode)
	}

	socks, listed, err := Dump(map[uint32]string{inode: path}, false)
	if err != nil {
		t.Fatalf("Dump: %v", err)
	}
	if !listed[inode] {
		t.Fatalf("Dump listed %v, not network namespace %d", listed, inode)
	}
	var sawNS bool
	for _, x := range socks {
		switch x.Local.Port() {
		case hostPort:
			t.Errorf("the host's listener on port %d is listed as network namespace %d's", hostPort, inode)
		case nsPort:
			sawNS = true
		}
	}
	if !sawNS {
		t.Errorf("network namespace %d's listener on port %d is not listed (%d sockets are)", inode, nsPort, len(socks))
	}
}

// A socket closed first waits in a timewait socket whatever the peer does:
// in its FIN_WAIT2 substate until the peer's FIN comes, in TIME_WAIT after.
// sock_diag reports the substate; either way the port is held until the
// timer, and no socket is left to close, so Dump calls both TIME_WAIT.
func TestDumpTimeWaitSubstates(t *testing.T) {
	kerneltest.RequireRoot(t)
	for _, tc := range []struct {
		name       string
		peerCloses bool
	}{
		{"the peer closed too: TIME_WAIT", true},
		{"the peer is still open: FIN_WAIT2 substate", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			th := kerneltest.NewNetns(t, nil)
			inode := th.Inode
			var client uint16
			if err := th.Do(func() error {
				ln, _, err := kerneltest.ListenLoopback(1)
				if err != nil {
					return err
				}
				sa, err := unix.Getsockname(ln)
				if err != nil {
					return err
				}
				c, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
				if err != nil {
					return err
				}
				if err := unix.Connect(c, sa); err != nil {
					return err
				}
				s, _, err := unix.Accept4(ln, unix.SOCK_CLOEXEC)
				if err != nil {
					return err
				}
				local, err := unix.Getsockname(c)
				if err != nil {
					return err
				}
				client = uint16(local.(*unix.SockaddrInet4).Port)
				unix.Close(c) // our FIN first
				if tc.peerCloses {
					unix.Close(s)
				} // else s stays open, until the thread and the namespace go
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			// The kernel gets there in its own time (softirq, late under
			// load): wait for the client to leave FIN_WAIT1 and CLOSING,
			// where it is still a full socket, closed (no inode).
			const finWait1, closing = 4, 11
			var got *Existing
			for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
				socks, _, err := Dump(map[uint32]string{inode: th.NetnsPath()}, false)
				if err != nil {
					t.Fatal(err)
				}
				got = nil
				for i := range socks {
					if socks[i].Local.Port() == client {
						got = &socks[i]
					}
				}
				if got != nil && got.Inode == 0 && got.State != finWait1 && got.State != closing || time.Now().After(deadline) {
					break
				}
			}
			if got == nil || got.Inode != 0 || got.State == finWait1 || got.State == closing {
				t.Fatalf("the client socket never became a timewait socket: %+v", got)
			}
			if got.State != tcpTimeWait || got.Expires <= 0 || got.Expires > timeWaitLen {
				t.Errorf("Dump: state %d, expires in %v; want TIME_WAIT (%d), within %v", got.State, got.Expires, tcpTimeWait, timeWaitLen)
			}
		})
	}
}
