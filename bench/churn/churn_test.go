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
		persistent  bool
	}{
		{"tcp full speed", "tcp", 0, false, false},
		{"tcp paced", "tcp", 200, false, false},
		{"tcp server closes first", "tcp", 0, true, false},
		{"udp", "udp", 0, false, false},
		{"tcp persistent round trips", "tcp", 0, false, true},
		{"udp persistent round trips", "udp", 0, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sf := serverFlags{addr: "127.0.0.1:0", proto: tt.proto, handlers: 8, bufSize: 4096, noDelay: tt.persistent}
			cf := clientFlags{proto: tt.proto, workers: 2, duration: 200 * time.Millisecond, rate: tt.rate,
				size: 100, timeout: time.Second, sources: 2, waitEOF: tt.activeClose, persistent: tt.persistent}
			if tt.persistent {
				cf.size = 64
			}
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
			served := int64(n)
			if tt.persistent {
				// One connection per worker for the whole run, each doing
				// many round trips: the UDP server counts echoes, the TCP
				// server connections.
				if n != cf.workers {
					t.Errorf("persistent: %d connections for %d workers", n, cf.workers)
				}
				if res.roundTrips() < int64(10*cf.workers) {
					t.Errorf("persistent: %d round trips in %v", res.roundTrips(), cf.duration)
				}
				if tt.proto == "udp" {
					served = res.roundTrips()
				}
			} else if res.roundTrips() != 0 {
				t.Errorf("churn counted %d round trips", res.roundTrips())
			}
			if got := srv.served.Load(); got < served {
				t.Errorf("server served %d, client completed %d", got, served)
			}

			cf.truth = filepath.Join(t.TempDir(), "truth.bin")
			if err := res.writeTruth(cf, srv.addr); err != nil {
				t.Fatal(err)
			}
			h, ports, err := truth.ReadFile(cf.truth)
			if err != nil {
				t.Fatal(err)
			}
			if h.Conns != n || len(ports) != n || h.Sources != 2 || h.Proto != tt.proto || h.RoundTrips != res.roundTrips() {
				t.Errorf("header %+v with %d ports, want %d conns, %d round trips", h, len(ports), n, res.roundTrips())
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
