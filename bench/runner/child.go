package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// child is a process the runner started. Each child leads its own process
// group, so a terminal ^C reaches only the runner, which then stops children
// in order (tracers need SIGINT to flush) instead of all dying at once.
type child struct {
	name   string
	cmd    *exec.Cmd
	stderr string // path of the captured stderr
	done   chan struct{}
	err    error // from Wait, valid once done is closed
}

// startChild runs argv with stdout and stderr redirected to files. When ctx
// ends the whole group gets SIGKILL; Pdeathsig covers the runner itself
// being killed.
func startChild(ctx context.Context, name string, argv []string, stdoutPath, stderrPath string) (*child, error) {
	stdout, err := os.Create(stdoutPath)
	if err != nil {
		return nil, fmt.Errorf("create %s stdout: %w", name, err)
	}
	defer stdout.Close()
	stderr, err := os.Create(stderrPath)
	if err != nil {
		return nil, fmt.Errorf("create %s stderr: %w", name, err)
	}
	defer stderr.Close()

	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, stderr: stderrPath, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	return c, nil
}

func (c *child) pid() int { return c.cmd.Process.Pid }

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// wait waits up to timeout for the child to exit on its own.
func (c *child) wait(timeout time.Duration) error {
	select {
	case <-c.done:
		return c.exitErr()
	case <-time.After(timeout):
		c.kill()
		return fmt.Errorf("%s did not exit within %s; killed", c.name, timeout)
	}
}

// stop sends sig and waits; a child that ignores it is killed after timeout.
func (c *child) stop(sig syscall.Signal, timeout time.Duration) error {
	if c.exited() {
		return c.exitErr()
	}
	// Only the leader: a signal to the group could reach helpers the child
	// wants to shut down itself.
	if err := c.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal %s: %w", c.name, err)
	}
	return c.wait(timeout)
}

// kill ends the child's whole group and reaps it.
func (c *child) kill() {
	if c.exited() {
		return
	}
	syscall.Kill(-c.pid(), syscall.SIGKILL)
	<-c.done
}

func (c *child) exitErr() error {
	if c.err != nil {
		return fmt.Errorf("%s: %w%s", c.name, c.err, c.stderrTail())
	}
	return nil
}

// rusage is the child's resource usage; only valid after it exited.
func (c *child) rusage() *syscall.Rusage {
	if !c.exited() || c.cmd.ProcessState == nil {
		return nil
	}
	ru, _ := c.cmd.ProcessState.SysUsage().(*syscall.Rusage)
	return ru
}

// stderrTail quotes the end of the child's stderr for error messages.
func (c *child) stderrTail() string {
	data, err := os.ReadFile(c.stderr)
	if err != nil || len(data) == 0 {
		return ""
	}
	s := strings.TrimSpace(string(data))
	if len(s) > 600 {
		s = "..." + s[len(s)-600:]
	}
	return "\n    stderr: " + strings.ReplaceAll(s, "\n", "\n    ")
}

// waitFor polls cond every 50ms until it holds, the child exits, ctx ends,
// or timeout passes.
func (c *child) waitFor(ctx context.Context, what string, timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return nil
		}
		if c.exited() {
			return fmt.Errorf("%s exited while waiting for %s: %v%s", c.name, what, c.err, c.stderrTail())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: no %s within %s%s", c.name, what, timeout, c.stderrTail())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
