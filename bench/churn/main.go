// Command churn generates TCP or UDP connection churn on loopback and records
// ground truth (which local ports the completed connections used), so a
// benchmark can check whether a connection tracer saw every connection.
//
//	churn server --addr 127.0.0.1:0 --proto tcp --ready-file F
//	churn client --target 127.0.0.1:PORT --proto tcp --workers 4 --duration 10s --truth F
//	churn both   --proto tcp --workers 4 --duration 10s --truth F
//	churn client --target 127.0.0.1:PORT --proto udp --workers 4 --persistent --size 64 --truth F
//
// --persistent is the data path instead of churn: each worker opens one TCP
// connection or one connected UDP socket and does request/response round
// trips of --size bytes on it as fast as it can until --duration ends, then
// closes it. The truth file then lists those few connections and the round
// trips done.
//
// Server and client are separate processes on purpose: a tracer must
// attribute each side to the right pid. "both" runs them in one process for
// quick manual checks.
//
// The hot paths use blocking raw syscalls instead of the net package: one
// connection is then socket, connect, getsockname, write, read, close with no
// netpoller registration and no allocation, which is what lets two cores
// reach the kernel's churn limit. Because a goroutine blocked in a raw
// syscall keeps its P, GOMAXPROCS is raised to the number of blocking
// goroutines so they never wait for sysmon to hand a P over.
package main

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "server":
		err = runServerCmd(os.Args[2:])
	case "client":
		err = runClientCmd(os.Args[2:])
	case "both":
		err = runBothCmd(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "churn: %v\n", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: churn server|client|both [flags]   (churn <cmd> -h for flags)")
	os.Exit(2)
}

type serverFlags struct {
	addr      string
	proto     string
	readyFile string
	handlers  int
	bufSize   int
	// activeClose > 0 makes the server close first after echoing that many
	// bytes, so the server side goes through FIN_WAIT/TIME_WAIT instead of
	// LAST_ACK. Tracers that take the pid from the closing context see the
	// two orders very differently.
	activeClose int
	// noDelay sets TCP_NODELAY on accepted connections: a persistent
	// round trip whose request arrives in two reads is echoed in two
	// writes, and Nagle would hold the second until the client's delayed
	// ACK. Churn leaves it off so its connections stay as they were measured.
	noDelay bool
}

func (f *serverFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.addr, "addr", "127.0.0.1:0", "listen address (port 0 picks a free port)")
	fs.StringVar(&f.proto, "proto", "tcp", "tcp or udp")
	fs.StringVar(&f.readyFile, "ready-file", "", "write the actual listen address here once listening")
	fs.IntVar(&f.handlers, "handlers", 64, "concurrent blocking handlers (should exceed client workers)")
	fs.IntVar(&f.bufSize, "bufsize", 4096, "echo buffer size: bytes read per read call")
	fs.IntVar(&f.activeClose, "active-close", 0, "close first after echoing this many bytes (0 = wait for the client to close)")
	fs.BoolVar(&f.noDelay, "nodelay", false, "set TCP_NODELAY on accepted connections (for clients with --persistent)")
}

type clientFlags struct {
	target   string
	proto    string
	workers  int
	duration time.Duration
	rate     float64
	size     int
	truth    string
	timeout  time.Duration
	sources  int
	waitEOF  bool
	// persistent: one connection per worker doing round trips, not churn.
	persistent bool
}

func (f *clientFlags) register(fs *flag.FlagSet, needTarget bool) {
	if needTarget {
		fs.StringVar(&f.target, "target", "", "server address host:port")
	}
	fs.StringVar(&f.proto, "proto", "tcp", "tcp or udp")
	fs.IntVar(&f.workers, "workers", 4, "concurrent client loops")
	fs.DurationVar(&f.duration, "duration", 10*time.Second, "how long to generate connections")
	fs.Float64Var(&f.rate, "rate", 0, "total connections per second over all workers (0 = as fast as possible)")
	fs.IntVar(&f.size, "size", 100, "bytes written and echoed per connection")
	fs.StringVar(&f.truth, "truth", "", "write the ground-truth file here")
	// One (saddr, daddr, dport) tuple caps churn near 14k/s on 2 cores: the
	// ephemeral range, connect()'s even-port preference and the 1 s TIME_WAIT
	// reuse rule leave connect() scanning ports. More loopback sources give
	// each its own 4-tuple space; tracers see ordinary connections either way.
	fs.IntVar(&f.sources, "sources", 4, "spread workers over this many loopback sources 127.0.0.2... when the target is IPv4 loopback (0 = let the kernel pick)")
	fs.BoolVar(&f.waitEOF, "wait-eof", false, "after the echo, wait for the server to close first (pair with server --active-close)")
	fs.DurationVar(&f.timeout, "io-timeout", 2*time.Second, "per-connection receive timeout")
	fs.BoolVar(&f.persistent, "persistent", false, "no churn: each worker keeps one connection (TCP) or connected socket (UDP) and does --size byte round trips on it until --duration ends")
}

func runServerCmd(args []string) error {
	var sf serverFlags
	fs := flag.NewFlagSet("server", flag.ExitOnError)
	sf.register(fs)
	fs.Parse(args)
	runtime.GOMAXPROCS(max(runtime.NumCPU(), sf.handlers+2))

	srv, err := startServer(sf)
	if err != nil {
		return err
	}
	if err := writeReadyFile(sf.readyFile, srv.addr); err != nil {
		return err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	fmt.Fprintf(os.Stderr, "churn server: %s %s served %d\n", sf.proto, srv.addr, srv.served.Load())
	return nil
}

func runClientCmd(args []string) error {
	var cf clientFlags
	fs := flag.NewFlagSet("client", flag.ExitOnError)
	cf.register(fs, true)
	fs.Parse(args)
	target, err := netip.ParseAddrPort(cf.target)
	if err != nil {
		return fmt.Errorf("parse --target: %w", err)
	}
	runtime.GOMAXPROCS(max(runtime.NumCPU(), cf.workers+2))
	return clientMain(cf, target)
}

func runBothCmd(args []string) error {
	var sf serverFlags
	var cf clientFlags
	fs := flag.NewFlagSet("both", flag.ExitOnError)
	cf.register(fs, false)
	fs.StringVar(&sf.addr, "addr", "127.0.0.1:0", "server listen address")
	fs.IntVar(&sf.handlers, "handlers", 64, "server handlers")
	fs.StringVar(&sf.readyFile, "ready-file", "", "write the server address here")
	fs.Parse(args)
	sf.proto = cf.proto
	sf.bufSize = max(4096, cf.size)
	if cf.waitEOF {
		sf.activeClose = cf.size
	}
	sf.noDelay = cf.persistent
	runtime.GOMAXPROCS(max(runtime.NumCPU(), sf.handlers+cf.workers+2))

	srv, err := startServer(sf)
	if err != nil {
		return err
	}
	if err := writeReadyFile(sf.readyFile, srv.addr); err != nil {
		return err
	}
	return clientMain(cf, srv.addr)
}

func clientMain(cf clientFlags, target netip.AddrPort) error {
	if cf.proto != "tcp" && cf.proto != "udp" {
		return fmt.Errorf("unknown --proto %q", cf.proto)
	}
	if cf.workers < 1 {
		return fmt.Errorf("--workers must be at least 1")
	}
	if cf.persistent && cf.rate > 0 {
		return fmt.Errorf("--persistent runs at full speed: drop --rate")
	}
	if cf.persistent && cf.waitEOF {
		return fmt.Errorf("--persistent closes from the client at the end: drop --wait-eof")
	}
	res := runClient(cf, target)
	if cf.persistent {
		fmt.Fprintf(os.Stderr, "churn client: %s %d workers persistent: %d round trips of %d B on %d conns in %.2fs = %.0f/s, %d errors %v\n",
			cf.proto, cf.workers, res.roundTrips(), cf.size, res.conns(), res.seconds, float64(res.roundTrips())/res.seconds, res.errors(), res.errorKinds())
	} else {
		fmt.Fprintf(os.Stderr, "churn client: %s %d workers: %d conns in %.2fs = %.0f/s, %d errors %v\n",
			cf.proto, cf.workers, res.conns(), res.seconds, float64(res.conns())/res.seconds, res.errors(), res.errorKinds())
	}
	if cf.truth == "" {
		return nil
	}
	return res.writeTruth(cf, target)
}

// writeReadyFile publishes the listen address atomically so a runner polling
// for the file never reads a partial address.
func writeReadyFile(path string, addr netip.AddrPort) error {
	if path == "" {
		fmt.Println(addr)
		return nil
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(addr.String()+"\n"), 0o644); err != nil {
		return fmt.Errorf("write ready file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename ready file: %w", err)
	}
	return nil
}
