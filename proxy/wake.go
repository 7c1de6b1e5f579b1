package proxy

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/godwit/godwit/autostart"
	"github.com/godwit/godwit/routing"
)

// hdrWoke is the response header of an answer that waited for a machine
// to wake: "<machine id>;dur=<ms>". An answer through another edge carries
// its owner's.
const hdrWoke = "Godwit-Woke"

// wakeCandidate is the machine a request wakes when no started machine
// can take it: the nearest machine the constraints allow that is not
// started: within a region, one already starting first (the request joins
// that wake rather than start another machine), then a suspended one (it
// resumes faster), a stopped one, one stopping (the request waits for the
// start after the stop), then a failed one (whose wake fails
// at once during its backoff, with the reason). On this node or, through
// its owner, on another. Nil if there is none.
func wakeCandidate(app *routing.App, c routing.Constraints) *routing.Machine {
	allowed := func(m *routing.Machine) bool {
		if c.Instance != "" && m.ID != c.Instance {
			return false
		}
		if slices.Contains(c.Exclude, m) || !m.Reachable() {
			return false
		}
		return wakeRank(m.State()) > 0
	}
	regions := app.Regions() // nearest first
	if len(c.Regions) > 0 {
		if c.AnyRegion {
			regions = append(slices.Clone(c.Regions), regions...)
		} else {
			regions = c.Regions
		}
	}
	for _, region := range regions {
		var best *routing.Machine
		for _, m := range app.Machines() {
			if m.Region != region || !allowed(m) {
				continue
			}
			if best == nil || wakeRank(m.State()) > wakeRank(best.State()) {
				best = m
			}
		}
		if best != nil {
			return best
		}
	}
	return nil
}

// wakeRank orders the states a request may wake a machine from; 0: not
// one of them.
func wakeRank(st routing.State) int {
	switch st {
	case routing.StateStarting:
		return 6
	case routing.StateSuspended:
		return 5
	case routing.StateStopped:
		return 4
	case routing.StateStopping:
		return 2
	case routing.StateFailed:
		return 1
	}
	return 0
}

// wake starts m, one of this node's machines, and waits until it is ready
// (the autostart Manager shares one start among every request waiting for
// it). It returns the code for the client when it fails.
func (h *Handler) wake(ctx context.Context, m *routing.Machine, x *exchange) (Code, error) {
	start := time.Now()
	err := h.wakes.Wake(ctx, m.ID)
	x.woke += time.Since(start)
	x.wokeMachine = m.ID
	if err == nil {
		return "", nil
	}
	return wakeCode(err), fmt.Errorf("waking machine %s: %w", m.ID, err)
}

// wakeCode maps a Manager error to the client's code.
func wakeCode(err error) Code {
	var be *autostart.BackoffError
	if errors.As(err, &be) && be.Last != nil {
		err = be.Last
	}
	switch {
	case errors.Is(err, autostart.ErrWakeTimeout):
		return CodeWakeTimeout
	case errors.Is(err, autostart.ErrNotStartable), errors.Is(err, autostart.ErrUnknownMachine):
		return CodeNotStartable
	case errors.Is(err, autostart.ErrTooManyWaiters):
		return CodeWakeBusy
	case errors.Is(err, autostart.ErrCanceled), errors.Is(err, autostart.ErrClosed):
		return CodeWakeCanceled
	}
	return CodeWakeFailed
}

// autostarts reports whether the app's machines are started on demand
// (auto_start_machines, Fly's default true).
func (h *Handler) autostarts(app *routing.App) bool {
	return app.Config.HTTPService.AutoStartMachines
}

// pickWoken is the pick when no started machine can take the request and
// wm, stopped or suspended, can be woken. A machine of this node is woken
// here, the request waiting; another edge's goes to its owner, which wakes
// it (the request says it may: see backhaulRequest).
func (h *Handler) pickWoken(ctx context.Context, app *routing.App, x *exchange, wm *routing.Machine) (*routing.Machine, Code, error) {
	if wm.Remote() {
		wm.Acquire()
		x.wakeRemote = true
		return wm, "", nil
	}
	if h.noWakeWait {
		// autostart.max_waiters = 0: nobody waits. The machine starts in
		// the background (a wake whose caller has left goes on) for the
		// requests after this one.
		done, cancel := context.WithCancel(context.Background())
		cancel()
		h.wakes.Wake(done, wm.ID)
		return nil, CodeWakeBusy, fmt.Errorf("machine %s is starting and autostart.max_waiters is 0: no request waits", wm.ID)
	}
	if code, err := h.wake(ctx, wm, x); err != nil {
		if ctx.Err() != nil {
			return nil, CodeNoMachine, fmt.Errorf("request ended while machine %s woke: %w", wm.ID, ctx.Err())
		}
		return nil, code, err
	}
	if wm.TryAcquire() {
		return wm, "", nil
	}
	// Woken, and already full (other requests took it first): any
	// started machine will do.
	m, _, err := app.PickWith(x.constraints)
	if err != nil {
		return nil, CodeNoMachine, fmt.Errorf("machine %s woke but has no free slot: %w", wm.ID, err)
	}
	return m, "", nil
}

// softCheckEvery bounds how often a loaded app is checked for a machine to
// start on the soft limit: the check scans the app's machines, and every
// request over the soft limit would ask for it.
const softCheckEvery = 10 * time.Millisecond

// autostartOnSoft asks the Manager to start one more machine of app if
// every started one is over its soft limit (Fly's rule), at most once per
// softCheckEvery.
func (h *Handler) autostartOnSoft(app *routing.App) {
	v, ok := h.softChecks.Load(app.Name)
	if !ok {
		v, _ = h.softChecks.LoadOrStore(app.Name, new(atomic.Int64))
	}
	last := v.(*atomic.Int64)
	now := time.Now().UnixNano()
	prev := last.Load()
	if now-prev < int64(softCheckEvery) || !last.CompareAndSwap(prev, now) {
		return
	}
	h.wakes.AutostartOnSoft(app.Name)
}
