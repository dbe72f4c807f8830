package tracer

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/internal/event"
)

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

// findCgroupRoot finds the cgroup v2 root for the cgroup hooks (UDP's, and
// before Linux 5.12 TCP's cookies), mounting one under /run/portlife if the
// host has none.
func (t *Tracer) findCgroupRoot() error {
	root, err := cgroup2Mount("/proc/mounts")
	f := &t.cfg.Filter
	hooks := f.WantsProto(event.ProtoUDP) || f.WantsProto(event.ProtoTCP) && !t.KernelCookies()
	if err != nil || root != "" || !hooks {
		t.cgroupRoot = root
		return err
	}
	dir := "/run/portlife/cgroup2"
	// The directories that do not exist yet are portlife's, to remove at
	// Close: the deepest last.
	for d := dir; d != "/run"; d = filepath.Dir(d) {
		if _, err := os.Lstat(d); errors.Is(err, fs.ErrNotExist) {
			t.madeDirs = append([]string{d}, t.madeDirs...)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("no cgroup v2 mount, and making %s for one: %w", dir, err)
	}
	if err := unix.Mount("cgroup2", dir, "cgroup2", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("no cgroup v2 mount, and mounting one at %s: %w", dir, err)
	}
	t.log.Info("mounted cgroup v2 for the cgroup hooks", zap.String("path", dir))
	t.cgroupRoot, t.ownMount = dir, dir
	return nil
}

// removeOwnMount undoes findCgroupRoot: it unmounts the cgroup v2 mount
// portlife made, then removes the directories it made for it.
func (t *Tracer) removeOwnMount() error {
	if t.ownMount != "" {
		if err := unix.Unmount(t.ownMount, 0); err != nil {
			return fmt.Errorf("unmounting %s: %w", t.ownMount, err)
		}
		t.ownMount = ""
	}
	var errs []error
	for i := len(t.madeDirs) - 1; i >= 0; i-- {
		// Another program may have put something in one since.
		if err := os.Remove(t.madeDirs[i]); err != nil && !errors.Is(err, unix.ENOTEMPTY) {
			errs = append(errs, err)
		}
	}
	t.madeDirs = nil
	return errors.Join(errs...)
}
