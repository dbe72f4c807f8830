package sink

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Spec is one parsed and checked --sink URL. Everything a sink needs from
// the command line is read and validated here, TLS files included, so a
// mistake is a usage error before anything is loaded into the kernel.
type Spec struct {
	URL    string // as given
	Scheme string // stdout, file, tcp, tls, syslog+udp, syslog+tcp, syslog+tls, syslog+unix, otlp+http, otlp+https
	Path   string // file and syslog+unix
	Addr   string // host:port of the network sinks

	Queue        int           // bytes held in memory for the sink
	Drain        time.Duration // how long Close may spend sending what is queued
	BackoffMax   time.Duration // the longest wait between reconnects
	WriteTimeout time.Duration // a write stalled this long drops the connection

	TLS *tls.Config // tls and syslog+tls

	BufferDir  string // network sinks: where events that do not fit in Queue wait; "" none
	BufferSize int64  // the disk buffer's bound, in bytes

	Facility int // syslog: 0 to 23

	MaxSize  int64         // file: rotate before it passes this many bytes; 0 never
	MaxAge   time.Duration // file: rotate once the file is this old; 0 never
	Keep     int           // file: rotated files kept
	Compress bool          // file: gzip rotated files
	Fsync    FsyncPolicy   // file
}

// FsyncPolicy says when the file sink asks the kernel to put its data on
// disk. Every rotation and the final close sync, unless it is Never.
type FsyncPolicy struct {
	Never  bool
	Always bool          // at every flush (the stream flushes every --flush-interval)
	Every  time.Duration // at the first flush this long after the last sync
}

func (p FsyncPolicy) String() string {
	switch {
	case p.Never:
		return "never"
	case p.Always:
		return "always"
	}
	return p.Every.String()
}

// Name is how the sink is named in logs and counters: its URL without the
// query, whose options may name secrets' files.
func (s Spec) Name() string {
	if i := strings.IndexByte(s.URL, '?'); i >= 0 {
		return s.URL[:i]
	}
	return s.URL
}

// Stream says whether the transport is a byte stream, where syslog
// messages need octet counting (RFC 6587).
func (s Spec) Stream() bool {
	return s.Scheme == "tcp" || s.Scheme == "tls" || s.Scheme == "syslog+tcp" || s.Scheme == "syslog+tls"
}

// Syslog says whether the sink sends RFC 5424 messages.
func (s Spec) Syslog() bool { return strings.HasPrefix(s.Scheme, "syslog+") }

// Networked says whether the sink delivers through a connection, with a
// memory queue and reconnects.
func (s Spec) Networked() bool { return s.Scheme != "stdout" && s.Scheme != "file" }

// The options each scheme takes; any other is a usage error.
var schemeOptions = map[string][]string{
	"stdout":      nil,
	"file":        {"queue", "max_size", "max_age", "keep", "compress", "fsync"},
	"tcp":         {"queue", "drain", "backoff_max", "write_timeout", "buffer_dir", "buffer_size"},
	"tls":         {"queue", "drain", "backoff_max", "write_timeout", "buffer_dir", "buffer_size", "ca", "cert", "key", "server_name"},
	"syslog+udp":  {"queue", "drain", "backoff_max", "write_timeout", "buffer_dir", "buffer_size", "facility"},
	"syslog+tcp":  {"queue", "drain", "backoff_max", "write_timeout", "buffer_dir", "buffer_size", "facility"},
	"syslog+tls":  {"queue", "drain", "backoff_max", "write_timeout", "buffer_dir", "buffer_size", "facility", "ca", "cert", "key", "server_name"},
	"otlp+http":   {"queue", "drain", "backoff_max", "write_timeout"},
	"otlp+https":  {"queue", "drain", "backoff_max", "write_timeout", "ca", "cert", "key", "server_name"},
	"syslog+unix": {"queue", "drain", "backoff_max", "write_timeout", "buffer_dir", "buffer_size", "facility"},
}

var facilities = []string{"kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv", "ftp",
	"ntp", "security", "console", "solaris-cron", "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7"}

// ParseURL reads one --sink value. Its errors say what is wrong and name
// the option; the caller names the URL.
func ParseURL(raw string) (Spec, error) {
	s := Spec{
		URL: raw, Queue: 16 << 20, Drain: 5 * time.Second, BackoffMax: 30 * time.Second, WriteTimeout: 30 * time.Second,
		Facility:   3, // daemon
		BufferSize: 1 << 30,
		MaxSize:    100 << 20, Keep: 5, Fsync: FsyncPolicy{Every: time.Second},
	}
	if raw == "stdout" || raw == "-" {
		s.Scheme = "stdout"
		return s, nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return s, errors.New("not a URL such as file:/var/log/portlife.json or syslog+udp://127.0.0.1:514")
	}
	s.Scheme = u.Scheme
	allowed, ok := schemeOptions[u.Scheme]
	if !ok {
		return s, fmt.Errorf("unknown scheme %q: want stdout, file, tcp, tls, syslog+udp, syslog+tcp, syslog+tls, syslog+unix, otlp+http or otlp+https", u.Scheme)
	}
	if u.User != nil || u.Fragment != "" {
		return s, errors.New("user information and fragments are not used: leave them out")
	}
	switch u.Scheme {
	case "file", "syslog+unix":
		s.Path = u.Opaque
		if s.Path == "" {
			s.Path = u.Path
		}
		if u.Host != "" {
			return s, fmt.Errorf("%s takes a path, not a host: write %s:/path or %s:///path", u.Scheme, u.Scheme, u.Scheme)
		}
		if s.Path == "" {
			return s, fmt.Errorf("%s needs a path, such as %s:/var/log/portlife.json", u.Scheme, u.Scheme)
		}
	default:
		if u.Opaque != "" || u.Host == "" || (u.Path != "" && u.Path != "/") {
			return s, fmt.Errorf("%s needs host:port and nothing more, such as %s://127.0.0.1:514", u.Scheme, u.Scheme)
		}
		host, port, err := net.SplitHostPort(u.Host)
		if err != nil || host == "" {
			return s, fmt.Errorf("%q is not host:port", u.Host)
		}
		if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
			return s, fmt.Errorf("port %q: want 1 to 65535", port)
		}
		s.Addr = u.Host
	}

	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return s, fmt.Errorf("query %q: %v", u.RawQuery, err)
	}
	var ca, cert, key, serverName string
	for name, vals := range q {
		if !contains(allowed, name) {
			if len(allowed) == 0 {
				return s, fmt.Errorf("option %q: %s takes no options", name, u.Scheme)
			}
			return s, fmt.Errorf("unknown option %q for %s: want %s", name, u.Scheme, strings.Join(allowed, ", "))
		}
		if len(vals) != 1 {
			return s, fmt.Errorf("option %s is given %d times", name, len(vals))
		}
		v := vals[0]
		var err error
		switch name {
		case "queue":
			var n int64
			n, err = parseBytes(v, 64<<10, 4<<30)
			s.Queue = int(n)
		case "max_size":
			s.MaxSize, err = parseBytes(v, 0, 1<<50)
			if err == nil && s.MaxSize > 0 && s.MaxSize < 64<<10 {
				err = errors.New("below 64KiB")
			}
		case "buffer_dir":
			s.BufferDir = v
			if v == "" {
				err = errors.New("want a directory")
			}
		case "buffer_size":
			s.BufferSize, err = parseBytes(v, 1<<20, 1<<50)
		case "drain":
			s.Drain, err = parseDuration(v, 0)
		case "backoff_max":
			s.BackoffMax, err = parseDuration(v, 10*time.Millisecond)
		case "write_timeout":
			s.WriteTimeout, err = parseDuration(v, 10*time.Millisecond)
		case "max_age":
			s.MaxAge, err = parseDuration(v, 0)
			if err == nil && s.MaxAge > 0 && s.MaxAge < time.Second {
				err = errors.New("below 1s")
			}
		case "keep":
			s.Keep, err = strconv.Atoi(v)
			if err != nil || s.Keep < 1 || s.Keep > 1000 {
				err = errors.New("want a count of rotated files from 1 to 1000")
			}
		case "compress":
			switch v {
			case "gzip":
				s.Compress = true
			case "none":
				s.Compress = false
			default:
				err = errors.New("want gzip or none")
			}
		case "fsync":
			s.Fsync, err = parseFsync(v)
		case "facility":
			s.Facility, err = parseFacility(v)
		case "ca":
			ca = v
		case "cert":
			cert = v
		case "key":
			key = v
		case "server_name":
			serverName = v
		}
		if err != nil {
			return s, fmt.Errorf("option %s=%s: %v", name, v, err)
		}
	}
	if u.Scheme == "tls" || u.Scheme == "syslog+tls" || u.Scheme == "otlp+https" {
		s.TLS, err = tlsConfig(s.Addr, ca, cert, key, serverName)
		if err != nil {
			return s, err
		}
	}
	return s, nil
}

func tlsConfig(addr, ca, cert, key, serverName string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName}
	if cfg.ServerName == "" {
		cfg.ServerName, _, _ = net.SplitHostPort(addr)
	}
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("option ca: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("option ca=%s: no PEM certificate in it", ca)
		}
	}
	if (cert == "") != (key == "") {
		return nil, errors.New("options cert and key go together: give both, or neither")
	}
	if cert != "" {
		c, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, fmt.Errorf("options cert and key: %w", err)
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	return cfg, nil
}

func contains(list []string, s string) bool {
	for _, l := range list {
		if l == s {
			return true
		}
	}
	return false
}

// parseBytes reads "64MiB", "512KiB", "1GiB" (or K, M, G) or a byte count.
func parseBytes(s string, lo, hi int64) (int64, error) {
	num, mult := s, int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}} {
		if n, ok := strings.CutSuffix(num, u.suffix); ok {
			num, mult = n, u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > hi/mult {
		return 0, errors.New("not a size such as 64MiB")
	}
	if n*mult < lo {
		return 0, fmt.Errorf("below %d bytes", lo)
	}
	return n * mult, nil
}

func parseDuration(s string, lo time.Duration) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, errors.New("not a duration such as 5s")
	}
	if d < lo {
		return 0, fmt.Errorf("below %v", lo)
	}
	return d, nil
}

func parseFsync(s string) (FsyncPolicy, error) {
	switch s {
	case "never":
		return FsyncPolicy{Never: true}, nil
	case "always":
		return FsyncPolicy{Always: true}, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return FsyncPolicy{}, errors.New("want never, always, or an interval such as 1s")
	}
	return FsyncPolicy{Every: d}, nil
}

func parseFacility(s string) (int, error) {
	for i, f := range facilities {
		if s == f {
			return i, nil
		}
	}
	if n, err := strconv.Atoi(s); err == nil && n >= 0 && n <= 23 {
		return n, nil
	}
	return 0, errors.New("want a facility name such as daemon or local0, or a number from 0 to 23")
}
