package tracer

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/internal/event"
)

// procOwner is a process as /proc shows it, for sockets that existed
// before tracing started.
type procOwner struct {
	pid       uint32
	uid       uint32
	comm      string
	cgroupID  uint64
	startTime uint64 // clock ticks since boot
}

// procScan is what one walk of /proc found.
type procScan struct {
	// owners maps a socket inode to the process holding it. Where several
	// hold it (a server that forked workers), the oldest: the one that
	// created it, as the live hooks would have recorded.
	owners map[uint64]*procOwner
	// netns maps each network namespace (its inode) to a process in it.
	netns map[uint32]uint32
}

// scanProc walks /proc once. Processes that exit meanwhile are skipped.
func scanProc(procRoot, cgroupRoot string) (procScan, error) {
	scan := procScan{owners: map[uint64]*procOwner{}, netns: map[uint32]uint32{}}
	dirs, err := os.ReadDir(procRoot)
	if err != nil {
		return scan, fmt.Errorf("reading %s: %w", procRoot, err)
	}
	for _, d := range dirs {
		pid, err := strconv.ParseUint(d.Name(), 10, 32)
		if err != nil {
			continue
		}
		dir := filepath.Join(procRoot, d.Name())
		if ns, ok := nsInode(filepath.Join(dir, "ns/net")); ok {
			if _, seen := scan.netns[ns]; !seen {
				scan.netns[ns] = uint32(pid)
			}
		}
		inodes := socketInodes(filepath.Join(dir, "fd"))
		if len(inodes) == 0 {
			continue
		}
		p, err := readOwner(dir, uint32(pid), cgroupRoot)
		if err != nil {
			continue
		}
		for _, ino := range inodes {
			if old, ok := scan.owners[ino]; !ok || p.startTime < old.startTime ||
				p.startTime == old.startTime && p.pid < old.pid {
				scan.owners[ino] = p
			}
		}
	}
	return scan, nil
}

// socketInodes lists the sockets a process holds: fd links "socket:[N]".
func socketInodes(fdDir string) []uint64 {
	fds, err := os.ReadDir(fdDir)
	if err != nil {
		return nil
	}
	var out []uint64
	for _, fd := range fds {
		link, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
		if err != nil {
			continue
		}
		if n, ok := strings.CutPrefix(link, "socket:["); ok {
			if ino, err := strconv.ParseUint(strings.TrimSuffix(n, "]"), 10, 64); err == nil {
				out = append(out, ino)
			}
		}
	}
	return out
}

func nsInode(path string) (uint32, bool) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, false
	}
	return uint32(st.Ino), true
}

func readOwner(dir string, pid uint32, cgroupRoot string) (*procOwner, error) {
	p := &procOwner{pid: pid}
	stat, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return nil, err
	}
	// comm is in parentheses and may hold spaces and parentheses itself.
	open, closing := bytes.IndexByte(stat, '('), bytes.LastIndexByte(stat, ')')
	if open < 0 || closing < open {
		return nil, fmt.Errorf("%s/stat: no comm", dir)
	}
	p.comm = string(stat[open+1 : closing])
	fields := strings.Fields(string(stat[closing+1:]))
	if len(fields) > 19 { // starttime is field 22; fields[0] is field 3
		p.startTime, _ = strconv.ParseUint(fields[19], 10, 64)
	}
	status, err := os.ReadFile(filepath.Join(dir, "status"))
	if err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		if uids, ok := strings.CutPrefix(sc.Text(), "Uid:"); ok {
			if f := strings.Fields(uids); len(f) > 0 {
				uid, _ := strconv.ParseUint(f[0], 10, 32)
				p.uid = uint32(uid)
			}
			break
		}
	}
	p.cgroupID = cgroupID(dir, cgroupRoot)
	return p, nil
}

// cgroupID is the inode of the process's cgroup v2 directory, which is the
// id bpf_get_current_cgroup_id() returns. 0 if unknown.
func cgroupID(dir, cgroupRoot string) uint64 {
	if cgroupRoot == "" {
		return 0
	}
	b, err := os.ReadFile(filepath.Join(dir, "cgroup"))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if path, ok := strings.CutPrefix(line, "0::"); ok {
			var st unix.Stat_t
			if unix.Stat(filepath.Join(cgroupRoot, path), &st) == nil {
				return st.Ino
			}
		}
	}
	return 0
}

// cgroup2Mount finds where the cgroup v2 hierarchy is mounted, from a
// /proc/mounts file: /sys/fs/cgroup on unified hosts, /sys/fs/cgroup/unified
// on hybrid ones. "" if none is.
func cgroup2Mount(mounts string) (string, error) {
	b, err := os.ReadFile(mounts)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", mounts, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[2] == "cgroup2" {
			return unescapeMount(f[1]), nil
		}
	}
	return "", nil
}

// unescapeMount undoes /proc/mounts' octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// findCgroupRoot finds the cgroup v2 root for the UDP hooks, mounting one
// under /run/portlife if the host has none.
func (t *Tracer) findCgroupRoot() error {
	root, err := cgroup2Mount("/proc/mounts")
	if err != nil || root != "" || !t.cfg.Filter.WantsProto(event.ProtoUDP) {
		t.cgroupRoot = root
		return err
	}
	dir := "/run/portlife/cgroup2"
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("no cgroup v2 mount, and making %s for one: %w", dir, err)
	}
	if err := unix.Mount("cgroup2", dir, "cgroup2", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("no cgroup v2 mount, and mounting one at %s: %w", dir, err)
	}
	t.log.Info("mounted cgroup v2 for the UDP hooks", zap.String("path", dir))
	t.cgroupRoot, t.ownMount = dir, dir
	return nil
}

func unmountCgroup(dir string) error {
	if err := unix.Unmount(dir, 0); err != nil {
		return fmt.Errorf("unmounting %s: %w", dir, err)
	}
	return nil
}
