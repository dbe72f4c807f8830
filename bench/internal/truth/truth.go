// Package truth reads and writes the ground-truth file the churn client
// leaves behind: which local ports its completed connections used, so a
// benchmark runner can check a tracer's output against what really happened.
//
// File format (chosen to stay small at several hundred thousand connections):
//
//	line 1: a JSON Header terminated by '\n'
//	rest:   Header.Conns little-endian uint16 local ports, 2 bytes each,
//	        concatenated per worker in completion order
//
// Order carries no meaning for matching (ports are reused many times within
// a run, so consumers compare per-port counts), but keeping the raw list
// costs only 2 bytes per connection and makes the file easy to inspect with
// `tail -c +N | od -An -tu2`.
package truth

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
)

// PortFormat names the body encoding so a future format change is detectable.
const PortFormat = "u16le"

// Header is the first line of a truth file.
type Header struct {
	PID     int     `json:"pid"`
	Proto   string  `json:"proto"`
	Conns   int     `json:"conns"`
	Seconds float64 `json:"seconds"`
	Rate    float64 `json:"rate"`
	Errors  int     `json:"errors"`
	// RoundTrips is the echoes done over the run's connections when the
	// client ran --persistent (the data path, no churn), with Size bytes
	// each way; 0 for churn.
	RoundTrips int64 `json:"round_trips,omitempty"`
	Size       int   `json:"size,omitempty"`
	// Fields below are diagnostics; readers must not rely on them.
	Workers    int            `json:"workers,omitempty"`
	Sources    int            `json:"sources,omitempty"`
	Target     string         `json:"target,omitempty"`
	ErrorKinds map[string]int `json:"error_kinds,omitempty"`
	Format     string         `json:"format"`
}

// Write stores h and the ports. h.Conns is overwritten with the port count so
// header and body cannot disagree.
func Write(w io.Writer, h Header, ports [][]uint16) error {
	n := 0
	for _, p := range ports {
		n += len(p)
	}
	h.Conns = n
	h.Format = PortFormat
	line, err := json.Marshal(h)
	if err != nil {
		return fmt.Errorf("encode truth header: %w", err)
	}
	bw := bufio.NewWriterSize(w, 1<<16)
	bw.Write(line)
	bw.WriteByte('\n')
	var b [2]byte
	for _, chunk := range ports {
		for _, p := range chunk {
			binary.LittleEndian.PutUint16(b[:], p)
			bw.Write(b[:])
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write truth file: %w", err)
	}
	return nil
}

// WriteFile writes the truth file via a temporary name and a rename, so a
// reader never sees a half-written file.
func WriteFile(path string, h Header, ports [][]uint16) error {
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("create truth file: %w", err)
	}
	if err := Write(f, h, ports); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close truth file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename truth file: %w", err)
	}
	return nil
}

// Read parses a truth file.
func Read(r io.Reader) (Header, []uint16, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return Header{}, nil, fmt.Errorf("read truth file: %w", err)
	}
	nl := bytes.IndexByte(data, '\n')
	if nl < 0 {
		return Header{}, nil, errors.New("truth file has no header line")
	}
	var h Header
	if err := json.Unmarshal(data[:nl], &h); err != nil {
		return Header{}, nil, fmt.Errorf("decode truth header: %w", err)
	}
	if h.Format != PortFormat {
		return h, nil, fmt.Errorf("truth file format %q, want %q", h.Format, PortFormat)
	}
	body := data[nl+1:]
	if len(body) != 2*h.Conns {
		return h, nil, fmt.Errorf("truth file body has %d bytes, header says %d ports", len(body), h.Conns)
	}
	ports := make([]uint16, h.Conns)
	for i := range ports {
		ports[i] = binary.LittleEndian.Uint16(body[2*i:])
	}
	return h, ports, nil
}

// ReadFile is Read on a named file.
func ReadFile(path string) (Header, []uint16, error) {
	f, err := os.Open(path)
	if err != nil {
		return Header{}, nil, fmt.Errorf("open truth file: %w", err)
	}
	defer f.Close()
	return Read(f)
}
