package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/godwit/godwit/autostart"
	"github.com/godwit/godwit/config"
	"github.com/godwit/godwit/routing"
)

// machineDrivers builds the drivers of this node's machines and their
// specs from config, checking what can be checked before they run (an http
// driver's token, say).
func machineDrivers(cfg *config.Config, log *slog.Logger) (*autostart.Drivers, []autostart.Spec, error) {
	drivers := autostart.NewDrivers(autostart.DriverOptions{
		Exec:   autostart.ExecOptions{Log: log},
		HTTP:   autostart.HTTPOptions{Log: log},
		Getenv: os.Getenv,
	})
	specs, err := machineSpecs(drivers, cfg)
	if err != nil {
		drivers.Close()
		return nil, nil, err
	}
	return drivers, specs, nil
}

// machineSpecs builds the specs of cfg's machines for drivers (at boot and
// on a reload).
func machineSpecs(drivers *autostart.Drivers, cfg *config.Config) ([]autostart.Spec, error) {
	apps := make(map[string]config.App, len(cfg.Apps))
	for _, a := range cfg.Apps {
		apps[a.Name] = a
	}
	specs := make([]autostart.Spec, 0, len(cfg.Machines))
	for _, m := range cfg.Machines {
		s, err := drivers.SpecFor(m, apps[m.App])
		if err != nil {
			return nil, fmt.Errorf("machine %s: %w", m.ID, err)
		}
		specs = append(specs, s)
	}
	return specs, nil
}

// newWakes builds the Manager that starts this node's machines on demand
// and stops idle ones; h's goAwayTunnels and machineGone are its
// BeforeStop and Gone. It runs goroutines: Server.Run makes it.
func newWakes(cfg *config.Config, table *routing.Table, drivers *autostart.Drivers, specs []autostart.Spec, h *Handler, log *slog.Logger, reg prometheus.Registerer) (*autostart.Manager, error) {
	ready := func(ctx context.Context, s *autostart.Spec) error {
		// The app's config as of now: a reload may have changed its checks.
		var app config.App
		if a := table.App(s.App); a != nil {
			app = a.Config
		}
		return readyCheck(ctx, s, app)
	}
	as := cfg.Autostart
	return autostart.New(autostart.Options{
		Table:        table,
		Driver:       drivers,
		Machines:     specs,
		Apps:         appPolicies(cfg.Apps),
		WakeTimeout:  as.WakeTimeout,
		MaxWaiters:   max(as.MaxWaiters, 1),
		Ready:        ready,
		DrainTimeout: as.DrainTimeout,
		BeforeStop:   h.goAwayTunnels,
		Gone:         h.machineGone,
		StopInterval: as.StopInterval,
		RecentStop:   as.RecentStop,
		Log:          log,
		Registerer:   reg,
	})
}

// appPolicies maps every app to its autostop settings.
func appPolicies(apps []config.App) map[string]autostart.AppPolicy {
	policies := make(map[string]autostart.AppPolicy, len(apps))
	for _, a := range apps {
		policies[a.Name] = appPolicy(a)
	}
	return policies
}

// appPolicy is an app's autostop settings.
func appPolicy(a config.App) autostart.AppPolicy {
	hs := a.HTTPService
	p := autostart.AppPolicy{MinRunning: hs.MinMachinesRunning, MaxPerPass: hs.AutostopMaxPerPass, PrimaryRegion: a.PrimaryRegion}
	switch hs.AutoStopMachines {
	case config.AutoStopStop:
		p.Autostop = autostart.ModeStop
	case config.AutoStopSuspend:
		p.Autostop = autostart.ModeSuspend
	}
	if hs.MinMachinesRunningScope == config.MinMachinesScopeRegion {
		p.Scope = autostart.ScopeRegion
	}
	return p
}

// readyCheck is one readiness attempt on a waking machine: its app's first
// HTTP check when it has one (a 2xx passes, as Fly's checks), else a TCP
// connect to its address.
func readyCheck(ctx context.Context, s *autostart.Spec, app config.App) error {
	if len(app.HTTPService.Checks) == 0 {
		return autostart.DialReady(ctx, s)
	}
	chk := app.HTTPService.Checks[0]
	scheme := "http"
	if chk.Protocol == config.CheckHTTPS {
		scheme = "https"
	}
	ctx, cancel := context.WithTimeout(ctx, chk.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, chk.Method, scheme+"://"+s.Addr+chk.Path, nil)
	if err != nil {
		return err
	}
	for k, v := range chk.Headers {
		req.Header.Set(k, v)
	}
	resp, err := readyClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("check %s %s: status %d", chk.Method, chk.Path, resp.StatusCode)
	}
	return nil
}

// readyClient makes readiness checks: no keep-alive (a machine just
// started), certificates not verified (as Fly's https checks).
var readyClient = &http.Client{
	Transport: &http.Transport{
		DisableKeepAlives: true,
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true},
	},
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	Timeout:       10 * time.Second,
}

// machineGone is the autostart Manager's Gone: the machine's process has
// ended, so its idle connections are dead. Closing them now, rather than
// finding out on the next request, saves every request after a cold start
// a failed write and a second connect (bench/wake: 50 waiters each hit one).
func (h *Handler) machineGone(id string) {
	if m := h.table.Machine(id); m != nil {
		if u, ok := h.pools.Load(m); ok {
			u.(*upstream).dropIdle()
		}
	}
}
