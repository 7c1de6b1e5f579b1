package autostart

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"time"
)

// ExecOptions configure an Exec driver.
type ExecOptions struct {
	// Output receives what the machines write to stdout and stderr, line
	// by line, each line prefixed with "[<machine id>] ", as a Fly host
	// sends an app's output to its log stream. Lines are written whole,
	// one at a time. Nil means os.Stderr, godwit's own log stream;
	// io.Discard drops the output.
	Output io.Writer
	// Log receives the driver's own events: exits, forced kills. Nil
	// means slog.Default().
	Log *slog.Logger
}

func (o ExecOptions) withDefaults() ExecOptions {
	if o.Output == nil {
		o.Output = os.Stderr
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	return o
}

// ErrDriverClosed is returned by Exec.Start after Close.
var ErrDriverClosed = errors.New("autostart: driver closed")

// ErrNotRunning is returned by Exec.Suspend for a machine that does not
// run.
var ErrNotRunning = errors.New("autostart: machine not running")

// killGrace bounds the wait for a process group to go away after SIGKILL.
const killGrace = 5 * time.Second

// suspendWait bounds the wait for a machine's process to stop after
// SIGSTOP.
const suspendWait = 2 * time.Second

// execEnv is the environment of an exec machine: godwit's own, then the
// variables Fly apps expect, then the Spec's own (a later value of a key
// wins).
func execEnv(s *Spec) ([]string, error) {
	_, port, err := net.SplitHostPort(s.Addr)
	if err != nil {
		return nil, fmt.Errorf("address %q: want host:port", s.Addr)
	}
	env := os.Environ()
	env = append(env,
		"FLY_REGION="+s.Region,
		"FLY_MACHINE_ID="+s.ID,
		"FLY_APP_NAME="+s.App,
		"PRIMARY_REGION="+s.PrimaryRegion,
		"PORT="+port,
	)
	return append(env, s.Env...), nil
}
