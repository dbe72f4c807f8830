// Package tracer loads portlife's eBPF program, attaches it to the kernel's
// socket hooks, adopts the sockets that existed before it started, reads the
// ring buffer and decodes each record into an event.Event for its Output
// (the stream). It owns everything it attaches: Close leaves nothing behind
// in the kernel. Its counters may be read while it runs.
package tracer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/internal/event"
	"github.com/portlife/portlife/internal/workload"
)

// Output receives decoded events in order, on the reader thread (the
// stream's Write and Flush). The Event is reused after Write returns.
type Output interface {
	Write(*event.Event) error
	Flush() error
}

// Config is what New needs to start tracing.
type Config struct {
	Filter event.Filter
	// RingBufferSize is the kernel-to-user buffer in bytes: a power of two
	// and a multiple of the page size.
	RingBufferSize int
	// FlushInterval bounds how long an event waits in the kernel's ring and
	// the Output's buffer. 0 wakes the reader for every event and flushes
	// the Output whenever the ring is empty: each event is written at once.
	FlushInterval time.Duration
	// ReaderNice is the nice value of the thread that reads, decodes and
	// writes events. On a CPU-saturated host a default-priority reader gets
	// too small a share of the CPU to keep up, and the ring overflows.
	// 0 leaves it as it is.
	ReaderNice int
	// MaxSockets bounds the sockets tracked at once on kernels whose
	// tracing programs have no socket storage (before Linux 5.11), where a
	// table stands in for it. A socket past it is not traced, and counted.
	MaxSockets int

	// kernel, set by tests, is used instead of probing the running kernel:
	// the fallbacks it names are taken even where the kernel has better.
	kernel *kernelFeatures
}

// DefaultConfig traces everything with the buffer sizes the benchmark chose.
func DefaultConfig() Config {
	return Config{
		RingBufferSize: 4 << 20,
		FlushInterval:  100 * time.Millisecond,
		ReaderNice:     -10,
		MaxSockets:     1 << 18,
	}
}

// Stats counts what the tracer delivered, and what the kernel side could
// not deliver or track.
type Stats struct {
	Events      uint64 // events decoded and handed to the Output
	RingbufFull uint64 // events dropped: the ring buffer was full
	StorageFull uint64 // sockets not tracked: no per-socket state could be allocated
	TableFull   uint64 // entries a bounded kernel table refused or evicted
	NotAdopted  uint64 // sockets from before start in network namespaces that could not be entered
	// SkippedRuns counts runs of portlife's programs that the kernel
	// skipped: it does not run a tracing program that an interrupt finds
	// already running on its CPU (recursion misses, Linux 5.12 and later).
	// The kernel side still reports the end of a connection whose last
	// state changes were skipped, when the socket is destroyed; another
	// skipped run can cost an event, or details of one. Not in Lost, which
	// counts events known to be lost.
	SkippedRuns uint64
	// Unnamed counts cgroups whose workload (unit, container) could not be
	// resolved: their events carry neither. Not in Lost: the events were
	// delivered.
	Unnamed uint64
}

// Lost is every event the kernel side could not deliver.
func (s Stats) Lost() uint64 { return s.RingbufFull + s.StorageFull + s.TableFull + s.NotAdopted }

// Tracer is a loaded and attached portlife program.
type Tracer struct {
	log *zap.Logger
	cfg Config
	dec decoder
	// features is what this kernel lets portlife use (features.go).
	features kernelFeatures
	// cgroupRoot is where cgroup v2 is mounted; "" if it is not.
	cgroupRoot string
	// ownMount is a cgroup v2 mount portlife made, to unmount at Close, and
	// madeDirs the directories it made for it, to remove then.
	ownMount string
	// tracefs is where tracefs is mounted, once the syscall hooks needed it;
	// ownTracefs is set if portlife mounted it, to unmount at Close.
	tracefs, ownTracefs string
	madeDirs            []string
	objs                portlifeObjects
	reader              *ringbuf.Reader
	// names resolves cgroup ids to units and containers on the reader's
	// thread; nil if the cgroup v2 mount could not be opened.
	names *workload.Resolver

	// reading is closed once Run has its thread's priority and reads: from
	// then on nothing needs the capabilities that loading and attaching did.
	reading     chan struct{}
	readingOnce sync.Once

	mu     sync.Mutex // guards links: Run detaches while Close may run
	links  []link.Link
	events atomic.Uint64
	// notAdopted counts the sockets from before start that could not be
	// adopted, set once by New.
	notAdopted atomic.Uint64
}

// New loads and attaches the program. On error nothing stays attached.
func New(cfg Config, log *zap.Logger) (_ *Tracer, err error) {
	if err := cfg.Filter.Validate(); err != nil {
		return nil, err
	}
	if err := checkKernel(); err != nil {
		return nil, err
	}
	if missing := missingCapabilities(&cfg); len(missing) > 0 {
		fields := make([]zap.Field, len(missing))
		for i, c := range missing {
			fields[i] = zap.String(c.name, c.cost)
		}
		log.Warn("running without capabilities portlife uses: each one names what it costs", fields...)
	}
	kernel, err := btf.LoadKernelSpec()
	if err != nil {
		return nil, fmt.Errorf("%w (%v)", ErrNoBTF, err)
	}
	feat, err := probeFeatures(kernel)
	if err != nil {
		return nil, err
	}
	if cfg.kernel != nil {
		feat = *cfg.kernel
	}
	if missing := feat.missing(); len(missing) > 0 {
		fields := make([]zap.Field, len(missing))
		for i, m := range missing {
			fields[i] = zap.String(m.name, m.cost)
		}
		log.Info("this kernel lacks features portlife uses; each is named with what its fallback costs", fields...)
	}
	dec, err := newDecoder()
	if err != nil {
		return nil, err
	}
	dec.udpUncounted = !feat.datagramHooks()
	t := &Tracer{log: log, cfg: cfg, dec: dec, features: feat, reading: make(chan struct{})}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()
	if err := t.findCgroupRoot(); err != nil {
		return nil, err
	}
	if (len(cfg.Filter.Units) > 0 || len(cfg.Filter.Containers) > 0) && !effectiveCapabilities()(unix.CAP_DAC_READ_SEARCH) {
		return nil, errors.New("--unit and --container need CAP_DAC_READ_SEARCH, to name each cgroup (open_by_handle_at): run as root or grant it")
	}
	if t.names, err = workload.NewResolver(t.cgroupRoot, workload.DefaultCacheSize); err != nil {
		if len(cfg.Filter.Units) > 0 || len(cfg.Filter.Containers) > 0 {
			return nil, fmt.Errorf("--unit and --container need the cgroup names: %w", err)
		}
		log.Warn("events will carry no unit or container", zap.Error(err))
	}

	// Kernels from 5.11 account BPF memory to the cgroup; this is a no-op there.
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("this kernel charges eBPF memory to RLIMIT_MEMLOCK, which portlife could not raise: "+
			"run it as root, with CAP_SYS_RESOURCE, or with the limit raised (LimitMEMLOCK=infinity in its systemd unit): %w", err)
	}
	if err := t.load(); err != nil {
		return nil, explain(fmt.Errorf("loading the eBPF program: %w", err))
	}
	if t.reader, err = ringbuf.NewReader(t.objs.Events); err != nil {
		return nil, fmt.Errorf("opening the ring buffer: %w", err)
	}
	if err := t.attach(); err != nil {
		return nil, explain(err)
	}
	if err := t.adoptExisting(); err != nil {
		return nil, explain(err)
	}
	return t, nil
}

func (t *Tracer) load() error {
	spec, err := loadPortlife()
	if err != nil {
		return err
	}
	// Wake the reader once an eighth of the ring is queued, unless every
	// event must go out at once.
	var wakeup uint64
	if t.cfg.FlushInterval > 0 {
		wakeup = uint64(t.cfg.RingBufferSize / 8)
	}
	if err := configure(spec, &t.cfg, t.features, wakeup); err != nil {
		return err
	}

	if err := spec.LoadAndAssign(&t.objs, nil); err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			t.log.Debug("verifier log", zap.String("log", fmt.Sprintf("%+v", verr)))
		}
		return err
	}
	for _, p := range t.cfg.Filter.RemoteNets {
		key, one := raddrKey(p), uint8(1)
		if err := t.objs.RaddrNets.Put(&key, &one); err != nil {
			return fmt.Errorf("adding --raddr %s: %w", p, err)
		}
	}
	return nil
}

// configure sets what the program reads before it loads: the filter and
// tuning in cfg, and the fallbacks this kernel needs.
func configure(spec *ebpf.CollectionSpec, cfg *Config, feat kernelFeatures, wakeupBytes uint64) error {
	kcfg := kernelConfig(&cfg.Filter, wakeupBytes)
	kcfg.Gaps = uint8(feat.gaps)
	feat.adapt(spec, uint32(cfg.MaxSockets))
	if err := spec.Variables["cfg"].Set(kcfg); err != nil {
		return fmt.Errorf("setting the filter: %w", err)
	}
	if feat.udpFexit {
		if err := spec.Variables["udp_recvmsg_args"].Set(feat.recvArgs); err != nil {
			return fmt.Errorf("setting udp_recvmsg_args: %w", err)
		}
	}
	for name, proto := range map[string]event.Proto{"adopt_tcp_sockets": event.ProtoTCP, "adopt_udp_sockets": event.ProtoUDP} {
		if err := spec.Variables[name].Set(cfg.Filter.WantsProto(proto)); err != nil {
			return fmt.Errorf("setting %s: %w", name, err)
		}
	}
	spec.Maps["events"].MaxEntries = uint32(cfg.RingBufferSize)
	return nil
}

// hook is one attachment point, named as an error message should name it.
type hook struct {
	name string
	prog *ebpf.Program
	// how: a BTF tracepoint (tp_btf), a cgroup hook on the cgroup v2 root,
	// or a classic tracepoint (group:event, whose id is read from tracefs).
	how    attachKind
	cgroup ebpf.AttachType
	wanted bool // the filter needs it
}

type attachKind int

const (
	attachTracing attachKind = iota
	attachCgroup
	attachTracepoint
)

func (t *Tracer) hooks() []hook {
	p := &t.objs.portlifePrograms
	f := &t.cfg.Filter
	tcp, udp := f.WantsProto(event.ProtoTCP), f.WantsProto(event.ProtoUDP)
	// The syscall hooks see TCP and UDP sockets both.
	// Without the datagram hooks, connect()'s return also opens a UDP socket.
	connects := f.WantsKind(event.KindConnectFailed) || udp && !t.features.datagramHooks() && f.WantsKind(event.KindOpen)
	binds := f.WantsKind(event.KindBindFailed)
	return []hook{
		// Before Linux 5.12 (GAP_SOCKET_COOKIE): every TCP socket gets the
		// kernel's cookie before sk_cookie reads it, so events carry the
		// cookie sock_diag and SO_COOKIE show. First, so that the TCP hooks
		// see no new socket that these have missed.
		{"cgroup/sock_create", p.SockCookie, attachCgroup, ebpf.AttachCGroupInetSockCreate, tcp && !t.KernelCookies()},
		{"sockops", p.TcpAccepted, attachCgroup, ebpf.AttachCGroupSockOps, tcp && !t.KernelCookies()},
		{"sock:inet_sock_set_state", p.TcpState, attachTracing, 0, tcp},
		{"tcp:tcp_send_reset", p.TcpRstSent, attachTracing, 0, tcp},
		{"tcp:tcp_receive_reset", p.TcpRstRecv, attachTracing, 0, tcp},
		{"tcp:tcp_destroy_sock", p.TcpDestroy, attachTracing, 0, tcp},
		{"cgroup/bind4", p.UdpBind4, attachCgroup, ebpf.AttachCGroupInet4Bind, udp},
		{"cgroup/bind6", p.UdpBind6, attachCgroup, ebpf.AttachCGroupInet6Bind, udp},
		// Only where no datagram hook sees a connected socket's peer.
		{"cgroup/connect4", p.UdpConnect4, attachCgroup, ebpf.AttachCGroupInet4Connect, udp && !t.features.datagramHooks()},
		{"cgroup/connect6", p.UdpConnect6, attachCgroup, ebpf.AttachCGroupInet6Connect, udp && !t.features.datagramHooks()},
		{"cgroup/post_bind4", p.UdpBound4, attachCgroup, ebpf.AttachCGroupInet4PostBind, udp},
		{"cgroup/post_bind6", p.UdpBound6, attachCgroup, ebpf.AttachCGroupInet6PostBind, udp},
		{"cgroup/sendmsg4", p.UdpSend4, attachCgroup, ebpf.AttachCGroupUDP4Sendmsg, udp},
		{"cgroup/sendmsg6", p.UdpSend6, attachCgroup, ebpf.AttachCGroupUDP6Sendmsg, udp},
		{"sock:sock_send_length", p.UdpSent, attachTracing, 0, udp && t.features.datagramTracepoints()},
		{"sock:sock_recv_length", p.UdpRecvd, attachTracing, 0, udp && t.features.datagramTracepoints()},
		{"fexit:udp_sendmsg", p.UdpTx4, attachTracing, 0, udp && t.features.udpFexit},
		{"fexit:udpv6_sendmsg", p.UdpTx6, attachTracing, 0, udp && t.features.udpFexit},
		{"fexit:udp_recvmsg", p.UdpRx4, attachTracing, 0, udp && t.features.udpFexit},
		{"fexit:udpv6_recvmsg", p.UdpRx6, attachTracing, 0, udp && t.features.udpFexit},
		{"cgroup/sock_release", p.UdpRelease, attachCgroup, ebpf.AttachCgroupInetSockRelease, udp},
		// Each exit before its entry, and after the TCP hooks (a TCP connect
		// hands its call over at SYN_SENT): every call an entry records is
		// seen by its exit. Detaching goes in reverse.
		{"syscalls:sys_exit_connect", p.ConnectExit, attachTracepoint, 0, connects},
		{"syscalls:sys_enter_connect", p.ConnectEnter, attachTracepoint, 0, connects},
		{"syscalls:sys_exit_bind", p.BindExit, attachTracepoint, 0, binds},
		{"syscalls:sys_enter_bind", p.BindEnter, attachTracepoint, 0, binds},
	}
}

func (t *Tracer) attach() error {
	syscallsOff := false
	for _, h := range t.hooks() {
		if !h.wanted || h.how == attachTracepoint && syscallsOff {
			continue
		}
		var (
			l   link.Link
			err error
		)
		switch h.how {
		case attachCgroup:
			// The root of the cgroup v2 tree: every socket on the host.
			l, err = link.AttachCgroup(link.CgroupOptions{Path: t.cgroupRoot, Attach: h.cgroup, Program: h.prog})
		case attachTracepoint:
			err = t.findTracefs()
			if err == nil {
				group, name, _ := strings.Cut(h.name, ":")
				l, err = link.Tracepoint(group, name, h.prog, nil)
			}
			if errors.Is(err, os.ErrPermission) {
				// Without root, tracefs, where the syscall tracepoints'
				// ids are, is usually not readable. The rest of tracing
				// works: say what is missing, once, and go on.
				t.log.Warn("connect() and bind() calls that fail before a SYN or a bound port are not reported: "+
					"the syscall tracepoints cannot be attached without access to tracefs (run as root)",
					zap.String("hook", h.name), zap.Error(err))
				syscallsOff = true
				continue
			}
			if errors.Is(err, os.ErrNotExist) {
				err = fmt.Errorf("%w (%v)", ErrNoSyscallTracepoints, err)
			}
		default:
			l, err = link.AttachTracing(link.TracingOptions{Program: h.prog})
		}
		if err != nil {
			return fmt.Errorf("attaching to %s: %w", h.name, err)
		}
		t.links = append(t.links, l)
	}
	return nil
}

// anchorEvery is how often Run re-reads the wall clock against the kernel's
// boot clock; a step of the wall clock shows in event times within this.
const anchorEvery = time.Second

// Run delivers events to out until ctx is done. Then it detaches the hooks,
// delivers what the ring buffer still holds, and flushes out. Every
// goroutine it starts has ended when it returns.
func (t *Tracer) Run(ctx context.Context, out Output) error {
	stopped := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-ctx.Done():
			// Detach first: whatever the hooks sent is then in the ring,
			// and the reader drains it before it sees ErrFlushed.
			t.detach()
			t.reader.Flush()
		case <-stopped:
		}
	}()
	defer wg.Wait()
	defer close(stopped)
	defer t.prioritize()()
	t.readingOnce.Do(func() { close(t.reading) })

	var (
		rec      ringbuf.Record
		ev       event.Event
		anchored = time.Now()
		// With a flush interval, the reader drains the ring at least that
		// often and flushes when it finds it empty. Without one, the kernel
		// wakes it for every event and it flushes whenever it has caught
		// up, so each event is written as soon as it is read.
		interval = t.cfg.FlushInterval
		eager    = interval <= 0
	)
	if !eager {
		t.reader.SetDeadline(time.Now().Add(interval))
	}
	for {
		err := t.reader.ReadInto(&rec)
		switch {
		case err == nil:
			if err := t.dec.decode(rec.RawSample, &ev); err != nil {
				return err
			}
			if t.names != nil {
				n := t.names.Lookup(ev.CgroupID)
				ev.Unit, ev.ContainerID = n.Unit, n.ContainerID
			}
			// The filters the kernel cannot apply: it knows a cgroup by
			// its id alone.
			if t.cfg.Filter.Keeps(&ev) {
				// Every 4096 events, so a busy reader that never waits
				// still follows the wall clock, for one clock read per
				// batch.
				if n := t.events.Add(1); n%4096 == 0 {
					t.reanchor(&anchored)
				}
				if err := out.Write(&ev); err != nil {
					return fmt.Errorf("writing an event: %w", err)
				}
			}
			if eager && t.reader.AvailableBytes() == 0 {
				if err := out.Flush(); err != nil {
					return fmt.Errorf("writing events: %w", err)
				}
				t.reanchor(&anchored)
			}
		case errors.Is(err, os.ErrDeadlineExceeded):
			// The ring is empty and the interval is up.
			if err := out.Flush(); err != nil {
				return fmt.Errorf("writing events: %w", err)
			}
			t.reanchor(&anchored)
			t.reader.SetDeadline(time.Now().Add(interval))
		case errors.Is(err, ringbuf.ErrFlushed):
			if err := out.Flush(); err != nil {
				return fmt.Errorf("writing events: %w", err)
			}
			return nil
		default:
			return fmt.Errorf("reading the ring buffer: %w", err)
		}
	}
}

// reanchor moves the decoder's wall-clock anchor once anchorEvery has passed.
func (t *Tracer) reanchor(last *time.Time) {
	if now := time.Now(); now.Sub(*last) >= anchorEvery {
		*last = now
		if err := t.dec.anchor(); err != nil {
			t.log.Warn("event times may drift from the wall clock", zap.Error(err))
		}
	}
}

// prioritize gives the calling goroutine's thread ReaderNice for as long as
// Run reads, and returns what puts it back. The reader cannot wait to be
// behind before asking: on a CPU-saturated host, a default-priority reader
// that has fallen behind does not get the CPU to notice it. It sleeps
// whenever the ring is empty, so the priority costs no CPU of its own.
func (t *Tracer) prioritize() func() {
	if t.cfg.ReaderNice == 0 {
		return func() {}
	}
	runtime.LockOSThread()
	tid := unix.Gettid()
	prio, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
	if err == nil {
		err = unix.Setpriority(unix.PRIO_PROCESS, tid, t.cfg.ReaderNice)
	}
	if err != nil {
		runtime.UnlockOSThread()
		t.log.Warn("cannot raise the reader's priority: on a busy host events may be lost", zap.Error(err))
		return func() {}
	}
	return func() {
		unix.Setpriority(unix.PRIO_PROCESS, tid, 20-prio) // getpriority(2) returns 20 - nice
		runtime.UnlockOSThread()
	}
}

// Reading is closed once Run reads the ring, with the reader's priority set:
// every hook is attached, and nothing that needs privilege remains but
// entering other network namespaces and reading other processes' /proc.
func (t *Tracer) Reading() <-chan struct{} { return t.reading }

// Stats reads the counters. It is safe to call from any goroutine, while
// Run runs and after it returns (then it gives the totals), until Close.
func (t *Tracer) Stats() (Stats, error) {
	s, err := t.kernelStats()
	s.Events = t.events.Load()
	s.NotAdopted = t.notAdopted.Load()
	skipped, serr := skippedRuns(t.attachedPrograms())
	s.SkippedRuns = skipped
	if t.names != nil {
		s.Unnamed = t.names.Stats().Unresolved
	}
	return s, errors.Join(err, serr)
}

func (t *Tracer) kernelStats() (Stats, error) {
	var s Stats
	counters := []*uint64{
		int(portlifeDropReasonDROP_RINGBUF_FULL): &s.RingbufFull,
		int(portlifeDropReasonDROP_STORAGE_FULL): &s.StorageFull,
		int(portlifeDropReasonDROP_TABLE_FULL):   &s.TableFull,
	}
	var perCPU []uint64
	for reason, total := range counters {
		if err := t.objs.Drops.Lookup(uint32(reason), &perCPU); err != nil {
			return s, fmt.Errorf("reading drop counter %d: %w", reason, err)
		}
		for _, n := range perCPU {
			*total += n
		}
	}
	return s, nil
}

func (t *Tracer) detach() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	var errs []error
	for i := len(t.links) - 1; i >= 0; i-- {
		errs = append(errs, t.links[i].Close())
	}
	t.links = nil
	return errors.Join(errs...)
}

// Close detaches every hook and frees the program and its maps, in reverse
// order of creation. It is safe to call more than once.
func (t *Tracer) Close() error {
	errs := []error{t.detach()}
	if t.reader != nil {
		errs = append(errs, t.reader.Close())
		t.reader = nil
	}
	errs = append(errs, t.objs.Close())
	t.objs = portlifeObjects{}
	if t.names != nil {
		// Before the mount it holds open is unmounted.
		errs = append(errs, t.names.Close())
	}
	errs = append(errs, t.removeOwnMount())
	if t.ownTracefs != "" {
		errs = append(errs, t.unmountTracefs())
	}
	return errors.Join(errs...)
}
