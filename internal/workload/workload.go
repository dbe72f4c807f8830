// Package workload names the workload behind a cgroup: the systemd unit or
// the container an event's process runs in. Summaries and dashboards are
// read per service, not per cgroup inode. A cgroup v2 id is the inode of
// the cgroup's directory and, as a kernfs file handle, opens it in one call
// (open_by_handle_at on the cgroup v2 mount); its path names the workload.
package workload

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Names is what a cgroup path says about its workload. Either may be empty.
type Names struct {
	Unit        string // the systemd unit: nginx.service, session-3.scope
	ContainerID string // the container's full id (64 hex digits)
}

// Parse reads a cgroup v2 path ("/system.slice/nginx.service"). The
// container is the innermost path element that holds a container id, in the
// patterns of docker, containerd, CRI-O and podman, with the systemd or the
// cgroupfs driver; the unit is the innermost .service or .scope element
// that is not a container's own scope, and below the container if there is
// one: a unit outside a container (containerd.service, a slice) does not
// name what runs in it.
func Parse(path string) Names {
	var n Names
	for elem := range strings.SplitSeq(path, "/") {
		if id, ok := containerID(elem); ok {
			n = Names{ContainerID: id}
			continue
		}
		if isConmon(elem) {
			// podman's and CRI-O's monitor process, beside the container.
			n.Unit = ""
			continue
		}
		if strings.HasSuffix(elem, ".service") || strings.HasSuffix(elem, ".scope") {
			n.Unit = elem
		}
	}
	return n
}

// The container runtimes' scope prefixes (systemd driver): docker-ID.scope,
// cri-containerd-ID.scope, crio-ID.scope, libpod-ID.scope.
var scopePrefixes = []string{"docker-", "cri-containerd-", "crio-", "libpod-"}

// containerID finds a container id in one path element:
//   - docker-ID.scope, cri-containerd-ID.scope, crio-ID.scope, libpod-ID.scope
//     (systemd driver: docker, containerd, CRI-O, podman);
//   - PARENT.slice:cri-containerd:ID or PARENT.slice:crio:ID
//     (containerd's and CRI-O's systemd cgroup paths before they become scopes);
//   - ID alone (cgroupfs driver: /docker/ID, /kubepods/burstable/podUID/ID,
//     /libpod_parent/libpod-ID).
func containerID(elem string) (string, bool) {
	s := strings.TrimSuffix(elem, ".scope")
	if i := strings.LastIndexByte(s, ':'); i >= 0 {
		s = s[i+1:]
	}
	for _, p := range scopePrefixes {
		if rest, ok := strings.CutPrefix(s, p); ok {
			s = rest
			break
		}
	}
	if len(s) != 64 {
		return "", false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return "", false
		}
	}
	return s, true
}

func isConmon(elem string) bool {
	return strings.HasPrefix(elem, "crio-conmon-") || strings.HasPrefix(elem, "libpod-conmon-")
}

// DefaultCacheSize bounds the cache of a Resolver: cgroups alive at once on
// a busy host are a few thousand.
const DefaultCacheSize = 8192

// Resolver maps cgroup ids to Names, with a bounded cache. Lookup is for one
// goroutine (the tracer's reader); Stats may be read from any.
type Resolver struct {
	mount   string // the cgroup v2 mount point
	mountFD int
	cache   map[uint64]Names
	size    int

	resolved   atomic.Uint64 // cgroups looked up in the kernel
	unresolved atomic.Uint64 // of those, ones that could not be opened
	evicted    atomic.Uint64
}

// kernfs's file handle type (FILEID_KERNFS in the kernel's exportfs.h):
// its 8 bytes are the kernfs node's id, which is the cgroup id.
const fileIDKernfs = 0xfe

// NewResolver resolves ids against the cgroup v2 hierarchy mounted at mount,
// caching up to size of them.
func NewResolver(mount string, size int) (*Resolver, error) {
	fd, err := unix.Open(mount, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening the cgroup v2 mount %s: %w", mount, err)
	}
	return &Resolver{mount: mount, mountFD: fd, cache: make(map[uint64]Names, min(size, 1024)), size: max(size, 1)}, nil
}

// Close releases the mount's descriptor.
func (r *Resolver) Close() error {
	if r.mountFD < 0 {
		return nil
	}
	err := unix.Close(r.mountFD)
	r.mountFD = -1
	return err
}

// Lookup returns the names of cgroup id. A hit costs a map lookup and
// allocates nothing; a miss opens the cgroup by its handle and reads its
// path. A cgroup that cannot be opened (it was removed before its event
// was read) has no names, cached like the rest: ids are never reused.
func (r *Resolver) Lookup(id uint64) Names {
	if n, ok := r.cache[id]; ok {
		return n
	}
	n, err := r.resolve(id)
	r.resolved.Add(1)
	if err != nil {
		r.unresolved.Add(1)
	}
	if len(r.cache) >= r.size {
		// Any entry: a cgroup evicted while still in use costs one more
		// lookup, not a wrong name.
		for k := range r.cache {
			delete(r.cache, k)
			r.evicted.Add(1)
			break
		}
	}
	r.cache[id] = n
	return n
}

func (r *Resolver) resolve(id uint64) (Names, error) {
	if id == 0 {
		return Names{}, errors.New("no cgroup id")
	}
	path, err := r.path(id)
	if err != nil {
		return Names{}, err
	}
	return Parse(path), nil
}

// path is the cgroup's path below the mount, "/" for the root.
func (r *Resolver) path(id uint64) (string, error) {
	var h [8]byte
	binary.NativeEndian.PutUint64(h[:], id)
	fd, err := unix.OpenByHandleAt(r.mountFD, unix.NewFileHandle(fileIDKernfs, h[:]), unix.O_PATH|unix.O_CLOEXEC)
	if err != nil {
		return "", fmt.Errorf("opening cgroup %d by its handle: %w", id, err)
	}
	defer unix.Close(fd)
	p, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return "", fmt.Errorf("reading the path of cgroup %d: %w", id, err)
	}
	rel := strings.TrimPrefix(p, r.mount)
	if rel == "" {
		rel = "/"
	}
	return rel, nil
}

// Stats counts the resolver's work.
type Stats struct {
	Resolved   uint64 // cgroups looked up in the kernel (cache misses)
	Unresolved uint64 // of those, cgroups that could not be opened: their events carry no unit or container
	Evicted    uint64 // cache entries dropped to stay within the bound
}

// Stats may be called from any goroutine.
func (r *Resolver) Stats() Stats {
	return Stats{Resolved: r.resolved.Load(), Unresolved: r.unresolved.Load(), Evicted: r.evicted.Load()}
}
