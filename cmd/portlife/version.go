package main

import (
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"
)

// runVersion prints what `portlife version` and `portlife --version` say.
func runVersion(args []string, stdout, stderr *os.File) int {
	if len(args) > 0 {
		fmt.Fprintf(stderr, "portlife: version takes no arguments, got %q\n", strings.Join(args, " "))
		return exitUsage
	}
	printVersion(stdout)
	return exitOK
}

// printVersion writes one line: the module version, the commit it was
// built from (with "+dirty" for uncommitted changes), and the Go version,
// all from the build info the Go toolchain stamps into the binary.
func printVersion(w io.Writer) {
	version, commit, dirty, goVersion := "unknown", "unknown", false, "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		version, goVersion = bi.Main.Version, bi.GoVersion
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				commit = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
	}
	if dirty {
		commit += "+dirty"
	}
	fmt.Fprintf(w, "portlife %s commit %s %s\n", version, commit, goVersion)
}
