package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestModuleName(t *testing.T) {
	cases := map[string]string{
		"kernel/fs/9p/9p.ko":                          "9p",
		"kernel/net/9p/9pnet_virtio.ko.xz":            "9pnet_virtio",
		"kernel/drivers/char/hw_random/virtio-rng.ko": "virtio_rng",
		"kernel/drivers/virtio/virtio_pci.ko.zst":     "virtio_pci",
		"kernel/fs/netfs/netfs.ko.gz":                 "netfs",
	}
	for file, want := range cases {
		if got, ok := moduleName(file); !ok || got != want {
			t.Errorf("moduleName(%q) = %q, %v; want %q", file, got, ok, want)
		}
	}
	if name, ok := moduleName("modules.builtin"); ok {
		t.Errorf("moduleName(modules.builtin) = %q, want no module", name)
	}
}

func TestPruneKernels(t *testing.T) {
	cache := t.TempDir()
	ages := map[string]time.Duration{"fresh": time.Hour, "recent": unusedFor - 24*time.Hour, "stale": unusedFor + time.Hour}
	for name, age := range ages {
		dir := filepath.Join(cache, "amd64", name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		stamp := filepath.Join(dir, "kernel.json")
		if err := os.WriteFile(stamp, []byte("{}"), 0o644); err != nil {
			t.Fatal(err)
		}
		when := time.Now().Add(-age)
		if err := os.Chtimes(stamp, when, when); err != nil {
			t.Fatal(err)
		}
	}
	if err := pruneKernels(cache, "amd64", t.Logf); err != nil {
		t.Fatal(err)
	}
	for name := range ages {
		_, err := os.Stat(filepath.Join(cache, "amd64", name))
		if kept := err == nil; kept != (name != "stale") {
			t.Errorf("%s: kept %v", name, kept)
		}
	}
}
