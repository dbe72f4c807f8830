package main

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
)

// cpioWriter writes the "newc" cpio format, the one the kernel unpacks as
// its initramfs. Written here rather than by cpio(1), which a fresh Debian
// machine lacks: the format is a fixed ASCII header, the name and the data,
// each padded to four bytes.
type cpioWriter struct {
	w    *bufio.Writer
	off  int64
	ino  uint32
	dirs map[string]bool
}

func newCPIO(w io.Writer) *cpioWriter {
	return &cpioWriter{w: bufio.NewWriter(w), dirs: map[string]bool{}}
}

const (
	cpioDir  = 0o040000
	cpioFile = 0o100000
)

func (c *cpioWriter) header(name string, mode uint32, size int64) error {
	if size > 0xffffffff {
		return fmt.Errorf("%s: %d bytes is too large for cpio", name, size)
	}
	c.ino++
	nlink := 1
	if mode&cpioDir != 0 {
		nlink = 2
	}
	// magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
	// devminor, rdevmajor, rdevminor, namesize, check.
	h := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(name)+1, 0)
	if err := c.write([]byte(h + name + "\x00")); err != nil {
		return err
	}
	return c.pad()
}

func (c *cpioWriter) write(b []byte) error {
	n, err := c.w.Write(b)
	c.off += int64(n)
	return err
}

func (c *cpioWriter) pad() error {
	if r := c.off % 4; r != 0 {
		return c.write(make([]byte, 4-r))
	}
	return nil
}

// mkdirAll adds dir and its parents, each once.
func (c *cpioWriter) mkdirAll(dir string) error {
	dir = strings.Trim(path.Clean(dir), "/")
	if dir == "" || dir == "." || c.dirs[dir] {
		return nil
	}
	if err := c.mkdirAll(path.Dir(dir)); err != nil {
		return err
	}
	c.dirs[dir] = true
	return c.header(dir, cpioDir|0o755, 0)
}

// file adds name (a path inside the archive) with data and permissions perm.
func (c *cpioWriter) file(name string, perm fs.FileMode, data []byte) error {
	name = strings.Trim(path.Clean(name), "/")
	if err := c.mkdirAll(path.Dir(name)); err != nil {
		return err
	}
	if err := c.header(name, cpioFile|uint32(perm.Perm()), int64(len(data))); err != nil {
		return err
	}
	if err := c.write(data); err != nil {
		return err
	}
	return c.pad()
}

// copyFile adds name with the contents and permissions of the host file src,
// streamed rather than read whole: test binaries are tens of megabytes.
func (c *cpioWriter) copyFile(name, src string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	name = strings.Trim(path.Clean(name), "/")
	if err := c.mkdirAll(path.Dir(name)); err != nil {
		return err
	}
	if err := c.header(name, cpioFile|uint32(st.Mode().Perm()), st.Size()); err != nil {
		return err
	}
	n, err := io.Copy(c.w, f)
	c.off += n
	if err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	if n != st.Size() {
		return fmt.Errorf("%s changed while it was copied", src)
	}
	return c.pad()
}

// close writes the trailer and flushes.
func (c *cpioWriter) close() error {
	if err := c.header("TRAILER!!!", 0, 0); err != nil {
		return err
	}
	return c.w.Flush()
}
