package encode

import (
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/portlife/portlife/internal/event"
)

// released is the released event of tcpClose's connection, had it closed
// first: 60.5s in TIME_WAIT.
func released(how event.Release) event.Event {
	e := tcpClose()
	e.Kind, e.Release = event.KindReleased, how
	e.Start = e.Time
	e.Time = e.Start.Add(60500 * time.Millisecond)
	e.Established, e.TxBytes, e.RxBytes = time.Time{}, 0, 0
	return e
}

func TestReleasedJSON(t *testing.T) {
	for _, how := range []event.Release{event.ReleaseExpired, event.ReleaseReused, event.ReleaseKilled, event.ReleaseOverflow} {
		t.Run(how.String(), func(t *testing.T) {
			e := released(how)
			got := decodeJSONLine(t, encodeJSON(t, &e))
			gotKeys := make([]string, 0, len(got))
			for k := range got {
				gotKeys = append(gotKeys, k)
			}
			slices.Sort(gotKeys)
			if want := keys("start", "time_wait_ms", "release"); !slices.Equal(gotKeys, want) {
				t.Errorf("keys:\n got  %v\n want %v", gotKeys, want)
			}
			want := map[string]any{
				"event":        "released",
				"ts":           "2024-03-05T11:01:03.123459289Z",
				"start":        "2024-03-05T11:00:02.623459289Z",
				"time_wait_ms": num("60500"),
				"release":      how.String(),
			}
			for k, w := range want {
				if !reflect.DeepEqual(got[k], w) {
					t.Errorf("%s = %#v, want %#v", k, got[k], w)
				}
			}
		})
	}
}

func TestReleasedText(t *testing.T) {
	lines := textLines(t, released(event.ReleaseReused))
	cols := columnStarts(lines[0])
	r := []rune(lines[1])
	if got, want := string(r[cols["NOTES"]:]), "release=reused"; got != want {
		t.Errorf("notes = %q, want %q\n%s\n%s", got, want, lines[0], lines[1])
	}
	if got := strings.TrimSpace(string(r[cols["EVENT"]:cols["PROTO"]])); got != "released" {
		t.Errorf("event column = %q, want released\n%s\n%s", got, lines[0], lines[1])
	}
}

// A release comes for most TCP closes on a busy client: it must cost no
// allocation, like the kernel's kinds.
func TestReleasedEncodesWithoutAllocating(t *testing.T) {
	e := released(event.ReleaseExpired)
	var (
		j   JSON
		w   Text
		buf []byte
	)
	buf = j.Append(buf, &e)
	buf = w.Append(buf, &e)
	if n := testing.AllocsPerRun(100, func() { buf = j.Append(buf[:0], &e) }); n != 0 {
		t.Errorf("JSON: %v allocations per event, want 0", n)
	}
	if n := testing.AllocsPerRun(100, func() { buf = w.Append(buf[:0], &e) }); n != 0 {
		t.Errorf("text: %v allocations per event, want 0", n)
	}
}
