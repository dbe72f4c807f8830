package truth

import (
	"bytes"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	tests := []struct {
		name  string
		ports [][]uint16
	}{
		{"empty", nil},
		{"one worker", [][]uint16{{32768, 32770, 60999}}},
		{"several workers, reused and extreme ports", [][]uint16{{1, 65535}, {}, {40000, 40000, 40000}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			h := Header{PID: 42, Proto: "tcp", Conns: 999, Seconds: 1.5, Rate: 5000, Errors: 3,
				RoundTrips: 1 << 33, Size: 64, ErrorKinds: map[string]int{"EADDRNOTAVAIL": 3}}
			if err := Write(&buf, h, tt.ports); err != nil {
				t.Fatal(err)
			}
			got, ports, err := Read(&buf)
			if err != nil {
				t.Fatal(err)
			}
			want := slices.Concat(tt.ports...)
			if !slices.Equal(ports, want) && len(want)+len(ports) > 0 {
				t.Errorf("ports = %v, want %v", ports, want)
			}
			if got.Conns != len(want) {
				t.Errorf("Conns = %d, want %d (Write must overwrite it)", got.Conns, len(want))
			}
			if got.PID != 42 || got.Proto != "tcp" || got.Seconds != 1.5 || got.Rate != 5000 || got.Errors != 3 ||
				got.RoundTrips != 1<<33 || got.Size != 64 {
				t.Errorf("header = %+v", got)
			}
		})
	}
}

func TestWriteFileReadFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "truth.bin")
	if err := WriteFile(path, Header{PID: 7, Proto: "udp"}, [][]uint16{{5, 6}}); err != nil {
		t.Fatal(err)
	}
	h, ports, err := ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if h.PID != 7 || !slices.Equal(ports, []uint16{5, 6}) {
		t.Errorf("got %+v %v", h, ports)
	}
}

func TestReadRejectsBadFiles(t *testing.T) {
	tests := []struct {
		name, data, wantErr string
	}{
		{"no header line", `{"pid":1}`, "no header line"},
		{"bad json", "{\n", "decode truth header"},
		{"unknown format", `{"conns":0,"format":"text"}` + "\n", "format"},
		{"truncated body", `{"conns":2,"format":"u16le"}` + "\n\x01\x00\x02", "3 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := Read(strings.NewReader(tt.data))
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("err = %v, want it to mention %q", err, tt.wantErr)
			}
		})
	}
}
