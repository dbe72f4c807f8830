// Package netns finds a way into a network namespace named by its inode,
// as events and sock_diag name it: a /proc/PID/ns/net (or a thread's), or a
// bind mount under /run/netns. A /proc path names the namespace its task
// is in when the path is opened, not when it was found: between the two the
// task may move (a thread visiting a namespace goes home) or exit and its
// pid be reused. So a namespace is always opened through Open or OpenPath,
// which check the inode of the file they opened: that descriptor keeps
// naming the namespace it opened, wherever the task goes.
package netns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// ErrGone: no process or thread is in the namespace any more, and no mount
// under /run/netns leads to it.
var ErrGone = errors.New("no process is in it, and no mount leads to it")

// Inode is the network namespace path leads to now.
func Inode(path string) (uint32, bool) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, false
	}
	return uint32(st.Ino), true
}

// Paths lists /proc/PID/ns/net for every process, then every namespace
// bind-mounted under /run/netns.
func Paths() []string {
	var paths []string
	eachPath(func(p string) bool { paths = append(paths, p); return true }, false)
	return paths
}

// Walk calls fn with every path that may lead to a network namespace: every
// process's, every mount's under /run/netns, then every thread's, until fn
// returns false.
func Walk(fn func(path string) bool) { eachPath(fn, true) }

// eachPath calls fn with every process's /proc/PID/ns/net, then every
// mount under /run/netns, then, with threads, every thread's
// /proc/PID/task/TID/ns/net (a thread may be in a namespace of its own: a
// test's, a container runtime's), until fn returns false.
func eachPath(fn func(string) bool, threads bool) {
	dirs, _ := os.ReadDir("/proc")
	var pids []string
	for _, d := range dirs {
		if _, err := strconv.ParseUint(d.Name(), 10, 32); err == nil {
			pids = append(pids, d.Name())
		}
	}
	for _, pid := range pids {
		if !fn(filepath.Join("/proc", pid, "ns/net")) {
			return
		}
	}
	mounts, _ := os.ReadDir("/run/netns")
	for _, m := range mounts {
		if !fn(filepath.Join("/run/netns", m.Name())) {
			return
		}
	}
	if !threads {
		return
	}
	for _, pid := range pids {
		tasks, _ := os.ReadDir(filepath.Join("/proc", pid, "task"))
		for _, task := range tasks {
			if !fn(filepath.Join("/proc", pid, "task", task.Name(), "ns/net")) {
				return
			}
		}
	}
}

// search calls fn with every path that leads to namespace ino now: those of
// the tasks given first (a thread first: it may have a namespace of its
// own), then every process's, every mount's and every thread's, until fn
// returns false.
func search(ino uint32, tasks []uint32, fn func(string) bool) {
	try := func(p string) bool {
		if got, ok := Inode(p); ok && got == ino {
			return fn(p)
		}
		return true
	}
	for _, t := range tasks {
		if t != 0 && !try(fmt.Sprintf("/proc/%d/ns/net", t)) {
			return
		}
	}
	eachPath(try, true)
}

// Find returns a path that leads to network namespace ino now: one of the
// tasks' given, or any task's or mount's. Open it with OpenPath.
func Find(ino uint32, tasks ...uint32) (string, error) {
	var found string
	search(ino, tasks, func(p string) bool { found = p; return false })
	if found == "" {
		return "", fmt.Errorf("network namespace %d: %w", ino, ErrGone)
	}
	return found, nil
}

// Open opens network namespace ino through the first path that still leads
// there when it is opened, looking first at the tasks given.
func Open(ino uint32, tasks ...uint32) (*os.File, error) {
	var f *os.File
	search(ino, tasks, func(p string) bool {
		var err error
		f, err = open(ino, p)
		return err != nil
	})
	if f == nil {
		return nil, fmt.Errorf("network namespace %d: %w", ino, ErrGone)
	}
	return f, nil
}

// OpenPath opens network namespace ino through path, found for it earlier,
// or, if path leads elsewhere by now, through another path that still
// leads there.
func OpenPath(ino uint32, path string) (*os.File, error) {
	if f, err := open(ino, path); err == nil {
		return f, nil
	}
	return Open(ino)
}

var errMoved = errors.New("leads to another network namespace")

// open opens path if it still leads to network namespace ino: the inode
// checked is the open file's, which stays the namespace it opened.
func open(ino uint32, path string) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, err
	}
	if uint32(st.Ino) != ino {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, errMoved)
	}
	return f, nil
}
