package sink

import (
	"strings"
	"testing"
	"time"
)

func TestParseURLGood(t *testing.T) {
	tests := []struct {
		url   string
		check func(t *testing.T, s Spec)
	}{
		{"stdout", func(t *testing.T, s Spec) {
			if s.Scheme != "stdout" {
				t.Errorf("scheme %q", s.Scheme)
			}
		}},
		{"file:/var/log/portlife.json", func(t *testing.T, s Spec) {
			if s.Path != "/var/log/portlife.json" || s.MaxSize != 100<<20 || s.Keep != 5 || s.Compress || s.Fsync.Every != time.Second {
				t.Errorf("defaults: %+v", s)
			}
		}},
		{"file:///var/log/p.json?max_size=64MiB&max_age=1h&keep=3&compress=gzip&fsync=always&queue=1MiB", func(t *testing.T, s Spec) {
			if s.Path != "/var/log/p.json" || s.MaxSize != 64<<20 || s.MaxAge != time.Hour || s.Keep != 3 || !s.Compress || !s.Fsync.Always || s.Queue != 1<<20 {
				t.Errorf("%+v", s)
			}
			if s.Name() != "file:///var/log/p.json" {
				t.Errorf("name %q leaves the query in", s.Name())
			}
		}},
		{"file:relative.json?max_size=0&fsync=never", func(t *testing.T, s Spec) {
			if s.Path != "relative.json" || s.MaxSize != 0 || !s.Fsync.Never {
				t.Errorf("%+v", s)
			}
		}},
		{"tcp://127.0.0.1:9000?queue=64MiB&drain=2s&backoff_max=1s&write_timeout=3s", func(t *testing.T, s Spec) {
			if s.Addr != "127.0.0.1:9000" || s.Queue != 64<<20 || s.Drain != 2*time.Second || s.BackoffMax != time.Second || s.WriteTimeout != 3*time.Second || !s.Stream() || s.Syslog() {
				t.Errorf("%+v", s)
			}
		}},
		{"syslog+udp://[::1]:514?facility=local0", func(t *testing.T, s Spec) {
			if s.Addr != "[::1]:514" || s.Facility != 16 || s.Stream() || !s.Syslog() {
				t.Errorf("%+v", s)
			}
		}},
		{"syslog+tcp://logs.example:601?facility=23", func(t *testing.T, s Spec) {
			if s.Facility != 23 || !s.Stream() {
				t.Errorf("%+v", s)
			}
		}},
		{"syslog+unix:///dev/log", func(t *testing.T, s Spec) {
			if s.Path != "/dev/log" || s.Facility != 3 || s.Stream() {
				t.Errorf("%+v", s)
			}
		}},
		{"tls://logs.example:6514?server_name=collector", func(t *testing.T, s Spec) {
			if s.TLS == nil || s.TLS.ServerName != "collector" {
				t.Errorf("%+v", s.TLS)
			}
		}},
		{"otlp+http://127.0.0.1:4318?queue=8MiB", func(t *testing.T, s Spec) {
			if s.Addr != "127.0.0.1:4318" || s.Queue != 8<<20 || s.TLS != nil || !s.Networked() {
				t.Errorf("%+v", s)
			}
		}},
		{"otlp+https://collector:4318", func(t *testing.T, s Spec) {
			if s.TLS == nil || s.TLS.ServerName != "collector" {
				t.Errorf("%+v", s.TLS)
			}
		}},
		{"tcp://127.0.0.1:9000?buffer_dir=/var/spool/portlife&buffer_size=2GiB", func(t *testing.T, s Spec) {
			if s.BufferDir != "/var/spool/portlife" || s.BufferSize != 2<<30 {
				t.Errorf("%+v", s)
			}
		}},
		{"syslog+tls://logs.example:6514", func(t *testing.T, s Spec) {
			if s.TLS == nil || s.TLS.ServerName != "logs.example" || !s.Stream() {
				t.Errorf("%+v", s.TLS)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			s, err := ParseURL(tt.url)
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, s)
		})
	}
}

// Every mistake is one line that names what is wrong.
func TestParseURLBad(t *testing.T) {
	tests := []struct{ url, want string }{
		{"ftp://x:1", `unknown scheme "ftp"`},
		{"/var/log/x", `unknown scheme ""`},
		{"file:", "needs a path"},
		{"file://host/x", "not a host"},
		{"file:/x?rotate=1", `unknown option "rotate"`},
		{"file:/x?max_size=big", "max_size=big"},
		{"file:/x?max_size=1K", "below 64KiB"},
		{"file:/x?keep=0", "keep=0"},
		{"file:/x?compress=zstd", "want gzip or none"},
		{"file:/x?fsync=sometimes", "fsync=sometimes"},
		{"file:/x?max_age=10ms", "max_age=10ms"},
		{"file:/x?keep=1&keep=2", "keep is given 2 times"},
		{"stdout?x=1", `unknown scheme ""`},
		{"tcp://127.0.0.1", "not host:port"},
		{"tcp://:9000", "not host:port"},
		{"tcp://127.0.0.1:0", "port"},
		{"tcp://127.0.0.1:99999", "port"},
		{"tcp://127.0.0.1:9000/path", "nothing more"},
		{"tcp://u@127.0.0.1:9000", "user information"},
		{"tcp://127.0.0.1:9000?facility=local0", `unknown option "facility"`},
		{"tcp://127.0.0.1:9000?queue=1K", "queue=1K"},
		{"tcp://127.0.0.1:9000?drain=forever", "drain=forever"},
		{"syslog+udp://127.0.0.1:514?facility=local9", "facility=local9"},
		{"syslog+udp://127.0.0.1:514?facility=24", "facility=24"},
		{"tls://127.0.0.1:6514?ca=/nonexistent/ca.pem", "option ca"},
		{"tls://127.0.0.1:6514?cert=/x.pem", "cert and key go together"},
		{"syslog+unix:", "needs a path"},
		{"otlp+http://127.0.0.1:4318?facility=daemon", `unknown option "facility"`},
		{"otlp+http://127.0.0.1:4318/v1/logs", "nothing more"},
		{"tcp://127.0.0.1:9000?buffer_size=1K", "buffer_size=1K"},
		{"file:/x?buffer_dir=/tmp", `unknown option "buffer_dir"`},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			_, err := ParseURL(tt.url)
			if err == nil {
				t.Fatalf("accepted")
			}
			if !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q: want one line containing %q", err, tt.want)
			}
		})
	}
}
