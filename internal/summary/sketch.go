package summary

import (
	"math"
	"time"

	"github.com/portlife/portlife/internal/event"
)

// Sketch estimates lifetime percentiles in fixed memory, with a relative
// error of at most event.LifetimeError for lifetimes from 1 µs to a day:
// the buckets are logarithmic, each (γ^(i-1), γ^i] µs wide with
// γ = (1+α)/(1-α), and a bucket reports the value whose distance to both its
// ends is α of it (DDSketch's mapping, in a dense array). Lifetimes under
// 1 µs read as 1 µs, over a day as a day. Sketches merge exactly, so the
// `other` row's percentiles are as good as any row's. Adding allocates
// nothing.
type Sketch struct {
	counts [sketchBuckets]uint32
	n      uint64
}

const (
	sketchMin = time.Microsecond
	sketchMax = 24 * time.Hour
	// sketchBuckets covers sketchMin to sketchMax: log(8.64e10)/log(γ) is
	// 629.2 for α = 0.02 (TestSketchRange checks it).
	sketchBuckets = 631
)

var (
	gamma    = (1 + event.LifetimeError) / (1 - event.LifetimeError)
	logGamma = math.Log(gamma)
)

func bucket(d time.Duration) int {
	if d <= sketchMin {
		return 0
	}
	i := int(math.Ceil(math.Log(float64(d)/float64(sketchMin)) / logGamma))
	return min(i, sketchBuckets-1)
}

// value is the estimate bucket i reports.
func value(i int) time.Duration {
	if i == 0 {
		return sketchMin
	}
	return time.Duration(float64(sketchMin) * 2 * math.Pow(gamma, float64(i)) / (gamma + 1))
}

// Add counts one lifetime.
func (s *Sketch) Add(d time.Duration) {
	s.counts[bucket(d)]++
	s.n++
}

// Merge adds o's counts to s.
func (s *Sketch) Merge(o *Sketch) {
	for i, c := range o.counts {
		s.counts[i] += c
	}
	s.n += o.n
}

// Count is how many lifetimes were added.
func (s *Sketch) Count() uint64 { return s.n }

// Quantile estimates the q-quantile (0 ≤ q ≤ 1): the lifetime of rank
// ⌊q·(n-1)⌋ among the n added, in increasing order. 0 if none was added.
func (s *Sketch) Quantile(q float64) time.Duration {
	if s.n == 0 {
		return 0
	}
	rank := uint64(q * float64(s.n-1))
	var seen uint64
	for i, c := range s.counts {
		seen += uint64(c)
		if seen > rank {
			return value(i)
		}
	}
	return value(sketchBuckets - 1)
}

// Reset empties s for the next interval.
func (s *Sketch) Reset() { *s = Sketch{} }
