// Package sinktest holds the receivers the sink tests start themselves: a
// TCP (or TLS) server that keeps every byte it is sent, one that accepts
// and never reads, and a test certificate authority.
package sinktest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// Receiver accepts connections on loopback and keeps what each sends, in
// order of connection.
type Receiver struct {
	ln   net.Listener
	mu   sync.Mutex
	got  []*bytes.Buffer
	wg   sync.WaitGroup
	read chan struct{} // closed: read what is sent; open: stall
	// stallFirst: only the first connection waits for read; the others
	// are read at once.
	stallFirst bool
}

// Listen starts a receiver on 127.0.0.1, over TLS if cfg is not nil. A
// stalled one accepts connections and never reads them until Resume.
func Listen(t testing.TB, cfg *tls.Config, stalled bool) *Receiver {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return Serve(t, ln, cfg, stalled)
}

// StallFirst starts a receiver that never reads its first connection until
// Resume (a receiver that hung), and reads every later one at once.
func StallFirst(t testing.TB) *Receiver {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serve(t, ln, nil, true, true)
}

// Serve is Listen on a listener of the caller's.
func Serve(t testing.TB, ln net.Listener, cfg *tls.Config, stalled bool) *Receiver {
	return serve(t, ln, cfg, stalled, false)
}

func serve(t testing.TB, ln net.Listener, cfg *tls.Config, stalled, stallFirst bool) *Receiver {
	if cfg != nil {
		ln = tls.NewListener(ln, cfg)
	}
	r := &Receiver{ln: ln, read: make(chan struct{}), stallFirst: stallFirst}
	if !stalled {
		close(r.read)
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			buf := &bytes.Buffer{}
			r.mu.Lock()
			r.got = append(r.got, buf)
			wait := !r.stallFirst || len(r.got) == 1
			r.mu.Unlock()
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				defer c.Close()
				if wait {
					<-r.read
				}
				b := make([]byte, 64<<10)
				for {
					n, err := c.Read(b)
					r.mu.Lock()
					buf.Write(b[:n])
					r.mu.Unlock()
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() { r.Close() })
	return r
}

// Addr is host:port.
func (r *Receiver) Addr() string { return r.ln.Addr().String() }

// Resume starts reading a stalled receiver's connections.
func (r *Receiver) Resume() {
	select {
	case <-r.read:
	default:
		close(r.read)
	}
}

// Close stops accepting; Bytes then waits for the open connections to end.
func (r *Receiver) Close() { r.ln.Close() }

// Conns is how many connections were accepted.
func (r *Receiver) Conns() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got)
}

// Bytes waits for every connection to be closed by its sender, then
// returns what they sent, connection after connection.
func (r *Receiver) Bytes() []byte {
	var all []byte
	for _, b := range r.PerConn() {
		all = append(all, b...)
	}
	return all
}

// PerConn is Bytes, connection by connection.
func (r *Receiver) PerConn() [][]byte {
	r.Resume()
	r.Close()
	r.wg.Wait()
	out := make([][]byte, len(r.got))
	for i, b := range r.got {
		out[i] = b.Bytes()
	}
	return out
}

// CA is a test certificate authority and a server certificate it signed
// for 127.0.0.1 and localhost.
type CA struct {
	File   string      // the CA's certificate, PEM, for the client
	Server *tls.Config // the server's
}

// NewCA makes a CA in t's temporary directory.
func NewCA(t testing.TB) CA {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "portlife test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644); err != nil {
		t.Fatal(err)
	}
	return CA{File: file, Server: &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{srvDER}, PrivateKey: srvKey}}}}
}
