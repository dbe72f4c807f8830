package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// shareModules are the modules the guest loads to mount the host's test
// binaries over 9p (virtio_pci is built in from 6.12 on). Their
// dependencies come along. A kernel without them gets the binaries in its
// initramfs instead.
var shareModules = []string{"virtio_pci", "9pnet_virtio", "9p"}

// diagModules answer sock_diag requests, which portlife ports and the
// TIME_WAIT sweeps make. A host's kernel loads them at the first request;
// a guest has no modprobe, so it loads them at boot, where they exist.
var diagModules = []string{"inet_diag", "tcp_diag", "udp_diag"}

// A kernel is a bootable kernel's files in the cache: the image and the
// modules the guest loads, uncompressed, in load order.
type kernel struct {
	Choice  kernelChoice `json:"-"`
	Dir     string       `json:"-"`
	Release string       // uname -r
	Modules []string     // load order; Dir/modules/<name>.ko
	// Share9p says the modules to mount a 9p share are there (or built
	// in); NoShare says why not.
	Share9p bool
	NoShare string `json:",omitempty"`
	// NoDiag says why the sock_diag modules are missing, if they are.
	NoDiag string `json:",omitempty"`
}

func (k *kernel) vmlinuz() string { return filepath.Join(k.Dir, "vmlinuz") }

// cacheKey names a kernel's directory in the cache. The module list and
// the packages are part of it, so that a change to either extracts the
// kernel again.
func cacheKey(c kernelChoice) string {
	h := sha256.Sum256([]byte(strings.Join(shareModules, ",") + ";" + strings.Join(diagModules, ",") + ";" + debNames(c.debs)))
	return fmt.Sprintf("%s_%s_%x", c.image.name, c.image.version, h[:4])
}

// fetchKernel returns the cached kernel of choice c, downloading and
// extracting it first if need be. Only the image and the few modules the
// guest loads are kept: a kernel costs a few megabytes of cache, not the
// hundreds its packages unpack to.
func fetchKernel(ctx context.Context, d *debian, cache string, c kernelChoice, log func(string, ...any)) (*kernel, error) {
	dir := filepath.Join(cache, d.arch, cacheKey(c))
	if k, err := loadKernel(dir); err == nil {
		k.Choice = c
		now := time.Now()
		return k, os.Chtimes(filepath.Join(dir, "kernel.json"), now, now) // used: see pruneKernels
	}
	log("downloading %s", debNames(c.debs))
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return nil, err
	}
	// Built next to its final place, then renamed: an interrupted run
	// leaves no half-extracted kernel that looks complete.
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".extract-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	debDir, root, out := filepath.Join(tmp, "debs"), filepath.Join(tmp, "root"), filepath.Join(tmp, "kernel")
	for _, p := range []string{debDir, root, filepath.Join(out, "modules")} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			return nil, err
		}
	}
	debs, err := d.download(ctx, debDir, c.debs...)
	if err != nil {
		return nil, err
	}
	for _, f := range debs {
		if _, err := command(ctx, "", "dpkg-deb", "-x", f, root); err != nil {
			return nil, err
		}
	}
	k, err := extractKernel(ctx, root, out)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.image.name, err)
	}
	if c.noModules {
		k.NoShare = "the archive has no modules package for it"
	}
	if k.NoDiag != "" {
		log("%s: no sock_diag modules (%s): its tests that use sock_diag will fail", k.Release, k.NoDiag)
	}
	if err := writeJSON(filepath.Join(out, "kernel.json"), k); err != nil {
		return nil, err
	}
	if err := os.Rename(out, dir); err != nil {
		return nil, err
	}
	k.Dir, k.Choice = dir, c
	return k, nil
}

// unusedFor is how long a kernel stays in the cache after its last run.
// Each point release is a new entry, so the matrix leaves one behind every
// week or two for each of its series.
const unusedFor = 30 * 24 * time.Hour

// pruneKernels removes the cached kernels of arch that no run has used for
// unusedFor.
func pruneKernels(cache, arch string, log func(string, ...any)) error {
	stamps, err := filepath.Glob(filepath.Join(cache, arch, "*", "kernel.json"))
	if err != nil {
		return err
	}
	for _, s := range stamps {
		if st, err := os.Stat(s); err == nil && time.Since(st.ModTime()) > unusedFor {
			log("removing %s from the cache: unused for %s", filepath.Base(filepath.Dir(s)), time.Since(st.ModTime()).Round(24*time.Hour))
			if err := os.RemoveAll(filepath.Dir(s)); err != nil {
				return err
			}
		}
	}
	return nil
}

func loadKernel(dir string) (*kernel, error) {
	b, err := os.ReadFile(filepath.Join(dir, "kernel.json"))
	if err != nil {
		return nil, err
	}
	k := &kernel{Dir: dir}
	return k, json.Unmarshal(b, k)
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

func debNames(pkgs []debPackage) string {
	var s []string
	for _, p := range pkgs {
		s = append(s, p.name+" "+p.version)
	}
	return strings.Join(s, ", ")
}

// extractKernel copies the image and the modules to share 9p from the
// unpacked packages in root into out.
func extractKernel(ctx context.Context, root, out string) (*kernel, error) {
	image, release, err := findImage(root)
	if err != nil {
		return nil, err
	}
	if err := copyFile(image, filepath.Join(out, "vmlinuz")); err != nil {
		return nil, err
	}
	k := &kernel{Release: release}
	modDir := ""
	for _, d := range []string{"lib/modules", "usr/lib/modules"} {
		if st, err := os.Stat(filepath.Join(root, d, release, "kernel")); err == nil && st.IsDir() {
			modDir = filepath.Join(root, d, release)
		}
	}
	if modDir == "" {
		k.NoShare = "its packages have no modules"
		return k, nil
	}
	mods, err := indexModules(modDir)
	if err != nil {
		return nil, err
	}
	builtin := builtinModules(modDir)
	loaded := map[string]bool{}
	// load adds name's dependencies, then name: insmod takes no
	// dependencies of its own accord.
	var load func(name string) error
	load = func(name string) error {
		if loaded[name] {
			return nil
		}
		loaded[name] = true
		src, ok := mods[name]
		if !ok {
			if builtin[name] {
				return nil
			}
			return fmt.Errorf("no module %s", name)
		}
		dst := filepath.Join(out, "modules", name+".ko")
		if err := decompress(ctx, src, dst); err != nil {
			return err
		}
		deps, err := moduleDepends(dst)
		if err != nil {
			return fmt.Errorf("%s: %w", src, err)
		}
		for _, dep := range deps {
			if err := load(dep); err != nil {
				return err
			}
		}
		k.Modules = append(k.Modules, name)
		return nil
	}
	for _, m := range shareModules {
		if err := load(m); err != nil {
			k.NoShare, k.Modules = err.Error(), nil
			return k, os.RemoveAll(filepath.Join(out, "modules"))
		}
	}
	k.Share9p = true
	for _, m := range diagModules {
		// A kernel without them (one whose modules package is gone) runs
		// the tests all the same; those that need sock_diag fail there.
		if err := load(m); err != nil {
			k.NoDiag = err.Error()
		}
	}
	return k, nil
}

// findImage finds the kernel image in unpacked packages: boot/vmlinuz-R
// up to 6.18, usr/lib/modules/R/vmlinuz from 6.19 on.
func findImage(root string) (path, release string, err error) {
	boot, _ := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	mods, _ := filepath.Glob(filepath.Join(root, "usr", "lib", "modules", "*", "vmlinuz"))
	switch {
	case len(boot) == 1:
		return boot[0], strings.TrimPrefix(filepath.Base(boot[0]), "vmlinuz-"), nil
	case len(mods) == 1:
		return mods[0], filepath.Base(filepath.Dir(mods[0])), nil
	}
	return "", "", fmt.Errorf("want one kernel image in the packages, found %d", len(boot)+len(mods))
}

// moduleName is the name insmod and modinfo's depends= use: the file name
// without extensions, with dashes as underscores.
func moduleName(file string) (string, bool) {
	base := filepath.Base(file)
	for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
		if name, ok := strings.CutSuffix(base, ext); ok {
			return strings.ReplaceAll(name, "-", "_"), true
		}
	}
	return "", false
}

func indexModules(dir string) (map[string]string, error) {
	mods := map[string]string{}
	err := filepath.WalkDir(filepath.Join(dir, "kernel"), func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if name, ok := moduleName(p); ok && e.Type().IsRegular() {
			mods[name] = p
		}
		return nil
	})
	return mods, err
}

// builtinModules reads modules.builtin: the drivers this kernel has built
// in rather than as modules.
func builtinModules(dir string) map[string]bool {
	out := map[string]bool{}
	f, err := os.Open(filepath.Join(dir, "modules.builtin"))
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if name, ok := moduleName(sc.Text()); ok {
			out[name] = true
		}
	}
	return out
}

// decompress writes module src to dst uncompressed: busybox's insmod loads
// only plain modules. Debian compresses them with xz from 6.12 on.
func decompress(ctx context.Context, src, dst string) error {
	var tool string
	switch filepath.Ext(src) {
	case ".ko":
		return copyFile(src, dst)
	case ".gz":
		return gunzip(src, dst)
	case ".xz":
		tool = "xz"
	case ".zst":
		tool = "zstd"
	}
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer out.Close()
	cmd := exec.CommandContext(ctx, tool, "-dc", src)
	cmd.Stdout = out
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s -dc %s: %w: %s", tool, src, err, strings.TrimSpace(stderr.String()))
	}
	return out.Close()
}

func gunzip(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	zr, err := gzip.NewReader(in)
	if err != nil {
		return err
	}
	return writeFrom(dst, zr, 0o644)
}

// moduleDepends reads the depends= entry of a module's .modinfo section.
func moduleDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, errors.New("no .modinfo section")
	}
	data, err := sec.Data()
	if err != nil {
		return nil, err
	}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			return slices.DeleteFunc(strings.Split(string(v), ","), func(s string) bool { return s == "" }), nil
		}
	}
	return nil, nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	return writeFrom(dst, in, st.Mode().Perm())
}

func writeFrom(dst string, r io.Reader, perm fs.FileMode) error {
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, r); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// fetchBusybox returns the cached static busybox for the guest's
// architecture, from Debian's busybox-static package.
func fetchBusybox(ctx context.Context, d *debian, cache string) (string, error) {
	path := filepath.Join(cache, d.arch, "busybox")
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(path), ".busybox-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	// A stable release's, rather than whichever suite has the newest.
	if _, err := d.aptGet(ctx, tmp, "download", "-qq", "busybox-static/trixie"); err != nil {
		return "", err
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return "", fmt.Errorf("apt-get download busybox-static: got %d files", len(debs))
	}
	root := filepath.Join(tmp, "root")
	if _, err := command(ctx, "", "dpkg-deb", "-x", debs[0], root); err != nil {
		return "", err
	}
	found, _ := filepath.Glob(filepath.Join(root, "*", "busybox"))
	more, _ := filepath.Glob(filepath.Join(root, "usr", "*", "busybox"))
	if found = append(found, more...); len(found) != 1 {
		return "", fmt.Errorf("%s: want one busybox binary, found %d", debs[0], len(found))
	}
	if err := copyFile(found[0], filepath.Join(tmp, "busybox")); err != nil {
		return "", err
	}
	return path, os.Rename(filepath.Join(tmp, "busybox"), path)
}
