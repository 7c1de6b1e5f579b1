package routing

import "errors"

// ErrInstanceUnavailable: a forced instance is unknown to the app, stopped
// or failing its checks. The caller must not send the request elsewhere.
var ErrInstanceUnavailable = errors.New("routing: the requested machine is not available")

// Constraints narrow a pick, for fly-replay and Fly's request routing
// headers. The zero value is an ordinary pick (nearest region first).
type Constraints struct {
	// Regions are tried in this order, each only while it has a usable
	// machine. When none does, the pick falls back to the nearest region
	// only if AnyRegion is set (fly-prefer-region; "any" in fly-replay);
	// otherwise it fails (fly-force-region).
	Regions   []string
	AnyRegion bool
	// Instance forces one machine: nothing else is tried
	// (fly-force-instance-id, fly-replay instance=).
	Instance string
	// PreferInstance is tried first; if it cannot take the request the
	// pick goes on with the other constraints and reports Unmet
	// (fly-prefer-instance-id, fly-replay prefer_instance=).
	PreferInstance string
	// Exclude lists machines that must not be picked (fly-replay
	// elsewhere=true, retries).
	Exclude []*Machine
}

// Result says how a constrained pick went beyond the machine itself.
type Result struct {
	// PreferredUnavailable is set when PreferInstance was given but another
	// machine was picked (fly-preferred-instance-unavailable).
	PreferredUnavailable bool
}

// PickWith is Pick under constraints. Like Pick it takes a slot on the
// machine it returns. Errors: ErrInstanceUnavailable for a forced instance
// that is missing, stopped or failing; ErrAtCapacity when machines match
// but all are at their hard limit (or requests are queued); ErrNoMachine
// when no machine matches at all.
func (a *App) PickWith(c Constraints) (*Machine, Result, error) {
	var res Result
	if c.Instance != "" {
		m := a.byID[c.Instance]
		switch {
		case m == nil || !m.usable() || excluded(m, c.Exclude):
			return nil, res, ErrInstanceUnavailable
		case !m.TryAcquire():
			return nil, res, ErrAtCapacity
		}
		return m, res, nil
	}
	if c.PreferInstance != "" {
		if m := a.byID[c.PreferInstance]; m != nil && m.usable() && !excluded(m, c.Exclude) && m.TryAcquire() {
			return m, res, nil
		}
		res.PreferredUnavailable = true
	}
	if len(c.Regions) == 0 {
		m, err := a.Pick(c.Exclude...)
		return m, res, err
	}
	if a.queue.Len() == 0 {
		for _, want := range c.Regions {
			for i := range a.regions {
				if a.regions[i].region != want {
					continue
				}
				if m := a.pickIn(&a.regions[i], c.Exclude); m != nil {
					return m, res, nil
				}
			}
		}
	}
	if c.AnyRegion {
		m, err := a.Pick(c.Exclude...)
		return m, res, err
	}
	for _, want := range c.Regions {
		for i := range a.regions {
			if a.regions[i].region == want && a.regions[i].anyUsable(c.Exclude) {
				return nil, res, ErrAtCapacity
			}
		}
	}
	return nil, res, ErrNoMachine
}

// pickIn picks in one region, retrying a lost race for a slot a few times.
func (a *App) pickIn(rs *regionSet, exclude []*Machine) *Machine {
	for try := 0; try < pickTries; try++ {
		m := rs.choose(exclude)
		if m == nil {
			return nil
		}
		if m.TryAcquire() {
			return m
		}
	}
	return nil
}

func (rs *regionSet) anyUsable(exclude []*Machine) bool {
	for _, m := range rs.machines {
		if m.usable() && !excluded(m, exclude) {
			return true
		}
	}
	return false
}

// Regions returns the regions the app has machines in, nearest first.
func (a *App) Regions() []string {
	out := make([]string, len(a.regions))
	for i := range a.regions {
		out[i] = a.regions[i].region
	}
	return out
}

// Any reports whether c constrains the pick at all (it is not the zero
// value).
func (c Constraints) Any() bool {
	return len(c.Regions) > 0 || c.Instance != "" || c.PreferInstance != "" || len(c.Exclude) > 0
}

// Restricts reports whether some usable machines of the app may not be
// picked under c (so a slot freed on any machine will not always do).
func (c Constraints) Restricts() bool {
	return c.Instance != "" || len(c.Exclude) > 0 || (len(c.Regions) > 0 && !c.AnyRegion)
}
