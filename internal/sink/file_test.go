package sink

import (
	"bufio"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// readLines reads a file's lines, through gzip for .gz, and fails on a
// last line without its newline: a line split by a rotation.
func readLines(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var r io.Reader = f
	if strings.HasSuffix(path, ".gz") {
		zr, err := gzip.NewReader(f)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		r = zr
	}
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 0 && b[len(b)-1] != '\n' {
		t.Fatalf("%s ends within a line", path)
	}
	if len(b) == 0 {
		return nil
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

// Rotation by size keeps the newest files, never passes max_size, and
// neither loses nor splits a line: the kept files, oldest first, hold the
// last events in order.
func TestFileRotatesBySize(t *testing.T) {
	for _, compress := range []bool{false, true} {
		t.Run(fmt.Sprintf("compress=%v", compress), func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "events.json")
			q := "max_size=64KiB&keep=3"
			if compress {
				q += "&compress=gzip"
			}
			spec, err := ParseURL("file:" + path + "?" + q)
			if err != nil {
				t.Fatal(err)
			}
			s, err := openFile(spec)
			if err != nil {
				t.Fatal(err)
			}
			var enc jsonOf
			var want []string
			const n = 2000 // about 10 files of 64KiB
			for i := range n {
				e := testEvent(i)
				want = append(want, strings.TrimSuffix(enc.of(e), "\n"))
				if err := s.Write(e); err != nil {
					t.Fatal(err)
				}
				if i%100 == 0 {
					s.Flush()
				}
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			suffix := ""
			if compress {
				suffix = ".gz"
			}
			var got []string
			for i := 3; i >= 1; i-- {
				name := fmt.Sprintf("%s.%d%s", path, i, suffix)
				if !compress {
					if fi, err := os.Stat(name); err != nil || fi.Size() > 64<<10 {
						t.Fatalf("%s: %v, want at most 64KiB", name, fi)
					}
				}
				got = append(got, readLines(t, name)...)
			}
			got = append(got, readLines(t, path)...)
			if _, err := os.Stat(fmt.Sprintf("%s.4%s", path, suffix)); err == nil {
				t.Error("a fourth rotated file is kept, want keep=3")
			}
			left, _ := filepath.Glob(filepath.Join(dir, "*"))
			if len(left) != 4 {
				t.Errorf("files %v, want the file and 3 rotated", left)
			}
			if len(got) == 0 || len(got) >= n || strings.Join(got, "\n") != strings.Join(want[n-len(got):], "\n") {
				t.Fatalf("the kept files hold %d lines that are not the last events in order", len(got))
			}
			if st := s.Stats(); st.Sent != n || st.Lost() != 0 || st.Queued != 0 {
				t.Errorf("stats %+v, want %d sent and none lost", st, n)
			}
		})
	}
}

// A file is rotated at the first flush after it is max_age old, if it
// holds anything.
func TestFileRotatesByAge(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.json")
	spec, err := ParseURL("file:" + path + "?max_age=1s&keep=2")
	if err != nil {
		t.Fatal(err)
	}
	s, err := openFile(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Write(testEvent(0))
	s.Flush()
	s.opened = time.Now().Add(-time.Second) // as if a second had passed
	s.Write(testEvent(1))
	s.Flush()
	if got := readLines(t, path+".1"); len(got) != 2 {
		t.Errorf("rotated file holds %d lines, want 2", len(got))
	}
	s.opened = time.Now().Add(-time.Second)
	s.Flush() // empty: nothing to rotate
	if _, err := os.Stat(path + ".2"); err == nil {
		t.Error("an empty file was rotated")
	}
}

// Reopen (SIGHUP) starts writing to a new file at PATH after it was moved
// away, as logrotate does.
func TestFileReopen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "events.json")
	spec, err := ParseURL("file:" + path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := openFile(spec)
	if err != nil {
		t.Fatal(err)
	}
	s.Write(testEvent(0))
	s.Flush()
	if err := os.Rename(path, path+".old"); err != nil {
		t.Fatal(err)
	}
	s.Write(testEvent(1)) // buffered: goes to the old file, which it was meant for
	s.Reopen()
	s.Flush()
	s.Write(testEvent(2))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if old, cur := readLines(t, path+".old"), readLines(t, path); len(old) != 2 || len(cur) != 1 {
		t.Errorf("old file %d lines, new %d: want 2 and 1", len(old), len(cur))
	}
}

func TestFileNoAllocation(t *testing.T) {
	spec, err := ParseURL("file:" + filepath.Join(t.TempDir(), "events.json") + "?max_size=0&fsync=never")
	if err != nil {
		t.Fatal(err)
	}
	s, err := openFile(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	e := testEvent(1)
	if n := testing.AllocsPerRun(10000, func() { s.Write(e) }); n != 0 {
		t.Errorf("%v allocations per event, want 0", n)
	}
}

// The read side of a sink's output, line by line.
func scanLines(r io.Reader) []string {
	var out []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out
}
