package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// cpioEntry is an entry as the kernel's unpacker reads it.
type cpioEntry struct {
	name string
	mode uint32
	data string
}

// readCPIO reads newc as the kernel does (init/initramfs.c): every header
// and every file's data start on a four-byte boundary.
func readCPIO(t *testing.T, b []byte) []cpioEntry {
	t.Helper()
	var out []cpioEntry
	off := 0
	align := func() { off = (off + 3) &^ 3 }
	for {
		if off+110 > len(b) {
			t.Fatalf("truncated at %d", off)
		}
		h := b[off : off+110]
		if string(h[:6]) != "070701" {
			t.Fatalf("bad magic %q at %d", h[:6], off)
		}
		field := func(i int) int {
			n, err := strconv.ParseUint(string(h[6+8*i:14+8*i]), 16, 32)
			if err != nil {
				t.Fatal(err)
			}
			return int(n)
		}
		mode, size, namesize := field(1), field(6), field(11)
		off += 110
		name := string(b[off : off+namesize-1])
		if b[off+namesize-1] != 0 {
			t.Fatalf("name %q not NUL-terminated", name)
		}
		off += namesize
		align()
		if name == "TRAILER!!!" {
			if off != len(b) {
				t.Errorf("%d bytes after the trailer", len(b)-off)
			}
			return out
		}
		out = append(out, cpioEntry{name: name, mode: uint32(mode), data: string(b[off : off+size])})
		off += size
		align()
	}
}

func TestCPIO(t *testing.T) {
	src := filepath.Join(t.TempDir(), "binary")
	if err := os.WriteFile(src, []byte("seven b"), 0o751); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	c := newCPIO(&buf)
	steps := []error{
		c.mkdirAll("proc"),
		c.file("init", 0o755, []byte("#!/bin/sh\n")),
		c.copyFile("share/tracer.test", src),
		c.file("etc/portlife-kernels.conf", 0o644, []byte("A=1\n")),
		c.file("share/b", 0o644, nil),
		c.close(),
	}
	for _, err := range steps {
		if err != nil {
			t.Fatal(err)
		}
	}
	got := fmt.Sprint(readCPIO(t, buf.Bytes()))
	want := fmt.Sprint([]cpioEntry{
		{"proc", cpioDir | 0o755, ""},
		{"init", cpioFile | 0o755, "#!/bin/sh\n"},
		{"share", cpioDir | 0o755, ""},
		{"share/tracer.test", cpioFile | 0o751, "seven b"},
		{"etc", cpioDir | 0o755, ""},
		{"etc/portlife-kernels.conf", cpioFile | 0o644, "A=1\n"},
		{"share/b", cpioFile | 0o644, ""},
	})
	if got != want {
		t.Errorf("archive:\n got  %s\n want %s", got, want)
	}
}
