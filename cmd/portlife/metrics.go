package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/portlife/portlife/internal/metrics"
	"github.com/portlife/portlife/internal/ports"
	"github.com/portlife/portlife/internal/stream"
	"github.com/portlife/portlife/tracer"
)

// metricsOptions is --metrics-addr.
type metricsOptions struct {
	addr string // host:port; "" is off
}

// The metrics consumer's queue: it only counts, like the summarizer.
const metricsQueue = 32 << 10

func addMetricsFlags(fs *pflag.FlagSet, o *metricsOptions) {
	fs.Var(metricsAddrValue{&o.addr}, "metrics-addr", "serve Prometheus metrics on this address at /metrics, e.g. 127.0.0.1:9608; a port alone binds localhost, 0.0.0.0:9608 every interface (default off)")
}

// metricsAddrValue is host:port, or a port alone, which means localhost:
// metrics name the host's processes, so they are not published to the
// network unless asked for.
type metricsAddrValue struct{ p *string }

func (v metricsAddrValue) Set(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		host, port = "", s
	}
	// Port 0 takes any free port: the log's "serving metrics" names it.
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("%q: want host:port or a port, such as 127.0.0.1:9608", s)
	}
	if host == "" {
		host = "127.0.0.1"
	}
	*v.p = net.JoinHostPort(host, port)
	return nil
}

func (v metricsAddrValue) String() string { return *v.p }
func (v metricsAddrValue) Type() string   { return "addr" }

// metricsServer serves /metrics while tracing runs.
type metricsServer struct {
	ln   net.Listener
	srv  *http.Server
	done chan error
}

// listen binds the address before the tracer loads, so a port in use
// fails the run before anything is attached. nil when metrics are off.
func (o *metricsOptions) listen() (*metricsServer, error) {
	if o.addr == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", o.addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr: %w", err)
	}
	return &metricsServer{ln: ln, done: make(chan error, 1)}, nil
}

// serve subscribes the event counts to s and serves the registry. acct is
// port accounting (nil: off); released says released events come.
func (m *metricsServer) serve(t *tracer.Tracer, s *stream.Stream, sks *sinks, acct *ports.Accountant, released bool, log *zap.Logger) {
	if m == nil {
		return
	}
	counts := metrics.NewCounts()
	s.Subscribe("metrics", counts, metricsQueue)
	reg := metrics.NewRegistry(counts, metrics.Sources{
		Ports:    portStats(acct),
		Released: released,
		Kernel: func() (metrics.KernelStats, error) {
			k, err := t.Stats()
			return metrics.KernelStats{
				Events: k.Events, RingbufFull: k.RingbufFull, StorageFull: k.StorageFull, TableFull: k.TableFull,
				NotAdopted: k.NotAdopted, SkippedRuns: k.SkippedRuns, Unnamed: k.Unnamed,
			}, err
		},
		Consumers: func() []metrics.ConsumerStats {
			var out []metrics.ConsumerStats
			for _, c := range s.Stats() {
				out = append(out, metrics.ConsumerStats{Name: c.Name, Dropped: c.Dropped, Failed: c.Failed})
			}
			return out
		},
		Sinks: sks.metrics,
	}, buildInfo())
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: zap.NewStdLog(log), MaxRequestsInFlight: 4}))
	m.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { m.done <- m.srv.Serve(m.ln) }()
	log.Info("serving metrics", zap.String("addr", m.ln.Addr().String()))
}

// portStats reads accounting for a scrape: its most pressed keys, as
// labels, and its counts. nil when accounting is off.
func portStats(acct *ports.Accountant) func() metrics.PortStats {
	if acct == nil {
		return nil
	}
	return func() metrics.PortStats {
		top, keys := acct.Top(metrics.TopKeys)
		st := acct.Stats()
		p := metrics.PortStats{Keys: keys, Sockets: acct.Sockets(), KeysLeftOut: st.KeysLeftOut, SocketsLeftOut: st.SocketsLeftOut}
		for _, k := range top {
			pk := metrics.PortKey{
				Mechanism: k.Mechanism.String(), NetNS: k.NetNS, Local: k.Local.String(),
				Used: k.Usage.Used, Capacity: k.Usage.Capacity, Ratio: k.Usage.Ratio,
			}
			if k.Remote.IsValid() {
				pk.Destination = k.Remote.String()
			}
			p.Top = append(p.Top, pk)
		}
		return p
	}
}

// stop ends the server, after the stream has closed: a last scrape sees
// the final counts until then.
func (m *metricsServer) stop() error {
	if m == nil {
		return nil
	}
	if m.srv == nil {
		return m.ln.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := m.srv.Shutdown(ctx)
	if serr := <-m.done; !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	return err
}

func buildInfo() metrics.BuildInfo {
	b := metrics.BuildInfo{Version: "unknown", Revision: "unknown", GoVersion: "unknown"}
	if bi, ok := debug.ReadBuildInfo(); ok {
		b.Version, b.GoVersion = bi.Main.Version, bi.GoVersion
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				b.Revision = s.Value
			}
		}
	}
	return b
}
