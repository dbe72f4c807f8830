package workload

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/internal/kerneltest"
)

const id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name, path string
		want       Names
	}{
		{"root", "/", Names{}},
		{"slice only", "/system.slice", Names{}},
		{"systemd service", "/system.slice/nginx.service", Names{Unit: "nginx.service"}},
		{"user session", "/user.slice/user-1000.slice/session-3.scope", Names{Unit: "session-3.scope"}},
		{"user service", "/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service", Names{Unit: "foo.service"}},
		{"service subgroup", "/system.slice/postgresql.service/main", Names{Unit: "postgresql.service"}},
		{"docker systemd", "/system.slice/docker-" + id + ".scope", Names{ContainerID: id}},
		{"docker cgroupfs", "/docker/" + id, Names{ContainerID: id}},
		{"containerd k8s systemd", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-" + id + ".scope", Names{ContainerID: id}},
		{"containerd systemd colon", "/system.slice/containerd.service/kubepods-besteffort-pod1234.slice:cri-containerd:" + id, Names{ContainerID: id}},
		{"kubepods cgroupfs", "/kubepods/burstable/pod0a1b2c3d-0000-1111-2222-333344445555/" + id, Names{ContainerID: id}},
		{"crio", "/kubepods.slice/kubepods-pod1.slice/crio-" + id + ".scope", Names{ContainerID: id}},
		{"crio conmon", "/kubepods.slice/kubepods-pod1.slice/crio-conmon-" + id + ".scope", Names{}},
		{"podman", "/machine.slice/libpod-" + id + ".scope/container", Names{ContainerID: id}},
		{"podman rootless", "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-" + id + ".scope", Names{ContainerID: id}},
		{"podman conmon", "/machine.slice/libpod-conmon-" + id + ".scope", Names{}},
		{"systemd inside a container", "/system.slice/docker-" + id + ".scope/system.slice/nginx.service", Names{Unit: "nginx.service", ContainerID: id}},
		{"not hex", "/docker/" + strings.Repeat("g", 64), Names{}},
		{"short id", "/docker/0123456789ab", Names{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Parse(tc.path); got != tc.want {
				t.Errorf("Parse(%q) = %+v, want %+v", tc.path, got, tc.want)
			}
		})
	}
}

// cgroup2 finds the cgroup v2 mount.
func cgroup2(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile("/proc/mounts")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[2] == "cgroup2" {
			return f[1]
		}
	}
	t.Fatal("no cgroup v2 mount")
	return ""
}

// TestResolver makes real cgroups and resolves their ids as the kernel
// reports them (the inode of the directory), then a removed one.
func TestResolver(t *testing.T) {
	kerneltest.RequireRoot(t)
	mount := cgroup2(t)
	base, err := os.MkdirTemp(mount, "portlife-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(base) })
	rel := strings.TrimPrefix(base, mount)

	r, err := NewResolver(mount, 2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })

	for _, tc := range []struct {
		dir  string
		want Names
	}{
		{"web.service", Names{Unit: "web.service"}},
		{"docker-" + id + ".scope", Names{ContainerID: id}},
		{"plain", Names{}},
	} {
		t.Run(tc.dir, func(t *testing.T) {
			dir := filepath.Join(base, tc.dir)
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.Remove(dir) })
			var st unix.Stat_t
			if err := unix.Stat(dir, &st); err != nil {
				t.Fatal(err)
			}
			path, err := r.path(st.Ino)
			if err != nil {
				t.Fatal(err)
			}
			if want := rel + "/" + tc.dir; path != want {
				t.Errorf("path = %q, want %q", path, want)
			}
			for range 2 { // a miss, then a hit
				if got := r.Lookup(st.Ino); got != tc.want {
					t.Errorf("Lookup = %+v, want %+v", got, tc.want)
				}
			}
			if allocs := testing.AllocsPerRun(100, func() { r.Lookup(st.Ino) }); allocs != 0 {
				t.Errorf("a cache hit allocates %v times", allocs)
			}
		})
	}
	if len(r.cache) > 2 {
		t.Errorf("the cache holds %d entries, above its bound of 2", len(r.cache))
	}
	// A removed cgroup cannot be opened: no names, counted.
	dir := filepath.Join(base, "gone.service")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	unix.Stat(dir, &st)
	os.Remove(dir)
	before := r.Stats().Unresolved
	if got := r.Lookup(st.Ino); got != (Names{}) {
		t.Errorf("a removed cgroup resolved to %+v", got)
	}
	if got := r.Stats().Unresolved; got != before+1 {
		t.Errorf("unresolved = %d, want %d", got, before+1)
	}
}
