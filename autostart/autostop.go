package autostart

import (
	"context"
	"sort"
	"time"

	"github.com/godwit/godwit/routing"
)

// Run runs the autostop pass every Options.StopInterval until ctx ends or
// the Manager closes, then returns nil. The stops a pass decides run in
// the Manager's goroutines (Close ends them), not in Run's.
//
// A pass looks at each app whose policy autostops, region by region, at
// this node's own started machines only, and applies Fly's rule:
//
//   - a region with more than one started machine stops
//     excess = n_started − (n_over_soft + 1) of them, the least loaded
//     first; Fly stops one per pass, godwit up to AppPolicy.MaxPerPass;
//   - a region with one started machine stops it when it has nothing in
//     flight;
//   - never below AppPolicy.MinRunning started machines: in the primary
//     region only (ScopePrimary, Fly's) or in every region (ScopeRegion).
//
// A machine woken less than one StopInterval ago counts as started but is
// not stopped yet, so that a machine just woken for a request is not
// stopped by the next pass in the lull after it. Load is the machine's
// in-flight count on this node, requests forwarded by other edges
// included; over soft means at or over its soft limit.
func (m *Manager) Run(ctx context.Context) error {
	tick := time.NewTicker(m.stopInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-m.ctx.Done():
			return nil
		case <-tick.C:
			m.autostop()
		}
	}
}

// autostop is one pass.
func (m *Manager) autostop() {
	defer m.passes.Add(1)
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	for name, pol := range m.apps {
		if pol.Autostop != ModeStop && pol.Autostop != ModeSuspend {
			continue
		}
		a := m.table.App(name)
		if a == nil {
			continue
		}
		byRegion := make(map[string][]candidate)
		for _, rm := range a.Machines() {
			if rm.Remote() || rm.State() != routing.StateStarted {
				continue
			}
			c := candidate{id: rm.ID, inflight: rm.Inflight(), soft: rm.SoftLimit()}
			if rec := m.machines[rm.ID]; rec != nil && rec.state == routing.StateStarted &&
				rec.wake == nil && rec.stop == nil && !rec.unstoppable &&
				(rec.startedAt.IsZero() || now.Sub(rec.startedAt) >= m.stopInterval) {
				c.stoppable = true
			}
			byRegion[rm.Region] = append(byRegion[rm.Region], c)
		}
		for region, cands := range byRegion {
			floor := 0
			if pol.Scope == ScopeRegion || pol.PrimaryRegion == "" || region == pol.PrimaryRegion {
				floor = pol.MinRunning
			}
			for _, id := range planStops(cands, floor, pol.MaxPerPass) {
				if _, err := m.stopLocked(id, pol.Autostop, "autostop"); err != nil {
					m.log.Warn("autostop", "machine", id, "app", name, "err", err)
				}
			}
		}
	}
}

// candidate is one started machine of a region, as the autostop rule sees
// it.
type candidate struct {
	id        string
	inflight  int
	soft      int  // soft limit
	stoppable bool // managed, idle of operations and started long enough
}

// overSoft reports whether the machine is at or over its soft limit (a
// machine with no soft limit is over it with any load).
func (c candidate) overSoft() bool {
	if c.soft > 0 {
		return c.inflight >= c.soft
	}
	return c.inflight > 0
}

// planStops applies the autostop rule to the started machines of one region
// and returns the ids to stop: Fly's excess (a lone machine only without
// load), at most maxPerPass (0: 1) of them, never leaving fewer than floor
// started, the least loaded stoppable ones first (ties by id).
func planStops(cands []candidate, floor, maxPerPass int) []string {
	n := len(cands)
	var k int
	switch {
	case n == 0:
		return nil
	case n == 1:
		if cands[0].inflight == 0 {
			k = 1
		}
	default:
		over := 0
		for _, c := range cands {
			if c.overSoft() {
				over++
			}
		}
		k = min(n-(over+1), max(maxPerPass, 1))
	}
	k = min(k, n-floor)
	if k <= 0 {
		return nil
	}
	var pick []candidate
	for _, c := range cands {
		if c.stoppable {
			pick = append(pick, c)
		}
	}
	sort.Slice(pick, func(i, j int) bool {
		if pick[i].inflight != pick[j].inflight {
			return pick[i].inflight < pick[j].inflight
		}
		return pick[i].id < pick[j].id
	})
	out := make([]string, 0, k)
	for _, c := range pick[:min(k, len(pick))] {
		out = append(out, c.id)
	}
	return out
}

// AutostartOnSoft starts one more machine of app in the background when
// every started machine of the app (on this node or not) is at or over its
// soft limit: Fly's autostart on the soft limit. It picks a stopped or
// suspended machine of this node (suspended first, as it resumes faster)
// in the nearest region that has one, and returns whether it started one.
// The caller's request is not held: it goes on with the running machines.
// One such start per app runs at a time; a call meanwhile returns false.
//
// It re-checks the condition itself and is cheap when there is nothing to
// do (no lock unless a stopped machine of this node exists), so the proxy
// may call it after every pick that landed on a machine over its soft
// limit. An app with no started machine is Wake's case, not this one.
func (m *Manager) AutostartOnSoft(app string) bool {
	a := m.table.App(app)
	if a == nil {
		return false
	}
	running, down := false, false
	for _, rm := range a.Machines() {
		switch st := rm.State(); {
		case st == routing.StateStarted && rm.Healthy() && rm.Reachable():
			if rm.Band() == routing.BelowSoft {
				return false
			}
			running = true
		case !rm.Remote() && (st == routing.StateStopped || st == routing.StateSuspended):
			down = true
		}
	}
	if !running || !down {
		return false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed || m.softWake[app] {
		return false
	}
	for _, region := range a.Regions() {
		var best *machine
		var bestID string
		for _, rm := range a.Machines() {
			if rm.Remote() || rm.Region != region {
				continue
			}
			rec := m.machines[rm.ID]
			if rec == nil || rec.wake != nil || rec.stop != nil {
				continue
			}
			if rec.state == routing.StateSuspended && (best == nil || best.state != routing.StateSuspended) ||
				rec.state == routing.StateStopped && best == nil {
				best, bestID = rec, rm.ID
			}
		}
		if best != nil {
			m.softWake[app] = true
			m.startWakeLocked(bestID, best, app)
			return true
		}
	}
	return false
}
