package summary

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/portlife/portlife/internal/event"
)

// The buckets reach a day: its unclamped index fits, and reads back within
// the error.
func TestSketchRange(t *testing.T) {
	i := int(math.Ceil(math.Log(float64(sketchMax)/float64(sketchMin)) / logGamma))
	if i >= sketchBuckets {
		t.Fatalf("a day falls in bucket %d, beyond the %d buckets", i, sketchBuckets)
	}
	if got := value(bucket(sketchMax)); math.Abs(float64(got-sketchMax)) > event.LifetimeError*float64(sketchMax) {
		t.Errorf("a day reads as %v", got)
	}
}

// For lifetimes drawn from several shapes, each percentile is within the
// stated relative error of the exact value of the same rank.
func TestSketchQuantilesWithinError(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, tt := range []struct {
		name string
		draw func() time.Duration
	}{
		{"uniform 1ms-1s", func() time.Duration { return time.Millisecond + time.Duration(r.Int64N(int64(time.Second))) }},
		{"log-uniform 2µs-1h", func() time.Duration {
			return time.Duration(float64(2*time.Microsecond) * math.Pow(1.8e9, r.Float64()))
		}},
		{"two modes", func() time.Duration {
			if r.IntN(10) < 9 {
				return 500*time.Microsecond + time.Duration(r.IntN(1000))
			}
			return 30*time.Second + time.Duration(r.Int64N(int64(time.Second)))
		}},
		{"one value", func() time.Duration { return 1234567 * time.Nanosecond }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for _, n := range []int{1, 2, 7, 100, 10000} {
				var s Sketch
				vals := make([]time.Duration, n)
				for i := range vals {
					vals[i] = tt.draw()
					s.Add(vals[i])
				}
				slices.Sort(vals)
				for _, q := range []float64{0, 0.5, 0.9, 0.99, 1} {
					exact := vals[int(q*float64(n-1))]
					got := s.Quantile(q)
					if diff := abs(got - exact); float64(diff) > event.LifetimeError*float64(exact) {
						t.Errorf("n=%d q=%v: %v, exact %v: off by %.3f%%", n, q, got, exact, 100*float64(diff)/float64(exact))
					}
				}
			}
		})
	}
}

func TestSketchMerge(t *testing.T) {
	var a, b, all Sketch
	for i := 1; i <= 1000; i++ {
		d := time.Duration(i) * time.Millisecond
		all.Add(d)
		if i%3 == 0 {
			a.Add(d)
		} else {
			b.Add(d)
		}
	}
	a.Merge(&b)
	if a != all {
		t.Error("merging two sketches differs from adding to one")
	}
	if n := testing.AllocsPerRun(100, func() { a.Add(time.Second) }); n != 0 {
		t.Errorf("Add allocates %v times", n)
	}
}

func abs(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}
