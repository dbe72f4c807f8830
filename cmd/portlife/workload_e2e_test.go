package main

import (
	"bytes"
	"errors"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// --unit and --container cannot work without opening cgroups by their id:
// without CAP_DAC_READ_SEARCH portlife refuses them at start, in one line
// that names the capability, rather than printing nothing.
func TestWorkloadFiltersNeedTheCapability(t *testing.T) {
	requireRoot(t) // to give the capabilities
	for _, args := range [][]string{{"--unit", "web"}, {"--container", "0123456789ab"}} {
		t.Run(args[0], func(t *testing.T) {
			cmd := exec.Command(binary, append([]string{"--output", "json", "--log-format", "json"}, args...)...)
			cmd.SysProcAttr = &syscall.SysProcAttr{
				Credential:  &syscall.Credential{Uid: 65534, Gid: 65534},
				AmbientCaps: []uintptr{unix.CAP_BPF, unix.CAP_PERFMON, unix.CAP_NET_ADMIN},
			}
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 {
				t.Fatalf("exit %v, want code 1; stderr:\n%s", err, stderr.String())
			}
			if !strings.Contains(stderr.String(), "CAP_DAC_READ_SEARCH") || strings.Contains(stderr.String(), "tracing started") {
				t.Errorf("want a refusal naming CAP_DAC_READ_SEARCH before tracing; stderr:\n%s", stderr.String())
			}
		})
	}
}
