// Package deploy holds no code: its test checks the manifests that run
// portlife as a service (systemd/, kubernetes/, ../Dockerfile) against the
// real schemas, and the portlife command lines in them against portlife's
// own flag parser.
package deploy

import (
	"bytes"
	"debug/elf"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// portlife is built once, as the Dockerfile builds it: static.
var portlife string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "portlife-deploy")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	portlife = filepath.Join(dir, "portlife")
	// deploy is a module of its own (its schemas stay out of portlife's go.mod):
	// portlife is built in its module, the directory above.
	build := exec.Command("go", "build", "-trimpath", "-o", portlife, "./cmd/portlife")
	build.Dir = ".."
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building portlife: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// acceptsFlags runs portlife with args and --version: it parses and checks
// every flag before it prints the version, and loads nothing.
func acceptsFlags(t *testing.T, args []string) {
	t.Helper()
	out, err := exec.Command(portlife, append(args, "--version")...).CombinedOutput()
	if err != nil {
		t.Errorf("portlife %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// The binary in the image has no interpreter and no shared libraries: it
// runs on distroless's static base, or on scratch.
func TestStaticBinary(t *testing.T) {
	f, err := elf.Open(portlife)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("the binary asks for an interpreter: it is not static")
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
		t.Errorf("the binary needs shared libraries %v (%v)", libs, err)
	}
}

// The DaemonSet and its ConfigMap decode strictly into the Kubernetes API
// types (an unknown or misspelt field, a bad quantity or a wrong type is an
// error), and hold together: every $(VAR) in the args is a ConfigMap key,
// every mount has its volume, and portlife accepts the args as they expand.
func TestKubernetesManifests(t *testing.T) {
	raw, err := os.ReadFile("kubernetes/daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var (
		ds   *appsv1.DaemonSet
		cm   *corev1.ConfigMap
		kind = map[string]int{}
	)
	for i, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(raw), -1) {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("document %d: %v", i, err)
		}
		kind[meta.Kind]++
		var obj any
		switch meta.APIVersion + " " + meta.Kind {
		case "v1 Namespace":
			obj = &corev1.Namespace{}
		case "v1 ConfigMap":
			cm = &corev1.ConfigMap{}
			obj = cm
		case "apps/v1 DaemonSet":
			ds = &appsv1.DaemonSet{}
			obj = ds
		default:
			t.Fatalf("document %d: unexpected %s %s", i, meta.APIVersion, meta.Kind)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			t.Errorf("document %d (%s): %v", i, meta.Kind, err)
		}
	}
	if ds == nil || cm == nil {
		t.Fatalf("want a DaemonSet and a ConfigMap, found %v", kind)
	}

	spec := ds.Spec.Template.Spec
	if ds.Spec.Selector == nil || ds.Spec.Template.Labels["app.kubernetes.io/name"] != ds.Spec.Selector.MatchLabels["app.kubernetes.io/name"] {
		t.Errorf("the selector does not select the template's pods")
	}
	if !spec.HostPID {
		t.Errorf("hostPID is off: sockets that existed at start would have no owner")
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(spec.Containers))
	}
	c := spec.Containers[0]
	sc := c.SecurityContext
	if sc == nil || sc.Privileged == nil || *sc.Privileged || sc.Capabilities == nil {
		t.Fatalf("want capabilities instead of privileged: %+v", sc)
	}
	if len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
		t.Errorf("capabilities drop %v, want ALL", sc.Capabilities.Drop)
	}
	added := map[corev1.Capability]bool{}
	for _, c := range sc.Capabilities.Add {
		added[c] = true
	}
	for _, need := range []corev1.Capability{"BPF", "PERFMON", "NET_ADMIN"} {
		if !added[need] {
			t.Errorf("capability %s is not added: portlife cannot start without it", need)
		}
	}
	if c.Resources.Limits.Memory().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Requests.Cpu().IsZero() {
		t.Errorf("resources %+v: want memory requests and limits, and a CPU request", c.Resources)
	}
	metrics := false
	for _, p := range c.Ports {
		metrics = metrics || p.Name == "metrics"
	}
	if !metrics {
		t.Errorf("no port named metrics to scrape")
	}
	volumes := map[string]bool{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = true
	}
	mounted := map[string]bool{}
	for _, m := range c.VolumeMounts {
		if !volumes[m.Name] {
			t.Errorf("mount %s has no volume", m.Name)
		}
		mounted[m.MountPath] = true
	}
	for _, path := range []string{"/sys/fs/cgroup", "/sys/kernel/btf", "/var/lib/portlife"} {
		if !mounted[path] {
			t.Errorf("%s is not mounted", path)
		}
	}
	fromConfigMap := false
	for _, e := range c.EnvFrom {
		fromConfigMap = fromConfigMap || e.ConfigMapRef != nil && e.ConfigMapRef.Name == cm.Name
	}
	if !fromConfigMap || cm.Namespace != ds.Namespace {
		t.Errorf("the container does not take its environment from ConfigMap %s/%s", cm.Namespace, cm.Name)
	}

	// Kubernetes expands $(VAR) in args from the environment.
	used := map[string]bool{}
	args := make([]string, len(c.Args))
	for i, a := range c.Args {
		args[i] = regexp.MustCompile(`\$\(([A-Z_]+)\)`).ReplaceAllStringFunc(a, func(m string) string {
			key := m[2 : len(m)-1]
			used[key] = true
			v, ok := cm.Data[key]
			if !ok {
				t.Errorf("arg %q uses %s, which the ConfigMap does not have", a, key)
			}
			return v
		})
	}
	for key := range cm.Data {
		if !used[key] {
			t.Errorf("ConfigMap key %s is used by no arg", key)
		}
	}
	acceptsFlags(t, args)
}

// The unit passes systemd-analyze verify, where systemd is installed, and
// portlife accepts its command line.
func TestSystemdUnit(t *testing.T) {
	raw, err := os.ReadFile("systemd/portlife.service")
	if err != nil {
		t.Fatal(err)
	}
	var exec_ string
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "ExecStart="); ok {
			exec_ = v
		}
	}
	f := strings.Fields(exec_)
	if len(f) < 2 || f[0] != "/usr/local/bin/portlife" {
		t.Fatalf("ExecStart=%s: want /usr/local/bin/portlife and its flags", exec_)
	}
	acceptsFlags(t, f[1:])
	for _, want := range []string{"ProtectSystem=strict", "StateDirectory=portlife", "NoNewPrivileges=yes", "ProtectHome=yes", "PrivateTmp=yes",
		"CapabilityBoundingSet=", "AmbientCapabilities=", "RestrictAddressFamilies=", "MemoryMax=", "--store /var/lib/portlife/history.db"} {
		if !bytes.Contains(raw, []byte(want)) {
			t.Errorf("the unit lacks %s", want)
		}
	}

	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze is not installed: the unit is not verified") // not a kernel test: no skip
		return
	}
	// verify checks that ExecStart's binary exists: the one just built.
	unit := filepath.Join(t.TempDir(), "portlife.service")
	if err := os.WriteFile(unit, bytes.ReplaceAll(raw, []byte("/usr/local/bin/portlife"), []byte(portlife)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", "--man=no", unit).CombinedOutput()
	// verify exits 0 on unknown keys and bad values, but says so.
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// portlife accepts the image's default command.
func TestDockerfile(t *testing.T) {
	raw, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	var cmd []string
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "CMD "); ok {
			if err := json.Unmarshal([]byte(v), &cmd); err != nil {
				t.Fatalf("CMD %s: %v", v, err)
			}
		}
	}
	if len(cmd) == 0 {
		t.Fatal("no CMD")
	}
	if !bytes.Contains(raw, []byte("CGO_ENABLED=0")) || !regexp.MustCompile(`(?m)^FROM (gcr.io/distroless/static|scratch)`).Match(raw) {
		t.Errorf("want a CGO_ENABLED=0 build on a distroless static or scratch base")
	}
	acceptsFlags(t, cmd)
}
