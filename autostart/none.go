package autostart

import (
	"context"
	"fmt"
)

// ErrNotManaged is the error of every operation of the None driver. It
// matches ErrUnsupported too (errors.Is), so a caller that falls back from
// an unsupported operation treats it the same way.
var ErrNotManaged error = notManaged{}

type notManaged struct{}

func (notManaged) Error() string {
	return `godwit does not manage this machine (driver.kind "none"): it only routes to it`
}

func (notManaged) Is(target error) bool { return target == ErrUnsupported }

// None is the driver of machines that someone else starts and stops
// (driver.kind "none"): every operation fails with ErrNotManaged, so a
// request that needs such a machine woken fails clearly instead of
// waiting.
type None struct{}

// Start returns ErrNotManaged.
func (None) Start(_ context.Context, s *Spec) error {
	return fmt.Errorf("autostart: start machine %s: %w", s.ID, ErrNotManaged)
}

// Stop returns ErrNotManaged.
func (None) Stop(_ context.Context, s *Spec) error {
	return fmt.Errorf("autostart: stop machine %s: %w", s.ID, ErrNotManaged)
}

// Suspend returns ErrNotManaged.
func (None) Suspend(_ context.Context, s *Spec) error {
	return fmt.Errorf("autostart: suspend machine %s: %w", s.ID, ErrNotManaged)
}
