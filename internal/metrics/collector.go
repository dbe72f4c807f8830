package metrics

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// KernelStats are the tracer's counters (tracer.Stats), read at scrape time.
type KernelStats struct {
	Events                                          uint64
	RingbufFull, StorageFull, TableFull, NotAdopted uint64
	SkippedRuns                                     uint64
	Unnamed                                         uint64
}

// ConsumerStats are one stream subscriber's counters (stream.ConsumerStats).
type ConsumerStats struct {
	Name            string
	Dropped, Failed uint64
}

// SinkStats are one --sink's counters (sink.Stats).
type SinkStats struct {
	Name                     string
	Sent, Queued, Reconnects uint64
	Dropped                  map[string]uint64 // by reason
}

// Sources are read at each scrape; each may be nil.
type Sources struct {
	Kernel    func() (KernelStats, error)
	Consumers func() []ConsumerStats
	Sinks     func() []SinkStats
}

// BuildInfo labels portlife_build_info.
type BuildInfo struct{ Version, Revision, GoVersion string }

var (
	labelsPD = []string{"proto", "direction"}

	descOpened = prometheus.NewDesc("portlife_connections_opened_total",
		"Connections opened (open events), by protocol and direction.", labelsPD, nil)
	descClosed = prometheus.NewDesc("portlife_connections_closed_total",
		"Connections closed (close events), by protocol and direction.", labelsPD, nil)
	descFailed = prometheus.NewDesc("portlife_connections_failed_total",
		"Failed connects and binds (connect_failed and bind_failed events), by protocol, direction and reason.", append(labelsPD, "reason"), nil)
	descLifetime = prometheus.NewDesc("portlife_connection_lifetime_seconds",
		"Lifetimes of closed connections whose start was seen, by protocol and direction.", labelsPD, nil)
	descTimeWait = prometheus.NewDesc("portlife_time_wait_entered_total",
		"TCP connections closed into TIME_WAIT, by direction.", []string{"direction"}, nil)
	descEvents = prometheus.NewDesc("portlife_events_total",
		"Events the tracer read from the kernel and wrote to the stream.", nil, nil)
	descLost = prometheus.NewDesc("portlife_events_lost_total",
		"Events lost, by source: the kernel side's reasons (ringbuf_full, storage_full, table_full, not_adopted), or queue_NAME for a consumer whose queue was full.", []string{"source"}, nil)
	descConsumerFailed = prometheus.NewDesc("portlife_consumer_write_failures_total",
		"Writes and flushes of a stream consumer that returned an error.", []string{"consumer"}, nil)
	descSinkSent = prometheus.NewDesc("portlife_sink_sent_total",
		"Events a sink delivered: its receiver acknowledged them, or they were written to its file.", []string{"sink"}, nil)
	descSinkQueued = prometheus.NewDesc("portlife_sink_queued",
		"Events waiting in a sink's queue (and disk buffer) now.", []string{"sink"}, nil)
	descSinkDropped = prometheus.NewDesc("portlife_sink_dropped_total",
		"Events a sink lost, by reason: queue_full, send_failed, disk_full, write_failed, shutdown.", []string{"sink", "reason"}, nil)
	descSinkReconnects = prometheus.NewDesc("portlife_sink_reconnects_total",
		"Connections a network sink made again after one was lost or refused.", []string{"sink"}, nil)
	descSkipped = prometheus.NewDesc("portlife_skipped_runs_total",
		"Runs of portlife's kernel hooks the kernel skipped (recursion misses).", nil, nil)
	descUnnamed = prometheus.NewDesc("portlife_cgroups_unnamed_total",
		"Cgroups whose unit or container could not be resolved.", nil, nil)
	descScrapeErrors = prometheus.NewDesc("portlife_scrape_errors_total",
		"Scrapes that could not read the kernel's counters.", nil, nil)
)

// Collector is the prometheus.Collector of everything above.
type Collector struct {
	counts       *Counts
	src          Sources
	scrapeErrors atomic.Uint64 // scrapes may run at once
}

// NewRegistry returns a registry with portlife's metrics, its build info,
// and the Go runtime's and the process's (CPU, memory, descriptors). It is
// portlife's own: nothing registers into the global default.
func NewRegistry(c *Counts, src Sources, build BuildInfo) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(&Collector{counts: c, src: src})
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "portlife_build_info",
		Help:        "A constant 1, labelled with the version, the commit and the Go version portlife was built with.",
		ConstLabels: prometheus.Labels{"version": build.Version, "revision": build.Revision, "goversion": build.GoVersion},
	}, func() float64 { return 1 }))
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descOpened, descClosed, descFailed, descLifetime, descTimeWait, descEvents, descLost, descConsumerFailed, descSinkSent, descSinkQueued, descSinkDropped, descSinkReconnects, descSkipped, descUnnamed, descScrapeErrors} {
		ch <- d
	}
}

func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := c.counts.snapshot()
	for p, proto := range protos {
		for d, dir := range directions {
			lv := []string{proto.String(), dir.String()}
			ch <- prometheus.MustNewConstMetric(descOpened, prometheus.CounterValue, float64(s.opened[p][d]), lv...)
			ch <- prometheus.MustNewConstMetric(descClosed, prometheus.CounterValue, float64(s.closed[p][d]), lv...)
			h := &s.lifetime[p][d]
			buckets := make(map[float64]uint64, len(LifetimeBuckets))
			var cum uint64
			for i, le := range LifetimeBuckets {
				cum += h.counts[i]
				buckets[le] = cum
			}
			ch <- prometheus.MustNewConstHistogram(descLifetime, h.n, h.sum, buckets, lv...)
		}
	}
	for k, n := range s.failed {
		ch <- prometheus.MustNewConstMetric(descFailed, prometheus.CounterValue, float64(n), protos[k.proto].String(), directions[k.dir].String(), k.reason)
	}
	for d, dir := range directions {
		ch <- prometheus.MustNewConstMetric(descTimeWait, prometheus.CounterValue, float64(s.timeWait[d]), dir.String())
	}
	if c.src.Kernel != nil {
		k, err := c.src.Kernel()
		if err != nil {
			c.scrapeErrors.Add(1)
		}
		ch <- prometheus.MustNewConstMetric(descEvents, prometheus.CounterValue, float64(k.Events))
		for _, l := range []struct {
			source string
			n      uint64
		}{{"ringbuf_full", k.RingbufFull}, {"storage_full", k.StorageFull}, {"table_full", k.TableFull}, {"not_adopted", k.NotAdopted}} {
			ch <- prometheus.MustNewConstMetric(descLost, prometheus.CounterValue, float64(l.n), l.source)
		}
		ch <- prometheus.MustNewConstMetric(descSkipped, prometheus.CounterValue, float64(k.SkippedRuns))
		ch <- prometheus.MustNewConstMetric(descUnnamed, prometheus.CounterValue, float64(k.Unnamed))
		ch <- prometheus.MustNewConstMetric(descScrapeErrors, prometheus.CounterValue, float64(c.scrapeErrors.Load()))
	}
	if c.src.Consumers != nil {
		for _, cs := range c.src.Consumers() {
			ch <- prometheus.MustNewConstMetric(descLost, prometheus.CounterValue, float64(cs.Dropped), "queue_"+cs.Name)
			ch <- prometheus.MustNewConstMetric(descConsumerFailed, prometheus.CounterValue, float64(cs.Failed), cs.Name)
		}
	}
	if c.src.Sinks != nil {
		for _, ss := range c.src.Sinks() {
			var lost uint64
			for reason, n := range ss.Dropped {
				lost += n
				ch <- prometheus.MustNewConstMetric(descSinkDropped, prometheus.CounterValue, float64(n), ss.Name, reason)
			}
			ch <- prometheus.MustNewConstMetric(descLost, prometheus.CounterValue, float64(lost), "sink_"+ss.Name)
			ch <- prometheus.MustNewConstMetric(descSinkSent, prometheus.CounterValue, float64(ss.Sent), ss.Name)
			ch <- prometheus.MustNewConstMetric(descSinkQueued, prometheus.GaugeValue, float64(ss.Queued), ss.Name)
			ch <- prometheus.MustNewConstMetric(descSinkReconnects, prometheus.CounterValue, float64(ss.Reconnects), ss.Name)
		}
	}
}
