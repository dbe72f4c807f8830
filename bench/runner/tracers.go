package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// tracer describes how to run one tracer and read what it wrote.
type tracer struct {
	name string
	bin  string
	args []string
	// protos lists the protocols the tracer reports; for others the run
	// still measures overhead but completeness is not applicable.
	protos []string
	// opens: the tracer reports connection opens as well as closes
	// (tcplife reports each connection once, at its end).
	opens bool
	// waitReady returns once the tracer would see a new connection.
	waitReady func(ctx context.Context, c *child, env *benchEnv) error
	parse     func(r io.Reader, s matchSpec) (*eventCounts, error)
	// lost returns events the tracer says the kernel could not deliver;
	// ok is false when the tracer did not say.
	lost func(stdoutPath, stderrPath string) (lost int, ok bool)
	// output, when set, opens the tracer's extra output for a run in its
	// directory (a sink's file or receiver, the store's database).
	output func(dir string) (output, error)
}

func (t *tracer) supports(proto string) bool {
	for _, p := range t.protos {
		if p == proto {
			return true
		}
	}
	return false
}

// newPortlife runs portlife with JSON output; name tells apart two builds
// of it in one benchmark.
func newPortlife(name, bin string, extra []string) *tracer {
	return &tracer{
		name:   name,
		bin:    bin,
		args:   append([]string{"--output", "json"}, extra...),
		protos: []string{"tcp", "udp"},
		opens:  true,
		waitReady: func(ctx context.Context, c *child, _ *benchEnv) error {
			return c.waitFor(ctx, `"tracing started" on stderr`, 60*time.Second, func() bool {
				return fileContains(c.stderr, "tracing started")
			})
		},
		parse: parsePortlife,
		lost: func(_, stderrPath string) (int, bool) {
			type res struct {
				n  int
				ok bool
			}
			r, err := parseFile(stderrPath, func(r io.Reader) res {
				n, ok := parsePortlifeLost(r)
				return res{n, ok}
			})
			return r.n, err == nil && r.ok
		},
	}
}

// newTcplife runs libbpf-tools tcplife with its defaults: all processes,
// both families, default columns.
func newTcplife(bin string) *tracer {
	return &tracer{
		name:      "tcplife",
		bin:       bin,
		protos:    []string{"tcp"},
		waitReady: waitBPFActive,
		parse:     parseTcplife,
		lost: func(_, stderrPath string) (int, bool) {
			n, err := parseFile(stderrPath, parseTcplifeLost)
			return n, err == nil
		},
	}
}

// waitBPFActive is readiness for tracers without a ready message. tcplife
// prints a header once attached, but stdio buffers it while stdout is a
// file. Instead: wait until one of its programs has run on a probe
// connection, which proves the attach; the short sleep after covers the
// perf buffer it opens right after attaching.
func waitBPFActive(ctx context.Context, c *child, env *benchEnv) error {
	if !env.bpfStats {
		err := c.waitFor(ctx, "BPF programs", 30*time.Second, func() bool {
			progs, _ := tracerProgs(c.pid())
			return len(progs) > 0
		})
		if err == nil {
			time.Sleep(time.Second)
		}
		return err
	}
	err := c.waitFor(ctx, "BPF program activity", 30*time.Second, func() bool {
		progs, _ := tracerProgs(c.pid())
		if len(progs) == 0 {
			return false
		}
		if sumRunCnt(progs) > 0 {
			return true
		}
		env.probe()
		return false
	})
	if err == nil {
		time.Sleep(300 * time.Millisecond)
	}
	return err
}

func fileContains(path, s string) bool {
	data, err := os.ReadFile(path)
	return err == nil && strings.Contains(string(data), s)
}

// prober makes loopback connections owned by the runner, to wake tracers up.
// Their pid and ports never match a churn run.
type prober struct {
	ln net.Listener
}

func newProber() (*prober, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen for probes: %w", err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return &prober{ln: ln}, nil
}

func (p *prober) poke() {
	c, err := net.DialTimeout("tcp", p.ln.Addr().String(), time.Second)
	if err == nil {
		c.Close()
	}
}

func (p *prober) close() { p.ln.Close() }

// findBinary resolves a tracer or helper binary, or explains why not.
func findBinary(path string) (string, error) {
	if !strings.Contains(path, "/") {
		return lookPath(path)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("resolve %s: %w", path, err)
	}
	st, err := os.Stat(abs)
	if err != nil {
		return "", fmt.Errorf("%s not found: %w", path, err)
	}
	if st.IsDir() || st.Mode()&0o111 == 0 {
		return "", fmt.Errorf("%s is not an executable file", path)
	}
	return abs, nil
}
