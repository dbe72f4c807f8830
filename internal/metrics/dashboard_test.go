package metrics

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"
)

// The Grafana dashboard (deploy/grafana/portlife.json) queries only
// metrics portlife serves: a rename here must show there.
func TestDashboardUsesServedMetrics(t *testing.T) {
	data, err := os.ReadFile("../../deploy/grafana/portlife.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("not JSON: %v", err)
	}
	// Every family a registry serves, with a key failure so that the
	// failures' family is there too.
	c := NewCounts()
	ev := events()
	for i := range ev {
		c.Write(&ev[i])
	}
	reg := NewRegistry(c, Sources{
		Kernel:    func() (KernelStats, error) { return KernelStats{}, nil },
		Consumers: func() []ConsumerStats { return []ConsumerStats{{Name: "metrics"}} },
		Ports:     func() PortStats { return PortStats{Top: []PortKey{{Mechanism: "per_destination"}}} },
		Released:  true,
	}, BuildInfo{})
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	served := map[string]bool{}
	for _, f := range families {
		served[f.GetName()] = true
		if f.GetType().String() == "HISTOGRAM" {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				served[f.GetName()+s] = true
			}
		}
	}
	name := regexp.MustCompile(`\b(portlife|process|go)_[a-z_]+`)
	n := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, m := range name.FindAllString(tg.Expr, -1) {
				n++
				if !served[m] {
					t.Errorf("panel %q queries %s, which portlife does not serve", p.Title, m)
				}
			}
		}
	}
	if n == 0 || !strings.Contains(string(data), "portlife_connections_failed_total") {
		t.Error("the dashboard queries nothing of portlife's")
	}
}
