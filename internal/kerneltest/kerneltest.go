// Package kerneltest holds what the kernel tests of every package share:
// they load the real program, so they need root, and in CI they must run.
package kerneltest

import (
	"os"
	"testing"
)

// RequireRoot skips a kernel test without root, except in CI (CI=true),
// where a skip would hide that the kernel tests did not run.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("kernel tests need root, and CI=true forbids skipping them")
	}
	t.Skip("kernel tests need root: run `sudo make test`")
}
