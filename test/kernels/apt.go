package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// debian is a private apt configuration for one architecture: Debian's
// suites that carry the kernels of the matrix, with their package lists
// kept under the cache. The host's own apt setup is left as it is.
type debian struct {
	arch     string
	dir      string // the apt state, lists and cache
	mirror   string // Debian's archive
	security string // Debian's security archive
}

// The suites whose kernels the matrix boots: 5.10 (bullseye), 6.1
// (bookworm), 6.12 (trixie), the backports of newer ones (trixie-backports)
// and unstable; the security suites carry their newest point releases.
var (
	archiveSuites  = []string{"bullseye", "bookworm", "trixie", "trixie-backports", "unstable"}
	securitySuites = []string{"bullseye-security", "bookworm-security", "trixie-security"}
)

// listsMaxAge is how old the package lists may be before a run refreshes
// them: kernels get point releases every week or two.
const listsMaxAge = 24 * time.Hour

func newDebian(cache, arch, mirror, security string) *debian {
	return &debian{arch: arch, dir: filepath.Join(cache, "apt-"+arch), mirror: mirror, security: security}
}

// options are apt's settings for this configuration: its own sources,
// state and cache, one architecture, and only the Packages indexes (the
// host may ask for translations and AppStream metadata too).
func (d *debian) options() []string {
	return []string{
		"-o", "Dir::Etc::SourceList=" + filepath.Join(d.dir, "sources.list"),
		"-o", "Dir::Etc::SourceParts=" + filepath.Join(d.dir, "sources.list.d"),
		"-o", "Dir::Etc::PreferencesParts=" + filepath.Join(d.dir, "preferences.d"),
		"-o", "Dir::State=" + filepath.Join(d.dir, "state"),
		"-o", "Dir::Cache=" + filepath.Join(d.dir, "cache"),
		"-o", "APT::Architecture=" + d.arch,
		"-o", "APT::Architectures=" + d.arch,
		"-o", "Acquire::Languages=none",
	}
}

func (d *debian) sources() string {
	var b strings.Builder
	line := func(uri, suite string) {
		fmt.Fprintf(&b, "deb [arch=%s target=Packages signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s %s main\n", d.arch, uri, suite)
	}
	for _, s := range archiveSuites {
		line(d.mirror, s)
	}
	for _, s := range securitySuites {
		line(d.security, s)
	}
	return b.String()
}

// refresh writes the configuration and updates the package lists when
// they are missing or older than listsMaxAge. If the update fails but
// older lists exist, it carries on with those: the kernels in the cache
// stay bootable offline.
func (d *debian) refresh(ctx context.Context, log func(string, ...any)) error {
	for _, sub := range []string{"sources.list.d", "preferences.d", "state/lists/partial", "cache/archives/partial"} {
		if err := os.MkdirAll(filepath.Join(d.dir, sub), 0o755); err != nil {
			return err
		}
	}
	src := filepath.Join(d.dir, "sources.list")
	old, _ := os.ReadFile(src)
	changed := string(old) != d.sources()
	if changed {
		if err := os.WriteFile(src, []byte(d.sources()), 0o644); err != nil {
			return err
		}
	}
	age, have := d.listsAge()
	if !changed && have && age < listsMaxAge {
		return nil
	}
	log("updating Debian's package lists for %s (in %s)", d.arch, d.dir)
	if _, err := d.aptGet(ctx, "", "update", "-qq"); err != nil {
		if have && !changed {
			log("warning: %v; using the lists from %s ago", err, age.Round(time.Hour))
			return nil
		}
		return err
	}
	return nil
}

// listsAge is the age of the oldest release file, if there are any.
func (d *debian) listsAge() (time.Duration, bool) {
	files, _ := filepath.Glob(filepath.Join(d.dir, "state", "lists", "*Release"))
	if len(files) == 0 {
		return 0, false
	}
	var oldest time.Time
	for _, f := range files {
		if st, err := os.Stat(f); err == nil && (oldest.IsZero() || st.ModTime().Before(oldest)) {
			oldest = st.ModTime()
		}
	}
	return time.Since(oldest), true
}

func (d *debian) aptGet(ctx context.Context, dir string, args ...string) ([]byte, error) {
	opts := d.options()
	if os.Geteuid() == 0 {
		// apt drops to the _apt user to download, who may not write to the
		// cache or a temporary directory of root's.
		opts = append(opts, "-o", "APT::Sandbox::User=root")
	}
	return command(ctx, dir, "apt-get", append(opts, args...)...)
}

func (d *debian) aptCache(ctx context.Context, args ...string) ([]byte, error) {
	return command(ctx, "", "apt-cache", append(d.options(), args...)...)
}

// command runs name and returns its standard output; a failure carries
// what it wrote to standard error.
func command(ctx context.Context, dir, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s: %w: %s", brief(name, args), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// brief is a command line for a message, without apt's "-o name=value"
// settings, which are the same for every command.
func brief(name string, args []string) string {
	s := []string{name}
	for i := 0; i < len(args); i++ {
		if args[i] == "-o" {
			i++
			continue
		}
		s = append(s, args[i])
	}
	return strings.Join(s, " ")
}

// A debPackage is one package of the configured archive.
type debPackage struct {
	name, version, depends string
}

// upstream is the kernel version a package carries: 6.18.15 of
// 6.18.15-1~bpo13+1.
func (p debPackage) upstream() []int {
	v, _, _ := strings.Cut(p.version, "-")
	v, _, _ = strings.Cut(v, "+")
	v, _, _ = strings.Cut(v, "~")
	return parseVersion(v)
}

// parseVersion reads dotted numbers, stopping at the first that is not one.
func parseVersion(s string) []int {
	var out []int
	for _, f := range strings.Split(s, ".") {
		n, err := strconv.Atoi(f)
		if err != nil {
			break
		}
		out = append(out, n)
	}
	return out
}

func versionString(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ".")
}

// kernelPackages lists the generic flavour's kernel packages: images, and
// from 6.19 on the binary, modules and base packages they are split into. Cloud,
// realtime and 16k-page flavours are left out (the cloud flavour has no 9p).
func (d *debian) kernelPackages(ctx context.Context) (map[string]debPackage, error) {
	out, err := d.aptCache(ctx, "search", "--names-only", fmt.Sprintf(`^linux-(image|binary|modules|base)-[0-9].*[0-9]-%s(-unsigned)?$`, d.arch))
	if err != nil {
		return nil, err
	}
	var names []string
	for _, l := range strings.Split(string(out), "\n") {
		if name, _, ok := strings.Cut(l, " "); ok {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("the package lists in %s have no kernel for %s", d.dir, d.arch)
	}
	out, err = d.aptCache(ctx, append([]string{"show", "--no-all-versions"}, names...)...)
	if err != nil {
		return nil, err
	}
	pkgs := map[string]debPackage{}
	for _, s := range parseStanzas(string(out)) {
		pkgs[s["Package"]] = debPackage{name: s["Package"], version: s["Version"], depends: s["Depends"]}
	}
	return pkgs, nil
}

// parseStanzas reads apt-cache show's output: stanzas of "Field: value"
// lines, separated by blank lines. Continuation lines are skipped.
func parseStanzas(text string) []map[string]string {
	var out []map[string]string
	cur := map[string]string{}
	for _, l := range strings.Split(text, "\n") {
		if strings.TrimSpace(l) == "" {
			if len(cur) > 0 {
				out = append(out, cur)
				cur = map[string]string{}
			}
			continue
		}
		if l[0] == ' ' || l[0] == '\t' {
			continue
		}
		if k, v, ok := strings.Cut(l, ":"); ok {
			cur[k] = strings.TrimSpace(v)
		}
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

// A kernelChoice is the package of the newest kernel that matches a spec
// of the matrix, and the packages to download for it.
type kernelChoice struct {
	spec     string
	image    debPackage
	debs     []debPackage // the image itself, or its binary, modules and base packages
	upstream string       // 6.18.15
	// noModules is set for a split kernel whose modules package the
	// archive does not carry (backports keeps only the newest).
	noModules bool
}

// chooseKernel picks the newest image whose version starts with spec
// ("6.18" takes the newest 6.18.x, "7" the newest 7.x). newer orders two
// Debian versions of the same upstream release.
func chooseKernel(spec, arch string, pkgs map[string]debPackage, newer func(a, b string) bool) (kernelChoice, error) {
	want := parseVersion(spec)
	if len(want) == 0 || versionString(want) != spec {
		return kernelChoice{}, fmt.Errorf("kernel %q: want a version such as 6.18, 6.18.5 or 7", spec)
	}
	var best *debPackage
	series := map[string]bool{}
	for _, p := range pkgs {
		if !strings.HasPrefix(p.name, "linux-image-") {
			continue
		}
		up := p.upstream()
		if len(up) >= 2 {
			series[versionString(up[:2])] = true
		}
		if len(up) < len(want) || !slices.Equal(up[:len(want)], want) {
			continue
		}
		if best == nil || better(p, *best, newer) {
			p := p
			best = &p
		}
	}
	if best == nil {
		avail := slices.Collect(maps.Keys(series))
		slices.SortFunc(avail, func(a, b string) int { return slices.Compare(parseVersion(a), parseVersion(b)) })
		return kernelChoice{}, fmt.Errorf("no Debian kernel %s for %s; there are %s", spec, arch, strings.Join(avail, ", "))
	}
	c := kernelChoice{spec: spec, image: *best, upstream: versionString(best.upstream())}
	release := strings.TrimSuffix(strings.TrimPrefix(best.name, "linux-image-"), "-unsigned")
	binary, split := pkgs["linux-binary-"+release]
	if !split || !strings.Contains(best.depends, binary.name) {
		c.debs = []debPackage{*best}
		return c, nil
	}
	// The base package has modules.builtin, which says that virtio_pci
	// needs no module.
	c.debs = []debPackage{binary}
	if m, ok := pkgs["linux-modules-"+release]; ok && m.version == best.version {
		c.debs = append(c.debs, m)
	} else {
		c.noModules = true
	}
	if b, ok := pkgs["linux-base-"+release]; ok && b.version == best.version {
		c.debs = append(c.debs, b)
	}
	return c, nil
}

// better says whether a is a better choice than b: a newer kernel, then a
// newer Debian version of it, then the signed image over the unsigned one
// (the same kernel; the signed one exists for every release).
func better(a, b debPackage, newer func(a, b string) bool) bool {
	if c := slices.Compare(a.upstream(), b.upstream()); c != 0 {
		return c > 0
	}
	if a.version != b.version {
		return newer(a.version, b.version)
	}
	au, bu := strings.HasSuffix(a.name, "-unsigned"), strings.HasSuffix(b.name, "-unsigned")
	if au != bu {
		return bu
	}
	return a.name < b.name
}

// dpkgNewer orders Debian versions as dpkg does.
func dpkgNewer(a, b string) bool {
	return exec.Command("dpkg", "--compare-versions", a, "gt", b).Run() == nil
}

// download fetches packages into dir and returns the files.
func (d *debian) download(ctx context.Context, dir string, pkgs ...debPackage) ([]string, error) {
	args := []string{"download", "-qq"}
	for _, p := range pkgs {
		args = append(args, p.name+"="+p.version)
	}
	if _, err := d.aptGet(ctx, dir, args...); err != nil {
		return nil, err
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.deb"))
	if err != nil {
		return nil, err
	}
	if len(files) != len(pkgs) {
		return nil, errors.New("apt-get download: got " + strconv.Itoa(len(files)) + " files for " + strconv.Itoa(len(pkgs)) + " packages")
	}
	return files, nil
}
