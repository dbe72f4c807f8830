package metrics

import (
	"strconv"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/portlife/portlife/internal/event"
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

// TopKeys bounds the port keys with pressure series of their own: the most
// pressed, at each scrape. It is the only place an address is a label, so
// the series stay bounded however many destinations there are.
const TopKeys = 20

// PortKey is one port key of accounting's (ports.KeyUsage), as labels and
// values.
type PortKey struct {
	Mechanism   string // per_destination, bind_pool, udp
	NetNS       uint32
	Local       string // the local address; the wildcard for a bind pool
	Destination string // per_destination: the remote address and port; else ""
	Used        int
	Capacity    int
	Ratio       float64
}

// PortStats is port accounting's state, read at scrape time.
type PortStats struct {
	Top                         []PortKey // the TopKeys most pressed keys; more are cut
	Keys                        int       // keys tracked
	Sockets                     int       // sockets tracked
	KeysLeftOut, SocketsLeftOut uint64
}

// Sources are read at each scrape; each func may be nil.
type Sources struct {
	Kernel    func() (KernelStats, error)
	Consumers func() []ConsumerStats
	Sinks     func() []SinkStats
	Ports     func() PortStats // nil: port accounting is off
	// Released says released events come (--released): only then is
	// portlife_time_wait_released_total exposed, rather than zeros that
	// would read as "nothing was released".
	Released bool
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
	descReleased = prometheus.NewDesc("portlife_time_wait_released_total",
		"TIME_WAITs that ended (released events, with --released), by how: expired, reused, killed, overflow.", []string{"how"}, nil)
	descBBC = prometheus.NewDesc("portlife_connections_bind_before_connect_total",
		"TCP connections opened whose socket took its port with bind() to port 0 before connect(), so from the bind pool every destination shares; of portlife_connections_opened_total.", labelsPD, nil)
	labelsKey    = []string{"mechanism", "netns", "local", "destination"}
	descPressure = prometheus.NewDesc("portlife_port_pressure_ratio",
		"Port pressure U/C of the "+strconv.Itoa(TopKeys)+" most pressed port keys (mechanism, network namespace inode, local address, and for per_destination the destination).", labelsKey, nil)
	descPortsUsed = prometheus.NewDesc("portlife_ports_used",
		"Ports of the ephemeral range a port key holds now (U), TIME_WAIT included, for the "+strconv.Itoa(TopKeys)+" most pressed keys.", labelsKey, nil)
	descPortsCapacity = prometheus.NewDesc("portlife_ports_capacity",
		"Ports of the ephemeral range a port key can hold (C), for the "+strconv.Itoa(TopKeys)+" most pressed keys.", labelsKey, nil)
	descPortKeys = prometheus.NewDesc("portlife_port_keys",
		"Port keys port accounting tracks now (bounded by --port-keys).", nil, nil)
	descTrackedSockets = prometheus.NewDesc("portlife_tracked_sockets",
		"Sockets port accounting tracks now: each holds a port of its namespace's ephemeral range, TIME_WAIT included.", nil, nil)
	descLeftOut = prometheus.NewDesc("portlife_port_accounting_left_out_total",
		"Port keys and sockets port accounting could not track (--port-keys or its socket cap was reached), by what.", []string{"what"}, nil)
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
	for _, d := range []*prometheus.Desc{descOpened, descClosed, descFailed, descLifetime, descTimeWait, descReleased, descBBC, descPressure, descPortsUsed, descPortsCapacity, descPortKeys, descTrackedSockets, descLeftOut, descEvents, descLost, descConsumerFailed, descSinkSent, descSinkQueued, descSinkDropped, descSinkReconnects, descSkipped, descUnnamed, descScrapeErrors} {
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
		// The flag is TCP's alone.
		ch <- prometheus.MustNewConstMetric(descBBC, prometheus.CounterValue, float64(s.bbc[d]), event.ProtoTCP.String(), dir.String())
	}
	if c.src.Released {
		for i, how := range releases {
			if how == event.ReleaseUnknown && s.released[i] == 0 {
				continue
			}
			ch <- prometheus.MustNewConstMetric(descReleased, prometheus.CounterValue, float64(s.released[i]), how.String())
		}
	}
	if c.src.Ports != nil {
		collectPorts(ch, c.src.Ports())
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

func collectPorts(ch chan<- prometheus.Metric, p PortStats) {
	for i, k := range p.Top {
		if i == TopKeys {
			break
		}
		lv := []string{k.Mechanism, strconv.FormatUint(uint64(k.NetNS), 10), k.Local, k.Destination}
		ch <- prometheus.MustNewConstMetric(descPressure, prometheus.GaugeValue, k.Ratio, lv...)
		ch <- prometheus.MustNewConstMetric(descPortsUsed, prometheus.GaugeValue, float64(k.Used), lv...)
		ch <- prometheus.MustNewConstMetric(descPortsCapacity, prometheus.GaugeValue, float64(k.Capacity), lv...)
	}
	ch <- prometheus.MustNewConstMetric(descPortKeys, prometheus.GaugeValue, float64(p.Keys))
	ch <- prometheus.MustNewConstMetric(descTrackedSockets, prometheus.GaugeValue, float64(p.Sockets))
	ch <- prometheus.MustNewConstMetric(descLeftOut, prometheus.CounterValue, float64(p.KeysLeftOut), "keys")
	ch <- prometheus.MustNewConstMetric(descLeftOut, prometheus.CounterValue, float64(p.SocketsLeftOut), "sockets")
}
