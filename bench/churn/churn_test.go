package main

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/portlife/portlife/bench/internal/truth"
)

// TestChurnLoopback runs server and client in-process on loopback for a
// moment and checks that the truth file records real, distinct-enough ports.
func TestChurnLoopback(t *testing.T) {
	tests := []struct {
		name        string
		proto       string
		rate        float64
		activeClose bool
	}{
		{"tcp full speed", "tcp", 0, false},
		{"tcp paced", "tcp", 200, false},
		{"tcp server closes first", "tcp", 0, true},
		{"udp", "udp", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sf := serverFlags{addr: "127.0.0.1:0", proto: tt.proto, handlers: 8, bufSize: 4096}
			cf := clientFlags{proto: tt.proto, workers: 2, duration: 200 * time.Millisecond, rate: tt.rate,
				size: 100, timeout: time.Second, sources: 2, waitEOF: tt.activeClose}
			if tt.activeClose {
				sf.activeClose = cf.size
			}
			srv, err := startServer(sf)
			if err != nil {
				t.Fatal(err)
			}
			res := runClient(cf, srv.addr)
			if res.errors() != 0 {
				t.Errorf("errors: %v", res.errorKinds())
			}
			n := res.conns()
			if n == 0 {
				t.Fatal("no connections completed")
			}
			if tt.rate > 0 {
				// 200/s for 0.2 s is 40; allow for timer slack, not for no pacing.
				if n < 20 || n > 60 {
					t.Errorf("paced at %v/s for %v: %d conns", tt.rate, cf.duration, n)
				}
			}
			// The server counts after its close, which may trail the
			// client's last completion a little.
			time.Sleep(50 * time.Millisecond)
			if got := srv.served.Load(); got < int64(n) {
				t.Errorf("server served %d, client completed %d", got, n)
			}

			cf.truth = filepath.Join(t.TempDir(), "truth.bin")
			if err := res.writeTruth(cf, srv.addr); err != nil {
				t.Fatal(err)
			}
			h, ports, err := truth.ReadFile(cf.truth)
			if err != nil {
				t.Fatal(err)
			}
			if h.Conns != n || len(ports) != n || h.Sources != 2 || h.Proto != tt.proto {
				t.Errorf("header %+v with %d ports, want %d conns", h, len(ports), n)
			}
			for _, p := range ports {
				// UDP may legitimately reuse the server's port number on
				// another loopback address; TCP's connect() never does.
				if p == 0 || (tt.proto == "tcp" && p == srv.addr.Port()) {
					t.Fatalf("implausible local port %d", p)
				}
			}
		})
	}
}
