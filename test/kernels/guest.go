package main

import (
	"bufio"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

//go:embed init.sh
var initScript []byte

// A testBinary is a package's test binary, built for the guest.
type testBinary struct {
	pkg  string // as the table names it: tracer, cmd/portlife
	file string // its name in the share: tracer.test
}

// buildTests builds, into share, a static test binary for each package
// and the portlife binary that cmd/portlife's tests run
// (PORTLIFE_BINARY): the guest has no Go toolchain.
func buildTests(ctx context.Context, share, goarch string, pkgs []string) ([]testBinary, error) {
	env := append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+goarch)
	build := func(args ...string) error {
		cmd := exec.CommandContext(ctx, "go", args...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := build("build", "-o", filepath.Join(share, "portlife"), "./cmd/portlife"); err != nil {
		return nil, err
	}
	var bins []testBinary
	seen := map[string]bool{}
	for _, p := range pkgs {
		name := strings.TrimPrefix(path.Clean(p), "./")
		file := path.Base(name) + ".test"
		if seen[file] {
			return nil, fmt.Errorf("packages %v: two are named %s", pkgs, path.Base(name))
		}
		seen[file] = true
		if err := build("test", "-c", "-o", filepath.Join(share, file), "./"+name); err != nil {
			return nil, err
		}
		if _, err := os.Stat(filepath.Join(share, file)); err != nil {
			return nil, fmt.Errorf("package %s has no tests", name)
		}
		bins = append(bins, testBinary{pkg: name, file: file})
	}
	return bins, nil
}

// A machine is how qemu emulates one architecture.
type machine struct {
	qemu    string   // the binary
	pkg     string   // Debian's package of it
	args    []string // the board
	console string   // the serial console's device in the guest
	// timeout is the default for one kernel: about 4 times what the
	// default packages take (1¼ minutes for amd64, 3¼ for arm64), so that
	// a busy host does not time out but a hang ends.
	timeout time.Duration
}

var machines = map[string]machine{
	"amd64": {qemu: "qemu-system-x86_64", pkg: "qemu-system-x86", args: []string{"-machine", "pc"}, console: "ttyS0", timeout: 12 * time.Minute},
	"arm64": {qemu: "qemu-system-aarch64", pkg: "qemu-system-arm", args: []string{"-machine", "virt"}, console: "ttyAMA0", timeout: 30 * time.Minute},
}

// A guestRun is what every kernel of a run boots with.
type guestRun struct {
	tmp        string // the run's temporary directory
	share      string // the test binaries, shared with the guest
	busybox    string
	tests      []testBinary
	machine    machine
	timeout    time.Duration // per kernel
	testRun    string        // -test.run, if set
	bench      string        // -test.bench, if set
	skip       string        // -test.skip, if set
	memory     string
	cpu        string
	appendArgs string   // more kernel command line
	qemuArgs   []string // more qemu arguments
	logs       string
	verbose    io.Writer // the console, as it comes, if set
	progress   func(string, ...any)
}

// boot runs the tests in kernel k and returns what its console showed.
func (g *guestRun) boot(ctx context.Context, k *kernel, label string) *kernelResult {
	r := &kernelResult{label: label, release: k.Release, log: filepath.Join(g.logs, k.Release+".log")}
	for _, t := range g.tests {
		r.pkgs = append(r.pkgs, &pkgResult{name: t.pkg, binary: t.file})
	}
	initrd := filepath.Join(g.tmp, "initramfs-"+k.Release)
	if err := g.initramfs(initrd, k); err != nil {
		r.problem = "building its initramfs: " + err.Error()
		return r
	}
	defer os.Remove(initrd)
	logf, err := os.Create(r.log)
	if err != nil {
		r.problem = err.Error()
		return r
	}
	defer logf.Close()

	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	args := append([]string{}, g.machine.args...)
	args = append(args,
		"-cpu", g.cpu, "-smp", "1", "-m", g.memory,
		"-nodefaults", "-display", "none", "-no-reboot",
		"-kernel", k.vmlinuz(), "-initrd", initrd,
		// panic=-1 reboots at once on a panic, which -no-reboot turns into
		// qemu exiting. RDRAND seeds the entropy pool: 5.10's getrandom
		// blocks until it is seeded.
		"-append", strings.TrimSpace(fmt.Sprintf("console=%s quiet panic=-1 random.trust_cpu=on %s", g.machine.console, g.appendArgs)),
		"-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
	)
	if k.Share9p {
		args = append(args, "-virtfs", "local,path="+g.share+",mount_tag=share,security_model=none,readonly=on")
	}
	args = append(args, g.qemuArgs...)
	cmd := exec.CommandContext(ctx, g.machine.qemu, args...)
	cmd.WaitDelay = 5 * time.Second
	// qemu goes with the harness, even one killed outright.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		r.problem = err.Error()
		return r
	}
	cmd.Stderr = cmd.Stdout // qemu's own complaints go with the console
	fmt.Fprintf(logf, "# %s %s\n", g.machine.qemu, strings.Join(args, " "))
	r.start = time.Now()
	if err := cmd.Start(); err != nil {
		r.problem = err.Error()
		return r
	}
	// Read to the end whatever comes: a line too long for the buffer is
	// taken in pieces, so that qemu never blocks on a full pipe.
	br := bufio.NewReaderSize(stdout, 64<<10)
	for {
		b, err := br.ReadSlice('\n')
		if len(b) > 0 {
			l := strings.TrimSuffix(string(b), "\n")
			fmt.Fprintln(logf, l)
			if g.verbose != nil {
				fmt.Fprintln(g.verbose, l)
			}
			cur := r.cur
			r.line(l, time.Now())
			if cur != nil && r.cur == nil {
				g.progress("  %-14s %s (%s)", cur.name, cur.cell(), cur.elapsed.Round(time.Second))
			}
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			break
		}
	}
	err = cmd.Wait()
	r.elapsed = time.Since(r.start)
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		r.problem = fmt.Sprintf("timed out after %s", g.timeout)
	case ctx.Err() != nil:
		r.problem = "interrupted"
	case err != nil:
		r.problem = fmt.Sprintf("%s: %v", g.machine.qemu, err)
	case r.release == "":
		r.problem = "the guest did not start its tests"
	case !r.done:
		r.problem = "the guest stopped before its tests ended"
	}
	return r
}

// initramfs writes the guest's root file system: busybox, the init
// script and its settings, the modules to mount the share, and the test
// binaries themselves when the kernel cannot mount the share.
func (g *guestRun) initramfs(file string, k *kernel) error {
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	defer f.Close()
	c := newCPIO(f)
	for _, d := range []string{"proc", "sys", "dev", "tmp", "run", "share", "root"} {
		if err := c.mkdirAll(d); err != nil {
			return err
		}
	}
	if err := c.file("init", 0o755, initScript); err != nil {
		return err
	}
	if err := c.copyFile("bin/busybox", g.busybox); err != nil {
		return err
	}
	for _, m := range k.Modules {
		if err := c.copyFile("modules/"+m+".ko", filepath.Join(k.Dir, "modules", m+".ko")); err != nil {
			return err
		}
	}
	share := "embedded"
	if k.Share9p {
		share = "9p"
	} else {
		entries, err := os.ReadDir(g.share)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if err := c.copyFile("share/"+e.Name(), filepath.Join(g.share, e.Name())); err != nil {
				return err
			}
		}
	}
	var tests []string
	for _, t := range g.tests {
		tests = append(tests, t.file)
	}
	// The tests' own timeout comes before the kernel's, so that a hung
	// test shows where it hung.
	conf := fmt.Sprintf("MODULES=%s\nSHARE=%s\nTESTS=%s\nTIMEOUT=%s\nRUN=%s\nSKIP=%s\nBENCH=%s\n",
		shellQuote(strings.Join(k.Modules, " ")), share, shellQuote(strings.Join(tests, " ")),
		(g.timeout * 8 / 10).Round(time.Second), shellQuote(g.testRun), shellQuote(g.skip), shellQuote(g.bench))
	if err := c.file("etc/portlife-kernels.conf", 0o644, []byte(conf)); err != nil {
		return err
	}
	if err := c.close(); err != nil {
		return err
	}
	return f.Close()
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
