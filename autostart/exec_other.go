//go:build !unix

package autostart

import (
	"context"
	"fmt"
	"sync"
)

// Exec is the driver of machines that are local processes. On this system
// it runs none: Start and Suspend return ErrUnsupported.
type Exec struct {
	exits chan string
	once  sync.Once
}

// NewExec returns an Exec driver.
func NewExec(ExecOptions) *Exec { return &Exec{exits: make(chan string)} }

// Exits never receives; Close closes it.
func (e *Exec) Exits() <-chan string { return e.exits }

// Start returns ErrUnsupported.
func (e *Exec) Start(_ context.Context, s *Spec) error {
	return fmt.Errorf("autostart: start machine %s: local processes on this system: %w", s.ID, ErrUnsupported)
}

// Stop has nothing to stop.
func (e *Exec) Stop(context.Context, *Spec) error { return nil }

// Suspend returns ErrUnsupported.
func (e *Exec) Suspend(_ context.Context, s *Spec) error {
	return fmt.Errorf("autostart: suspend machine %s: %w", s.ID, ErrUnsupported)
}

// Close closes Exits. It is idempotent.
func (e *Exec) Close() error {
	e.once.Do(func() { close(e.exits) })
	return nil
}
