// Command kernels runs portlife's kernel tests inside other Linux kernels,
// under qemu, on this machine, and prints a table of kernel × package →
// pass or fail.
//
// It downloads Debian's kernel packages with apt (a configuration of its
// own, the host's is left alone), keeps the image and the few modules it
// needs in a cache, and boots each kernel with a busybox initramfs that
// mounts what the tests expect of a host (proc, sysfs, bpffs, cgroup2,
// tracefs, loopback up) and runs the packages' test binaries as root with
// CI=true. The binaries are built here, static, and shared with the guest
// read-only over 9p; a kernel without the 9p modules gets them in its
// initramfs. /dev/kvm is not needed: qemu emulates the CPU (TCG), one CPU
// per guest.
//
//	go run ./test/kernels                          # the default matrix
//	go run ./test/kernels --kernels 6.1,7          # the newest 6.1.x and 7.x
//	go run ./test/kernels --arch arm64 --kernels 6.12 --packages ./cmd/portlife
//
// It exits 0 when every package passed in every kernel, 1 otherwise, 2 for
// a usage error.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// defaultKernels is the matrix: each Debian release's kernel from 5.10
// (bullseye), the current long-term 6.18, and the newest 7.x.
const defaultKernels = "5.10,6.1,6.12,6.18,7"

// hostToolTests drive a program of the host's (tmux, promtool, rsyslogd,
// an OpenTelemetry Collector) that a busybox guest has not. What they test
// is portlife's user space, the same on every kernel: make test runs them
// on the host.
const hostToolTests = "^(TestTopInTmux|TestTopPressureColumn|TestMetricsMatchEvents|TestMetricsCardinalityBounded|TestMetricsPortsAndReleased|TestSyslogToRsyslog|TestSyslogRsyslogRestart|TestOTLPSink|TestFileSinkDiskFull)$"

type options struct {
	kernels        []string
	arch           string
	packages       []string
	cache          string
	logs           string
	timeout        time.Duration
	run            string
	bench          string
	skip           string
	memory         string
	cpu            string
	appendArgs     string
	qemuArgs       []string
	mirror         string
	securityMirror string
	verbose        bool
}

func parseFlags(fs *flag.FlagSet, args []string) (*options, error) {
	o := &options{}
	var kernels, packages string
	fs.StringVar(&kernels, "kernels", defaultKernels, "kernels to boot, comma- or space-separated: 6.18 is the newest 6.18.x, 7 the newest 7.x, 6.18.5 exactly that")
	fs.StringVar(&o.arch, "arch", "amd64", "the guests' architecture: amd64 or arm64")
	fs.StringVar(&packages, "packages", "./tracer,./cmd/portlife", "packages whose tests run in each kernel")
	fs.StringVar(&o.cache, "cache", defaultCache(), "where kernels and package lists are kept between runs")
	fs.StringVar(&o.logs, "logs", "bin/kernels", "where each kernel's console log and the summary are written")
	fs.DurationVar(&o.timeout, "timeout", 0, "the longest one kernel may take, boot and every package (default 12m for amd64, 30m for arm64, which qemu emulates 3-4 times slower)")
	fs.StringVar(&o.run, "run", "", "run only the tests matching this regular expression (go test -run)")
	fs.StringVar(&o.skip, "skip", hostToolTests, "tests not to run in a guest (go test -skip): by default those that drive a tool of the host's (see hostToolTests)")
	fs.StringVar(&o.bench, "bench", "", "also run the benchmarks matching this regular expression (go test -bench), such as Churn with --run '^$'")
	fs.StringVar(&o.memory, "memory", "1G", "each guest's memory")
	fs.StringVar(&o.cpu, "cpu", "max", "the CPU qemu emulates (qemu -cpu)")
	fs.StringVar(&o.appendArgs, "append", "", "more kernel command line, such as a debugging option")
	var qemuArgs string
	fs.StringVar(&qemuArgs, "qemu-args", "", "more qemu arguments, space-separated, such as a monitor socket to look into a guest that hangs")
	fs.StringVar(&o.mirror, "mirror", "http://deb.debian.org/debian", "Debian's archive")
	fs.StringVar(&o.securityMirror, "security-mirror", "http://deb.debian.org/debian-security", "Debian's security archive")
	fs.BoolVar(&o.verbose, "v", false, "copy every guest's console to stdout")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	o.kernels = splitList(kernels)
	o.packages = splitList(packages)
	o.qemuArgs = strings.Fields(qemuArgs)
	if len(o.kernels) == 0 || len(o.packages) == 0 {
		return nil, errors.New("--kernels and --packages need at least one entry each")
	}
	for _, k := range o.kernels {
		if v := parseVersion(k); len(v) == 0 || versionString(v) != k {
			return nil, fmt.Errorf("--kernels: %q is not a version such as 6.18, 6.18.5 or 7", k)
		}
	}
	if _, ok := machines[o.arch]; !ok {
		return nil, fmt.Errorf("--arch %q: want amd64 or arm64", o.arch)
	}
	if o.timeout == 0 {
		o.timeout = machines[o.arch].timeout
	}
	if o.timeout < time.Minute {
		return nil, fmt.Errorf("--timeout %s: a kernel needs a minute at least to boot and run a package", o.timeout)
	}
	return o, nil
}

func splitList(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' })
}

func defaultCache() string {
	dir, err := os.UserCacheDir()
	if err != nil {
		dir = os.TempDir()
	}
	return filepath.Join(dir, "portlife-kernels")
}

func main() {
	fs := flag.NewFlagSet("kernels", flag.ContinueOnError)
	o, err := parseFlags(fs, os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "kernels: %v\n", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	ok, err := run(ctx, o)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "kernels: %v\n", err)
		os.Exit(1)
	}
	if !ok {
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Printf(format+"\n", args...)
}

// run returns whether every package passed in every kernel.
func run(ctx context.Context, o *options) (bool, error) {
	m := machines[o.arch]
	if err := hostTools(ctx, m); err != nil {
		return false, err
	}
	if err := os.MkdirAll(o.logs, 0o755); err != nil {
		return false, err
	}
	tmp, err := os.MkdirTemp("", "portlife-kernels-")
	if err != nil {
		return false, err
	}
	defer os.RemoveAll(tmp)
	start := time.Now()
	g, kernels, err := prepare(ctx, o, tmp)
	if err != nil {
		return false, err
	}
	logf("prepared in %s", time.Since(start).Round(time.Second))

	var results []*kernelResult
	for _, k := range kernels {
		if ctx.Err() != nil {
			break
		}
		logf("booting %s (%s)", k.Choice.upstream, k.Release)
		r := g.boot(ctx, k, k.Choice.upstream)
		if r.problem != "" {
			logf("  %s", r.problem)
		}
		logf("  %s in %s", k.Choice.upstream, r.elapsed.Round(time.Second))
		results = append(results, r)
	}
	var table strings.Builder
	fmt.Fprintf(&table, "\nkernel matrix, %s, %d kernels in %s:\n\n", o.arch, len(results), time.Since(start).Round(time.Second))
	printTable(&table, results)
	printDetails(&table, results)
	fmt.Print(table.String())
	if err := os.WriteFile(filepath.Join(o.logs, "summary.txt"), []byte(table.String()), 0o644); err != nil {
		return false, err
	}
	if ctx.Err() != nil {
		return false, errors.New("interrupted")
	}
	for _, r := range results {
		if !r.ok() {
			return false, nil
		}
	}
	return true, nil
}

// prepare chooses every kernel of the matrix, builds the test binaries
// into tmp and brings the kernels into the cache. A kernel that does not
// exist stops the run before anything is built or downloaded.
func prepare(ctx context.Context, o *options, tmp string) (*guestRun, []*kernel, error) {
	// The guest's unprivileged tests run the shared portlife binary as
	// nobody, through this directory.
	share := filepath.Join(tmp, "share")
	if err := os.Mkdir(share, 0o755); err != nil {
		return nil, nil, err
	}
	d := newDebian(o.cache, o.arch, o.mirror, o.securityMirror)
	if err := d.refresh(ctx, logf); err != nil {
		return nil, nil, err
	}
	pkgs, err := d.kernelPackages(ctx)
	if err != nil {
		return nil, nil, err
	}
	var choices []kernelChoice
	for _, spec := range o.kernels {
		c, err := chooseKernel(spec, o.arch, pkgs, dpkgNewer)
		if err != nil {
			return nil, nil, err
		}
		choices = append(choices, c)
	}
	logf("building the test binaries for %s: %s", o.arch, strings.Join(o.packages, " "))
	tests, err := buildTests(ctx, share, o.arch, o.packages)
	if err != nil {
		return nil, nil, err
	}
	busybox, err := fetchBusybox(ctx, d, o.cache)
	if err != nil {
		return nil, nil, fmt.Errorf("busybox: %w", err)
	}
	var kernels []*kernel
	for _, c := range choices {
		k, err := fetchKernel(ctx, d, o.cache, c, logf)
		if err != nil {
			return nil, nil, err
		}
		how := "9p"
		if !k.Share9p {
			how = "initramfs (" + k.NoShare + ")"
		}
		logf("kernel %s: %s %s, binaries by %s", c.spec, c.image.name, c.image.version, how)
		kernels = append(kernels, k)
	}
	if err := pruneKernels(o.cache, o.arch, logf); err != nil {
		return nil, nil, err
	}
	g := &guestRun{tmp: tmp, share: share, busybox: busybox, tests: tests, machine: machines[o.arch],
		timeout: o.timeout, testRun: o.run, bench: o.bench, skip: o.skip, memory: o.memory, cpu: o.cpu, appendArgs: o.appendArgs,
		qemuArgs: o.qemuArgs, logs: o.logs, progress: logf}
	if o.verbose {
		g.verbose = os.Stdout
	}
	return g, kernels, nil
}

// hostTools installs, from the host's Debian packages, what the harness
// runs that a fresh machine may lack: qemu for the guests' architecture
// and xz for the kernels' modules.
func hostTools(ctx context.Context, m machine) error {
	for _, t := range []string{"apt-get", "apt-cache", "dpkg-deb", "dpkg"} {
		if _, err := exec.LookPath(t); err != nil {
			return fmt.Errorf("%s not found: the kernel matrix needs a Debian host", t)
		}
	}
	var missing []string
	for tool, pkg := range map[string]string{m.qemu: m.pkg, "xz": "xz-utils"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, pkg)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("install the Debian packages %s, or run as root", strings.Join(missing, " "))
	}
	logf("installing %s", strings.Join(missing, " "))
	if _, err := command(ctx, "", "apt-get", "update", "-qq"); err != nil {
		return err
	}
	_, err := command(ctx, "", "apt-get", append([]string{"install", "-y", "-qq", "--no-install-recommends"}, missing...)...)
	return err
}
