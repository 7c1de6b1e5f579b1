package proxy

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/godwit/godwit/autostart"
	"github.com/godwit/godwit/config"
	"github.com/godwit/godwit/health"
	"github.com/godwit/godwit/routing"
)

// ReloadReport says what a reload changed.
type ReloadReport struct {
	Apps     int      `json:"apps"`     // apps in the new config
	Machines int      `json:"machines"` // this node's machines in the new config
	Added    []string `json:"added,omitempty"`
	Removed  []string `json:"removed,omitempty"` // drained and stopped, then dropped
	Replaced []string `json:"replaced,omitempty"`
	// Certificates says what became of the TLS certificates: "reloaded"
	// (files read again), "replaced" (a changed [tls] section), or the
	// files that failed to load (they keep their previous certificates).
	Certificates string `json:"certificates,omitempty"`
	// Restart names the config sections that changed but only take
	// effect when the node restarts (listeners, node identity, gossip,
	// backhaul, proxy timeouts, autostart settings, log); the running
	// node keeps their old values.
	Restart []string `json:"restart,omitempty"`
}

// ErrNotRunning: Reload was called on a node that is not serving.
var ErrNotRunning = errors.New("the node is not running")

// reloader is the node's reload state: the config last applied and what
// Run lends it (the context that bounds machine starts, and the group
// that Run waits for).
type reloader struct {
	mu      sync.Mutex // one reload at a time
	cur     *config.Config
	ctx     context.Context // nil: not running
	wg      sync.WaitGroup  // machine starts begun by reloads
	started map[string]time.Time
	source  func() (*config.Config, error)
}

// SetConfigSource gives the node the function that reads its config
// again (the file it was started with): POST /v1/reload and ReloadSource
// call it. Without one, POST /v1/reload answers that reload is not
// available.
func (s *Server) SetConfigSource(load func() (*config.Config, error)) {
	s.reload.mu.Lock()
	s.reload.source = load
	s.reload.mu.Unlock()
}

// ReloadSource reads the config again from the source set by
// SetConfigSource and applies it (Reload). A config that does not load is
// refused with its errors, lines included, and the node keeps running
// with the old one.
func (s *Server) ReloadSource() (*ReloadReport, error) {
	s.reload.mu.Lock()
	load := s.reload.source
	s.reload.mu.Unlock()
	if load == nil {
		return nil, errors.New("this node has no config file to reload")
	}
	next, err := load()
	if err != nil {
		s.log.Error("reload refused: the new config has errors; the old one keeps running", "err", err)
		return nil, err
	}
	return s.Reload(next)
}

// Reload applies next, a validated config, to the running node without
// dropping requests or connections:
//   - apps (hosts, limits, checks, autostart and autostop settings) take
//     effect for the next request; requests in flight finish as they
//     began;
//   - new machines are added (exec ones configured started are started);
//     a machine removed, or changed in app, region, address or driver, is
//     cordoned, drained and stopped first (its in-flight requests finish,
//     up to autostart.drain_timeout), then dropped or re-added;
//   - health checks follow the new config; a machine whose checks did not
//     change keeps its state;
//   - the admin token and the TLS certificates are read again; a changed
//     [tls] section is served once all of its certificates load.
//
// Sections that only take effect at a restart are kept and named in the
// report. A config whose machines cannot be driven (an http driver's token
// missing, say) is refused as a whole: nothing changes.
func (s *Server) Reload(next *config.Config) (*ReloadReport, error) {
	s.reload.mu.Lock()
	defer s.reload.mu.Unlock()
	if s.reload.ctx == nil || s.reload.ctx.Err() != nil {
		return nil, ErrNotRunning
	}
	cur := s.reload.cur
	rep := &ReloadReport{Apps: len(next.Apps), Machines: len(next.Machines), Restart: restartOnly(cur, next)}

	// Everything that can fail is checked before anything changes.
	specs, err := machineSpecs(s.drivers, next)
	if err != nil {
		return nil, s.refuse(err)
	}
	token, err := readAdminToken(next.Admin.TokenFile)
	if err != nil {
		return nil, s.refuse(err)
	}
	// Last of the checks, as it applies what it checked: nothing after it
	// can fail.
	if s.certs != nil {
		if !reflect.DeepEqual(cur.TLS, next.TLS) {
			if err := s.certs.Replace(next.TLS, next.Apps); err != nil {
				return nil, s.refuse(err)
			}
			rep.Certificates = "replaced"
		} else if err := s.certs.Reload(); err != nil {
			// Files that no longer load keep their certificates in
			// service: the rest of the config applies.
			s.log.Error("reload: some tls certificates did not load; they keep the previous ones", "err", err)
			rep.Certificates = "reloaded with errors: " + err.Error()
		} else {
			rep.Certificates = "reloaded"
		}
	}

	oldMachines := make(map[string]config.Machine, len(cur.Machines))
	for _, m := range cur.Machines {
		oldMachines[m.ID] = m
	}
	var stop, boot []string
	for _, m := range next.Machines {
		old, ok := oldMachines[m.ID]
		switch {
		case !ok:
			rep.Added = append(rep.Added, m.ID)
			boot = append(boot, m.ID)
		case !sameMachine(old, m):
			rep.Replaced = append(rep.Replaced, m.ID)
			stop = append(stop, m.ID)
			boot = append(boot, m.ID)
		}
		delete(oldMachines, m.ID)
	}
	for id := range oldMachines {
		rep.Removed = append(rep.Removed, id)
		stop = append(stop, id)
	}
	slices.Sort(rep.Removed)

	// Machines that go away are drained and stopped while still routable
	// from the requests they hold.
	s.stopForReload(stop)

	s.table.Update(next.Apps, next.Machines)
	byID := make(map[string]config.Machine, len(next.Machines))
	for _, m := range next.Machines {
		byID[m.ID] = m
	}
	for _, id := range boot {
		if m := byID[id]; m.Driver.Kind == config.DriverExec {
			if rm := s.table.Machine(id); rm != nil {
				rm.SetState(routing.StateStopped) // not running until started
			}
		}
	}
	s.handler.wakes.Update(specs, appPolicies(next.Apps))
	s.health.Set(healthTargetsSince(next, s.reload.started, time.Now(), s.machineRunning))
	s.handler.dropStalePools(s.table)
	s.adminToken.Store(&token)

	applied := *cur
	applied.Apps, applied.Machines, applied.Admin = next.Apps, next.Machines, next.Admin
	if s.certs != nil {
		applied.TLS.CertFile, applied.TLS.KeyFile, applied.TLS.Certificates = next.TLS.CertFile, next.TLS.KeyFile, next.TLS.Certificates
	}
	s.reload.cur = &applied
	for _, id := range boot {
		if m := byID[id]; m.Driver.Kind == config.DriverExec && m.State != config.StateStopped {
			s.startMachine(id)
		}
	}
	s.log.Info("config reloaded", "apps", rep.Apps, "machines", rep.Machines,
		"added", rep.Added, "removed", rep.Removed, "replaced", rep.Replaced)
	if len(rep.Restart) > 0 {
		s.log.Warn("reload: these sections changed but take effect only at a restart; the old values stay", "sections", rep.Restart)
	}
	return rep, nil
}

func (s *Server) refuse(err error) error {
	err = fmt.Errorf("reload refused, the old config keeps running: %w", err)
	s.log.Error("reload refused", "err", err)
	return err
}

// stopForReload drains and stops the machines ids of this node that run,
// in parallel, and returns once they have (each bounded by the drain and
// kill timeouts).
func (s *Server) stopForReload(ids []string) {
	var wg sync.WaitGroup
	for _, id := range ids {
		rm := s.table.Machine(id)
		if rm == nil || rm.Remote() {
			continue
		}
		switch rm.State() {
		case routing.StateStopped, routing.StateFailed:
			continue
		}
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(s.reload.ctx, s.cfg.Autostart.DrainTimeout+time.Minute)
			defer cancel()
			err := s.handler.wakes.Stop(ctx, id, autostart.ModeStop)
			if err != nil && !errors.Is(err, autostart.ErrStopFailed) {
				s.log.Warn("reload: stopping a machine that left the config", "machine", id, "err", err)
			}
		})
	}
	wg.Wait()
}

// startMachine starts machine id in the background, as at boot: requests
// meanwhile wait for it as for any wake.
func (s *Server) startMachine(id string) {
	ctx := s.reload.ctx
	s.reload.wg.Go(func() {
		if err := s.handler.wakes.Start(ctx, id); err != nil && ctx.Err() == nil {
			s.log.Error("starting a machine failed", "machine", id, "error", err)
		}
	})
}

// sameMachine reports whether a machine's config is unchanged in what
// its identity is: where it runs and how it is driven. Its limits and
// checks belong to its app and change live.
func sameMachine(a, b config.Machine) bool {
	return a.App == b.App && a.Region == b.Region && a.Address == b.Address &&
		reflect.DeepEqual(a.Driver, b.Driver)
}

// restartOnly names the sections of next that differ from cur and that a
// reload cannot apply.
func restartOnly(cur, next *config.Config) []string {
	var out []string
	for _, f := range []struct {
		name   string
		before any
		after  any
	}{
		{"node", cur.Node, next.Node},
		{"listen", cur.Listen, next.Listen},
		{"log", cur.Log, next.Log},
		{"gossip", cur.Gossip, next.Gossip},
		{"backhaul", cur.Backhaul, next.Backhaul},
		{"region_coords", cur.RegionCoords, next.RegionCoords},
		{"proxy", cur.Proxy, next.Proxy},
		{"tls.reload_interval", cur.TLS.ReloadInterval, next.TLS.ReloadInterval},
		{"autostart", cur.Autostart, next.Autostart},
	} {
		if !reflect.DeepEqual(f.before, f.after) {
			out = append(out, f.name)
		}
	}
	return out
}

// dropStalePools closes the connection pools of machines that are no
// longer in the table (removed or replaced by a reload). Requests in
// flight on them keep their connections; those go when they end.
func (h *Handler) dropStalePools(t *routing.Table) {
	h.pools.Range(func(k, u any) bool {
		m := k.(*routing.Machine)
		if t.Machine(m.ID) != m {
			h.pools.Delete(k)
			u.(*upstream).closeIdle(time.Time{}, true)
		}
		return true
	})
}

// healthTargetsSince lists the node's machines and their app's checks.
// started remembers when each machine was first listed, so that a reload
// leaves the grace period of a machine it did not change where it was; it
// is updated in place.
//
// running reports whether a machine runs now: checks skip one that does
// not (health.Target.Running).
func healthTargetsSince(cfg *config.Config, started map[string]time.Time, now time.Time, running func(id string) bool) []health.Target {
	apps := make(map[string]config.App, len(cfg.Apps))
	for _, a := range cfg.Apps {
		apps[a.Name] = a
	}
	seen := make(map[string]bool, len(cfg.Machines))
	var ts []health.Target
	for _, m := range cfg.Machines {
		seen[m.ID] = true
		since, ok := started[m.ID]
		if !ok {
			since = now
			started[m.ID] = now
		}
		a := apps[m.App]
		ts = append(ts, health.Target{
			MachineID: m.ID, App: m.App, Addr: m.Address,
			Checks: a.HTTPService.Checks, TCPChecks: a.HTTPService.TCPChecks,
			Started: since,
			Running: func() bool { return running(m.ID) },
		})
	}
	for id := range started {
		if !seen[id] {
			delete(started, id)
		}
	}
	return ts
}

// readAdminToken reads the admin API's bearer token from path ("" : no
// token). The file holds the token, surrounding space trimmed; an empty
// one is an error, not an open API.
func readAdminToken(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	b, err := config.ReadRegularFile(path, 64<<10)
	if err != nil {
		return "", fmt.Errorf("admin.token_file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("admin.token_file %s is empty", path)
	}
	return tok, nil
}

// machineRunning reports whether machine id of this node runs: started
// (a machine whose state is not known here is taken to run).
func (s *Server) machineRunning(id string) bool {
	m := s.table.Machine(id)
	return m == nil || m.Remote() || m.State() == routing.StateStarted
}
