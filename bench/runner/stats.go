package main

import (
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
)

// metric is a measurement that may be unavailable (NaN), e.g. BPF time for
// the "none" tracer. It encodes as null in JSON because JSON has no NaN.
type metric float64

var na = metric(math.NaN())

func (m metric) valid() bool { return !math.IsNaN(float64(m)) }

func (m metric) MarshalJSON() ([]byte, error) {
	if !m.valid() || math.IsInf(float64(m), 0) {
		return []byte("null"), nil
	}
	return strconv.AppendFloat(nil, float64(m), 'g', -1, 64), nil
}

func (m *metric) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*m = na
		return nil
	}
	f, err := strconv.ParseFloat(string(b), 64)
	*m = metric(f)
	return err
}

func ratio(num, den float64) metric {
	if den == 0 || math.IsNaN(num) || math.IsNaN(den) {
		return na
	}
	return metric(num / den)
}

// summary is min, median and max over the valid values of several runs.
type summary struct {
	min, med, max float64
	n             int
}

func summarize(vals []metric) summary {
	var v []float64
	for _, m := range vals {
		if m.valid() {
			v = append(v, float64(m))
		}
	}
	if len(v) == 0 {
		return summary{}
	}
	slices.Sort(v)
	return summary{min: v[0], med: median(v), max: v[len(v)-1], n: len(v)}
}

// median of sorted values; the mean of the middle two for even counts.
func median(sorted []float64) float64 {
	n := len(sorted)
	if n == 0 {
		return math.NaN()
	}
	if n%2 == 1 {
		return sorted[n/2]
	}
	return (sorted[n/2-1] + sorted[n/2]) / 2
}

// format prints "med" for a single value or identical values, and
// "min/med/max" otherwise. Missing data prints as "-".
func (s summary) format(prec int) string {
	if s.n == 0 {
		return "-"
	}
	f := func(x float64) string { return strconv.FormatFloat(x, 'f', prec, 64) }
	if s.n == 1 || f(s.min) == f(s.max) {
		return f(s.med)
	}
	return f(s.min) + "/" + f(s.med) + "/" + f(s.max)
}

// column is one table column: a heading, a value getter and its precision.
type column struct {
	head string
	get  func(*runResult) metric
	prec int
}

var columns = []column{
	{"conn/s", func(r *runResult) metric { return r.ConnRate }, 0},
	{"vs none", func(r *runResult) metric { return r.RatioVsNone }, 3},
	{"CPU s/100k", func(r *runResult) metric { return r.CPUPer100k }, 2},
	{"RSS MiB", func(r *runResult) metric { return r.PeakRSSMiB }, 1},
	{"BPF µs/conn", func(r *runResult) metric { return r.BPFUsPerConn }, 2},
	{"ns/run", func(r *runResult) metric { return r.BPFNsPerRun }, 0},
	{"client %", func(r *runResult) metric { return r.ClientPct }, 2},
	{"server %", func(r *runResult) metric { return r.ServerPct }, 2},
	{"lost", func(r *runResult) metric { return r.Lost }, 0},
	{"errors", func(r *runResult) metric { return metric(r.ClientErrors) }, 0},
}

// outputColumns are the second table's, for the tracers with an extra
// output (a sink or the store).
var outputColumns = []column{
	{"records", func(r *runResult) metric { return r.OutRecords }, 0},
	{"rec/s", func(r *runResult) metric { return r.OutRecPerSec }, 0},
	{"MB", func(r *runResult) metric { return r.OutMB }, 1},
	{"MB/s", func(r *runResult) metric { return r.OutMBPerSec }, 2},
	{"sent", func(r *runResult) metric { return r.OutSent }, 0},
	{"dropped", func(r *runResult) metric { return r.OutDropped }, 0},
	{"B/lifetime", func(r *runResult) metric { return r.StoreBytesPerLifetime }, 0},
}

// dataPathColumns are the data path's: round trips, and the tracer's costs
// per round trip.
var dataPathColumns = []column{
	{"rt/s", func(r *runResult) metric { return r.RTRate }, 0},
	{"vs none", func(r *runResult) metric { return r.RatioVsNone }, 3},
	{"CPU s/1M rt", func(r *runResult) metric { return r.CPUPer1MRT }, 3},
	{"RSS MiB", func(r *runResult) metric { return r.PeakRSSMiB }, 1},
	{"BPF ns/rt", func(r *runResult) metric { return r.BPFNsPerRT }, 0},
	{"runs/rt", func(r *runResult) metric { return r.BPFRunsPerRT }, 2},
	{"ns/run", func(r *runResult) metric { return r.BPFNsPerRun }, 0},
	{"client %", func(r *runResult) metric { return r.ClientPct }, 2},
	{"server %", func(r *runResult) metric { return r.ServerPct }, 2},
	{"lost", func(r *runResult) metric { return r.Lost }, 0},
	{"errors", func(r *runResult) metric { return metric(r.ClientErrors) }, 0},
}

// printTable writes one row per configuration × tracer, in the order the
// combinations were first run: the churn configurations, then the data
// path's in a table of their own, per round trip; then, if any tracer had
// an extra output, one row for each of those in a table of what reached
// the output.
func printTable(w io.Writer, results []*runResult) {
	var churn, dataPath, outs []*resultGroup
	for _, g := range groupResults(results) {
		if g.runs[0].DataPath {
			dataPath = append(dataPath, g)
		} else {
			churn = append(churn, g)
		}
		if outputs[g.tracer] != nil {
			outs = append(outs, g)
		}
	}
	if len(churn) > 0 {
		writeTable(w, churn, columns)
	}
	if len(dataPath) > 0 {
		if len(churn) > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintln(w, "data path (persistent connections, round trips; no churn):")
		writeTable(w, dataPath, dataPathColumns)
	}
	if len(outs) > 0 {
		fmt.Fprintln(w, "\noutputs:")
		writeTable(w, outs, outputColumns)
	}
	writeHooks(w, groupResults(results))
}

// writeHooks breaks the BPF time down by program, where bpf_stats counted
// it: each program's runs per connection (or per round trip on the data
// path) and its time per run, medians over the runs.
func writeHooks(w io.Writer, groups []*resultGroup) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	header := false
	for _, g := range groups {
		names := map[string]bool{}
		for _, r := range g.runs {
			for name := range r.Hooks {
				names[name] = true
			}
		}
		for _, name := range slices.Sorted(maps.Keys(names)) {
			var perUnit, nsPerRun []metric
			for _, r := range g.runs {
				h := r.Hooks[name]
				unit := float64(r.Conns)
				if r.DataPath {
					unit = float64(r.RoundTrips)
				}
				perUnit = append(perUnit, ratio(float64(h.Runs), unit))
				nsPerRun = append(nsPerRun, ratio(float64(h.RunTimeNs), float64(h.Runs)))
			}
			if !header {
				fmt.Fprintln(w, "\nhooks (bpf_stats; runs per connection, or per round trip on the data path):")
				fmt.Fprintln(tw, "config\ttracer\tprogram\truns/unit\tns/run\t")
				header = true
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t\n", g.config, g.tracer, name, summarize(perUnit).format(2), summarize(nsPerRun).format(0))
		}
	}
	tw.Flush()
}

func writeTable(w io.Writer, groups []*resultGroup, columns []column) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	heads := []string{"config", "tracer", "runs"}
	for _, c := range columns {
		heads = append(heads, c.head)
	}
	fmt.Fprintln(tw, strings.Join(heads, "\t")+"\t")
	for _, g := range groups {
		cells := []string{g.config, g.tracer, strconv.Itoa(len(g.runs))}
		for _, c := range columns {
			vals := make([]metric, 0, len(g.runs))
			for _, r := range g.runs {
				vals = append(vals, c.get(r))
			}
			cells = append(cells, summarize(vals).format(c.prec))
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t")+"\t")
	}
	tw.Flush()
}

type resultGroup struct {
	config, tracer string
	runs           []*runResult
}

func groupResults(results []*runResult) []*resultGroup {
	var groups []*resultGroup
	index := map[[2]string]*resultGroup{}
	for _, r := range results {
		k := [2]string{r.Config, r.Tracer}
		g := index[k]
		if g == nil {
			g = &resultGroup{config: r.Config, tracer: r.Tracer}
			index[k] = g
			groups = append(groups, g)
		}
		g.runs = append(g.runs, r)
	}
	return groups
}

// fillRatios sets each run's rate (connections, or round trips on the data
// path) relative to the median rate of the "none" runs of its
// configuration, once all runs are in.
func fillRatios(results []*runResult) {
	base := map[string][]metric{}
	for _, r := range results {
		if r.Tracer == "none" && r.Err == "" {
			base[r.Config] = append(base[r.Config], r.rate())
		}
	}
	for _, r := range results {
		s := summarize(base[r.Config])
		if s.n == 0 || !r.rate().valid() {
			r.RatioVsNone = na
			continue
		}
		r.RatioVsNone = ratio(float64(r.rate()), s.med)
	}
}
