package tracer

import (
	"fmt"
	"os"
	"strings"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// tracefsDir is where tracefs belongs, and where portlife mounts it when
// the host has none: the syscall tracepoints are attached by the ids
// tracefs lists (events/syscalls/*/id), and a fresh host may not mount it.
const tracefsDir = "/sys/kernel/tracing"

// findTracefs makes sure tracefs is mounted before the first classic
// tracepoint is attached, mounting it at tracefsDir if the host has none;
// Close unmounts what it mounted. It must run before cilium/ebpf first
// looks for tracefs, which it does once per process.
func (t *Tracer) findTracefs() error {
	if t.tracefs != "" {
		return nil
	}
	dir, err := tracefsMount("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	if dir != "" {
		t.tracefs = dir
		return nil
	}
	if err := unix.Mount("tracefs", tracefsDir, "tracefs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("tracefs is not mounted, and mounting it at %s for the connect() and bind() tracepoints failed: "+
			"mount it, or leave connect_failed and bind_failed out of --events: %w", tracefsDir, err)
	}
	t.log.Info("mounted tracefs for the connect() and bind() tracepoints; it is unmounted at exit", zap.String("path", tracefsDir))
	t.tracefs, t.ownTracefs = tracefsDir, tracefsDir
	return nil
}

// unmountTracefs undoes findTracefs's mount. The tracepoints stay attached
// without it: tracefs only named their ids. A lazy unmount, so that a
// reader of tracefs elsewhere cannot make portlife's exit fail.
func (t *Tracer) unmountTracefs() error {
	dir := t.ownTracefs
	t.ownTracefs, t.tracefs = "", ""
	if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("unmounting tracefs from %s: %w", dir, err)
	}
	t.log.Debug("unmounted tracefs", zap.String("path", dir))
	return nil
}

// tracefsMount finds a tracefs mount in a mountinfo file, as cilium/ebpf
// looks for one; "" if there is none.
func tracefsMount(mountinfo string) (string, error) {
	b, err := os.ReadFile(mountinfo)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", mountinfo, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		fields := strings.Fields(line)
		for i, f := range fields {
			if f == "-" && i+1 < len(fields) && i >= 5 {
				if fields[i+1] == "tracefs" {
					return unescapeMount(fields[4]), nil
				}
				break
			}
		}
	}
	return "", nil
}
