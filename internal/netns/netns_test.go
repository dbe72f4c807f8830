package netns

import (
	"errors"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/internal/kerneltest"
)

func inodeOf(t *testing.T, f *os.File) uint32 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return uint32(st.Ino)
}

// OpenPath opens the namespace asked for, whatever the path found for it
// leads to by now, or says that nothing leads there; never another one.
func TestOpenPath(t *testing.T) {
	kerneltest.RequireRoot(t)
	tests := []struct {
		name  string
		stale bool  // the path is a visitor's, gone home since
		empty bool  // no task is in the namespace any more: a descriptor holds it
		want  error // nil: the namespace is opened
	}{
		{"the path still leads there", false, false, nil},
		{"its task went home: found through another", true, false, nil},
		{"its task went home, and no other is there", true, true, ErrGone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns := kerneltest.NewNetns(t, nil)
			path := ns.NetnsPath()
			if tt.stale {
				var err error
				if path, err = kerneltest.NewThread(t).Visit(path); err != nil {
					t.Fatal(err)
				}
				if ino, _ := Inode(path); ino == ns.Inode {
					t.Fatalf("%s still leads to network namespace %d: the case tests nothing", path, ns.Inode)
				}
			}
			if tt.empty {
				held, err := os.Open(ns.NetnsPath())
				if err != nil {
					t.Fatal(err)
				}
				defer held.Close()
				// This goroutine's thread is in the test process's own
				// namespace: the thread in ns goes there.
				home, err := os.Open("/proc/thread-self/ns/net")
				if err != nil {
					t.Fatal(err)
				}
				defer home.Close()
				if err := ns.Do(func() error { return unix.Setns(int(home.Fd()), unix.CLONE_NEWNET) }); err != nil {
					t.Fatal(err)
				}
			}
			f, err := OpenPath(ns.Inode, path)
			if !errors.Is(err, tt.want) {
				t.Fatalf("OpenPath(%d, %s): %v, want %v", ns.Inode, path, err, tt.want)
			}
			if err != nil {
				return
			}
			defer f.Close()
			if got := inodeOf(t, f); got != ns.Inode {
				t.Errorf("OpenPath(%d, %s) opened network namespace %d", ns.Inode, path, got)
			}
		})
	}
}
