package kerneltest

import (
	"net"
	"net/netip"
	"sync"
	"testing"
)

// ChurnServer is a TCP listener on 127.0.0.1 that closes each connection
// as soon as it accepts it: the far end of a churn of short connections.
type ChurnServer struct {
	ln   net.Listener
	Addr netip.AddrPort
}

// NewChurnServer starts one, in the calling thread's network namespace; it
// stops when the test ends.
func NewChurnServer(t testing.TB) *ChurnServer {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listening on loopback: %v", err)
	}
	s := &ChurnServer{ln: ln, Addr: ln.Addr().(*net.TCPAddr).AddrPort()}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return // closed
			}
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return s
}

// Churn makes n connections to the server, one after another, each closed
// as soon as it is made, and returns the local address of the last.
func (s *ChurnServer) Churn(n int) (netip.AddrPort, error) {
	var last netip.AddrPort
	for range n {
		c, err := net.Dial("tcp4", s.Addr.String())
		if err != nil {
			return last, err
		}
		last = c.LocalAddr().(*net.TCPAddr).AddrPort()
		c.Close()
	}
	return last, nil
}
