package sink

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime/debug"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlplog/otlploghttp"
	"go.opentelemetry.io/otel/log"
	sdklog "go.opentelemetry.io/otel/sdk/log"
	"go.opentelemetry.io/otel/sdk/resource"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"

	"github.com/portlife/portlife/internal/encode"
	"github.com/portlife/portlife/internal/event"
)

// otlpSink sends each event as an OpenTelemetry log record over OTLP/HTTP,
// with the official log SDK and exporter. The SDK's logger fills in the
// resource and the scope; instead of its BatchProcessor, whose drops are
// only logged, the sink's own processor keeps the records in a bounded
// queue and exports them in batches, in order, with the sink's backoff and
// drain deadline, so that every record is counted sent or dropped.
//
// Unlike the other sinks, it allocates per event: the SDK copies each
// record and the exporter builds protobuf messages.
type otlpSink struct {
	spec     Spec
	provider *sdklog.LoggerProvider
	logger   log.Logger
	exporter sdklog.Exporter
	json     encode.JSON
	buf      []byte
	attrs    []attribute.KeyValue // reused
	counters

	mu       sync.Mutex
	wake     *sync.Cond
	queue    []sdklog.Record
	maxQueue int
	closing  bool
	stop     chan struct{} // closed at the drain deadline
	done     chan struct{}
}

// otlpRecordSize is what a record costs in the queue, roughly: the
// record, its attributes and its JSON body.
const otlpRecordSize = 2 << 10

func openOTLP(spec Spec) (*otlpSink, error) {
	opts := []otlploghttp.Option{
		otlploghttp.WithEndpoint(spec.Addr),
		otlploghttp.WithRetry(otlploghttp.RetryConfig{Enabled: false}), // the sink retries, in order
		otlploghttp.WithTimeout(spec.WriteTimeout),
	}
	if spec.TLS != nil {
		opts = append(opts, otlploghttp.WithTLSClientConfig(spec.TLS))
	} else {
		opts = append(opts, otlploghttp.WithInsecure())
	}
	exp, err := otlploghttp.New(context.Background(), opts...)
	if err != nil {
		return nil, fmt.Errorf("otlp exporter: %w", err)
	}
	host, _ := os.Hostname()
	version := "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		version = bi.Main.Version
	}
	res := resource.NewWithAttributes(semconv.SchemaURL,
		semconv.HostName(host), semconv.ServiceName("portlife"), semconv.ServiceVersion(version))
	s := &otlpSink{
		spec: spec, exporter: exp, maxQueue: max(spec.Queue/otlpRecordSize, 1),
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	s.wake = sync.NewCond(&s.mu)
	s.provider = sdklog.NewLoggerProvider(sdklog.WithResource(res), sdklog.WithProcessor(s))
	s.logger = s.provider.Logger("portlife", log.WithInstrumentationVersion(version))
	go s.run()
	return s, nil
}

func (s *otlpSink) Name() string     { return s.spec.Name() }
func (s *otlpSink) Stats() Stats     { return s.counters.stats(s.spec.Name()) }
func (s *otlpSink) QueueEvents() int { return 4096 }
func (s *otlpSink) Flush() error     { return nil }

// Write turns e into a log record: the event's fields as attributes, with
// OpenTelemetry's semantic-convention names where they exist, and the JSON
// event as the body.
func (s *otlpSink) Write(e *event.Event) error {
	var r log.Record
	r.SetTimestamp(e.Time)
	r.SetObservedTimestamp(time.Now())
	r.SetEventName("portlife." + e.Kind.String())
	if severity(e.Kind) == 4 {
		r.SetSeverity(log.SeverityWarn)
		r.SetSeverityText("WARN")
	} else {
		r.SetSeverity(log.SeverityInfo)
		r.SetSeverityText("INFO")
	}
	s.buf = s.json.Append(s.buf[:0], e)
	r.SetBody(attribute.StringValue(string(s.buf[:len(s.buf)-1])))
	r.AddAttributes(s.attributes(e)...)
	s.logger.Emit(context.Background(), r)
	return nil
}

func (s *otlpSink) attributes(e *event.Event) []attribute.KeyValue {
	src, dst := e.Local, e.Remote
	if e.Direction == event.DirectionInbound { // the remote end connected to us
		src, dst = e.Remote, e.Local
	}
	network := "ipv4"
	if e.Family == 6 {
		network = "ipv6"
	}
	a := append(s.attrs[:0],
		attribute.String("portlife.event", e.Kind.String()),
		attribute.String("network.transport", e.Proto.String()),
		attribute.String("network.type", network),
		attribute.String("source.address", src.Addr().String()),
		attribute.Int("source.port", int(src.Port())),
		attribute.String("destination.address", dst.Addr().String()),
		attribute.Int("destination.port", int(dst.Port())),
		attribute.String("portlife.direction", e.Direction.String()),
		attribute.Bool("portlife.ephemeral", e.Ephemeral),
		attribute.Int("process.pid", int(e.PID)),
		attribute.String("process.executable.name", e.Comm.String()),
		attribute.Int("thread.id", int(e.TID)),
		attribute.String("user.id", fmt.Sprint(e.UID)),
		attribute.String("portlife.pid_source", e.PIDSource.String()),
		attribute.Int64("portlife.cgroup_id", int64(e.CgroupID)),
		attribute.Int64("portlife.netns", int64(e.NetNS)),
		attribute.Int64("portlife.sock_cookie", int64(e.Cookie)),
	)
	if e.ListenerPID != 0 {
		a = append(a, attribute.Int("portlife.listener_pid", int(e.ListenerPID)))
	}
	if d := e.Duration(); d > 0 {
		a = append(a, attribute.Float64("portlife.duration_ms", float64(d)/1e6))
	}
	if e.Kind == event.KindClose {
		a = append(a, attribute.Int64("portlife.tx_bytes", int64(e.TxBytes)), attribute.Int64("portlife.rx_bytes", int64(e.RxBytes)),
			attribute.String("portlife.closed_by", e.ClosedBy.String()), attribute.Bool("portlife.time_wait", e.TimeWait))
	}
	if e.Errno != 0 {
		a = append(a, attribute.Int("portlife.errno", int(e.Errno)))
	}
	s.attrs = a
	return a
}

// Enabled, OnEmit, Shutdown and ForceFlush make the sink the SDK's
// processor: OnEmit queues a copy of the record the logger made.
func (s *otlpSink) Enabled(context.Context, sdklog.EnabledParameters) bool { return true }

func (s *otlpSink) OnEmit(_ context.Context, r *sdklog.Record) error {
	s.mu.Lock()
	if len(s.queue) >= s.maxQueue || s.closing {
		s.mu.Unlock()
		s.drop(DropQueueFull, 1, nil)
		return nil
	}
	s.queue = append(s.queue, r.Clone())
	s.queued.Add(1)
	s.wake.Signal()
	s.mu.Unlock()
	return nil
}

func (s *otlpSink) Shutdown(context.Context) error   { return nil }
func (s *otlpSink) ForceFlush(context.Context) error { return nil }

// run exports the queue in batches of at most 512 records, in order, each
// batch again after a failure, with exponential backoff and full jitter,
// until the drain deadline.
func (s *otlpSink) run() {
	defer close(s.done)
	var batch []sdklog.Record
	for {
		s.mu.Lock()
		for len(s.queue) == 0 && !s.closing {
			s.wake.Wait()
		}
		if len(s.queue) == 0 {
			s.mu.Unlock()
			return
		}
		n := min(len(s.queue), 512)
		batch = append(batch[:0], s.queue[:n]...)
		s.queue = s.queue[:copy(s.queue, s.queue[n:])]
		s.mu.Unlock()

		backoff := 100 * time.Millisecond
		for {
			ctx, cancel := context.WithTimeout(context.Background(), s.spec.WriteTimeout)
			go func() {
				select {
				case <-s.stop:
					cancel()
				case <-ctx.Done():
				}
			}()
			err := s.exporter.Export(ctx, batch)
			cancel()
			if err == nil {
				s.sent.Add(uint64(len(batch)))
				s.queued.Add(-int64(len(batch)))
				break
			}
			s.setErr(err)
			s.reconnects.Add(1) // another attempt, on a connection the HTTP client may make anew
			select {
			case <-time.After(rand.N(backoff) + time.Millisecond):
				backoff = min(backoff*2, s.spec.BackoffMax)
				continue
			case <-s.stop:
			}
			// The drain deadline passed: this batch and the queue are lost.
			s.mu.Lock()
			n := len(batch) + len(s.queue)
			s.queue = nil
			s.mu.Unlock()
			s.drop(DropShutdown, n, nil)
			s.queued.Add(-int64(n))
			return
		}
	}
}

// Close exports what is queued until the drain deadline, then counts the
// rest dropped at shutdown.
func (s *otlpSink) Close() error {
	s.mu.Lock()
	if !s.closing {
		s.closing = true
		s.wake.Broadcast()
		time.AfterFunc(s.spec.Drain, func() { close(s.stop) })
	}
	s.mu.Unlock()
	<-s.done
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	s.provider.Shutdown(ctx)
	return s.exporter.Shutdown(ctx)
}
