package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/portlife/portlife/internal/encode"
	"github.com/portlife/portlife/internal/metrics"
	"github.com/portlife/portlife/internal/sink"
	"github.com/portlife/portlife/internal/stream"
)

// addSinkFlags defines --sink, repeatable. Each URL and its options are
// checked as the flag is read (sink.ParseURL), so a mistake is a usage
// error naming the URL, before anything is loaded.
func addSinkFlags(fs *pflag.FlagSet, specs *[]sink.Spec) {
	fs.Var(&sinkValue{specs}, "sink", "where events go, repeatable: stdout, file:PATH, tcp://HOST:PORT, tls://HOST:PORT, syslog+udp|tcp|tls://HOST:PORT, syslog+unix:PATH, otlp+http|https://HOST:PORT; options in the query, e.g. file:/var/log/portlife.json?max_size=64MiB&keep=3 (default stdout)")
}

type sinkValue struct{ specs *[]sink.Spec }

func (v *sinkValue) Set(s string) error {
	spec, err := sink.ParseURL(s)
	if err != nil {
		return err
	}
	for _, o := range *v.specs {
		if o.Scheme == "stdout" && spec.Scheme == "stdout" || o.Scheme == "file" && spec.Scheme == "file" && o.Path == spec.Path {
			return errors.New("given twice")
		}
	}
	*v.specs = append(*v.specs, spec)
	return nil
}

func (v *sinkValue) String() string {
	if len(*v.specs) == 0 {
		return ""
	}
	s := ""
	for i, spec := range *v.specs {
		if i > 0 {
			s += ","
		}
		s += spec.Name()
	}
	return s
}

func (v *sinkValue) Type() string { return "URL" }

// sinks are the destinations of one run: stdout, inline on the reader
// thread as the stream's primary output, if chosen (it is by default), and
// every other sink behind a queue of its own.
type sinks struct {
	primary stream.Consumer // nil without stdout
	queued  []sink.Sink
}

// openSinks opens every sink: files now, so that one that cannot be opened
// fails the run before anything is loaded; network sinks connect in the
// background.
func openSinks(specs []sink.Spec, output string, stdout io.Writer) (*sinks, error) {
	if len(specs) == 0 {
		specs = []sink.Spec{{Scheme: "stdout", URL: "stdout"}}
	}
	ss := &sinks{}
	for _, spec := range specs {
		if spec.Scheme == "stdout" {
			if output == "text" {
				ss.primary = sink.NewWriter(stdout, &encode.Text{}, 64<<10)
			} else {
				ss.primary = sink.NewWriter(stdout, &encode.JSON{}, 256<<10)
			}
			continue
		}
		sk, err := sink.Open(spec)
		if err != nil {
			ss.close(nil)
			return nil, fmt.Errorf("sink %s: %w", spec.Name(), err)
		}
		ss.queued = append(ss.queued, sk)
	}
	return ss, nil
}

// names lists the sinks, stdout first if chosen.
func (ss *sinks) names() []string {
	var n []string
	if ss.primary != nil {
		n = append(n, "stdout")
	}
	for _, sk := range ss.queued {
		n = append(n, sk.Name())
	}
	return n
}

// subscribe puts each queued sink behind its own queue in s.
func (ss *sinks) subscribe(s *stream.Stream) {
	for _, sk := range ss.queued {
		s.Subscribe(sk.Name(), sk, sk.QueueEvents())
	}
}

// reopenOnHangup reopens the file sinks on SIGHUP (after logrotate moved
// them), until ctx is done. Without a file sink SIGHUP keeps its default.
func (ss *sinks) reopenOnHangup(ctx context.Context, log *zap.Logger) {
	var files []interface{ Reopen() }
	for _, sk := range ss.queued {
		if r, ok := sk.(interface{ Reopen() }); ok {
			files = append(files, r)
		}
	}
	if len(files) == 0 {
		return
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				log.Info("SIGHUP: reopening files")
				for _, f := range files {
					f.Reopen()
				}
			}
		}
	}()
}

// close ends every queued sink at once, after the stream has closed: each
// drains what it holds for up to its own deadline.
func (ss *sinks) close(log *zap.Logger) error {
	errs := make([]error, len(ss.queued))
	var wg sync.WaitGroup
	for i, sk := range ss.queued {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := sk.Close(); err != nil {
				errs[i] = fmt.Errorf("closing sink %s: %w", sk.Name(), err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// stats reads every queued sink's counters.
func (ss *sinks) stats() sinkStats {
	out := make(sinkStats, len(ss.queued))
	for i, sk := range ss.queued {
		out[i] = sk.Stats()
	}
	return out
}

// metrics is every queued sink's counters for /metrics.
func (ss *sinks) metrics() []metrics.SinkStats {
	out := make([]metrics.SinkStats, len(ss.queued))
	for i, st := range ss.stats() {
		out[i] = metrics.SinkStats{Name: st.Name, Sent: st.Sent, Queued: st.Queued, Reconnects: st.Reconnects, Dropped: map[string]uint64{}}
		for _, r := range sink.DropReasons() {
			out[i].Dropped[r.String()] = st.Dropped[r]
		}
	}
	return out
}

// sinkStats logs each sink as {name, sent, queued, dropped: {reason: n},
// reconnects, error}.
type sinkStats []sink.Stats

func (ss sinkStats) lost() uint64 {
	var n uint64
	for _, s := range ss {
		n += s.Lost()
	}
	return n
}

func (ss sinkStats) MarshalLogArray(enc zapcore.ArrayEncoder) error {
	for _, s := range ss {
		enc.AppendObject(zapcore.ObjectMarshalerFunc(func(o zapcore.ObjectEncoder) error {
			o.AddString("name", s.Name)
			o.AddUint64("sent", s.Sent)
			o.AddUint64("queued", s.Queued)
			o.AddObject("dropped", zapcore.ObjectMarshalerFunc(func(d zapcore.ObjectEncoder) error {
				for _, r := range sink.DropReasons() {
					d.AddUint64(r.String(), s.Dropped[r])
				}
				return nil
			}))
			o.AddUint64("reconnects", s.Reconnects)
			if s.LastError != nil {
				o.AddString("error", s.LastError.Error())
			}
			return nil
		}))
	}
	return nil
}
