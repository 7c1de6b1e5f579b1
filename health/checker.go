package health

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/godwit/godwit/config"
)

// Target is one machine to check.
type Target struct {
	MachineID string         // the key; Set keeps one target per id
	App       string         // the app's name, for the metric's app label and logs
	Addr      string         // host:port every check connects to
	Checks    []config.Check // HTTP checks
	TCPChecks []config.Check // TCP checks; only GracePeriod, Interval and Timeout apply
	Started   time.Time      // when the machine started; grace periods count from here (zero: long ago)
	// Running, if set, reports whether the machine runs now. A check is
	// skipped (not recorded, not logged) while it does not: a machine
	// stopped on purpose is not failing (Fly does not check it either),
	// and its start is its readiness check.
	Running func() bool
}

// ReportFunc is called on every transition of a machine between passing and
// failing, not on every check, with a reason for logs. It is called from the
// Checker's goroutines, and from the caller of [Checker.MarkFailing] when
// that call makes the machine fail. Calls for one machine come one at a
// time, in the order of the transitions; calls for different machines may
// run concurrently. It must not block, and must not call back into the
// Checker except [Checker.Passing].
type ReportFunc func(machineID string, passing bool, reason string)

// Checker runs the health checks of a set of machines and keeps whether
// each passes. Build it with [NewChecker], give it targets with
// [Checker.Set], and run it with [Checker.Run]. All methods are safe for
// concurrent use.
type Checker struct {
	log           *slog.Logger
	report        ReportFunc
	metrics       *metrics
	dial          dialFunc      // every check connects through it
	probeInterval time.Duration // between passive probes of a machine without checks

	// machines is the current set, by machine id. Passing and MarkFailing
	// read it without locks; Set replaces it under mu. Never nil.
	machines atomic.Pointer[map[string]*machine]

	mu    sync.Mutex      // serialises Set and Run's start and end; guards state and ctx
	state runState        // idle, then running, then stopped
	ctx   context.Context // Run's context while running: the lifetime of every goroutine
	wg    sync.WaitGroup  // every goroutine the Checker started; Run waits for it
}

type runState int

const (
	idle runState = iota
	running
	stopped
)

// NewChecker returns a Checker with no targets that reports transitions to
// report (nil: nobody is told) and registers its metrics on reg (nil:
// none). A nil log discards log records. Nothing runs until [Checker.Run].
func NewChecker(log *slog.Logger, reg prometheus.Registerer, report ReportFunc) *Checker {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if report == nil {
		report = func(string, bool, string) {}
	}
	c := &Checker{
		log:           log,
		report:        report,
		metrics:       newMetrics(reg),
		dial:          (&net.Dialer{}).DialContext,
		probeInterval: passiveProbeInterval,
	}
	c.machines.Store(&map[string]*machine{})
	return c
}

// Run checks the targets until ctx is done, then returns nil once every
// goroutine it started has ended. Targets set before Run start at once;
// later ones start when set. Run may be called once; a second call returns
// an error at once.
func (c *Checker) Run(ctx context.Context) error {
	c.mu.Lock()
	if c.state != idle {
		c.mu.Unlock()
		return errors.New("health: Checker.Run called more than once")
	}
	c.state = running
	c.ctx = ctx
	for _, m := range *c.machines.Load() {
		c.startLocked(m)
	}
	c.mu.Unlock()

	<-ctx.Done()

	c.mu.Lock()
	c.state = stopped
	c.ctx = nil
	c.mu.Unlock()
	c.wg.Wait()
	return nil
}

// Set replaces the set of targets. It is called at start and on every
// config reload, before or while Run runs. A target equal to the current
// one with its MachineID keeps its state and its schedule. A changed target
// keeps its state but restarts its checks from their grace period; a new
// one starts passing. When Set returns, removed targets (and the old checks
// of changed ones) have stopped: their goroutines have ended and they report
// nothing more. Set itself reports nothing, and blocks only until cancelled
// attempts return, which they do at once. If targets holds one MachineID
// twice, the last one wins.
//
// Set keeps its own copy of targets but not of the config.Check values'
// Headers maps, which must not change afterwards.
func (c *Checker) Set(targets []Target) {
	c.mu.Lock()
	defer c.mu.Unlock()

	want := make(map[string]Target, len(targets))
	for _, t := range targets {
		if _, dup := want[t.MachineID]; dup {
			c.log.Warn("duplicate machine in health targets; the last one wins", "machine", t.MachineID)
		}
		t.Checks = slices.Clone(t.Checks)
		t.TCPChecks = slices.Clone(t.TCPChecks)
		want[t.MachineID] = t
	}

	old := *c.machines.Load()
	next := make(map[string]*machine, len(want))
	var (
		added   []*machine
		changed []*machine
		stops   []*run
	)
	for id, t := range want {
		m := old[id]
		if m == nil {
			m = newMachine(t)
			added = append(added, m)
		} else if !sameTarget(m.target, t) {
			changed = append(changed, m)
			stops = append(stops, m.detach(false))
		}
		next[id] = m
	}
	c.machines.Store(&next)
	for id, m := range old {
		if next[id] == nil {
			stops = append(stops, m.detach(true))
		}
	}

	// Cancel every old run first, so that they end together.
	for _, r := range stops {
		if r != nil {
			r.cancel()
		}
	}
	for _, r := range stops {
		if r != nil {
			r.wg.Wait()
		}
	}

	for _, m := range changed {
		m.retarget(want[m.id])
		c.startLocked(m)
	}
	for _, m := range added {
		c.startLocked(m)
	}
}

// MarkFailing records that the request path could not connect to the
// machine (err says why; it may be nil). The machine is failing at once,
// and report is called from this goroutine if it was passing. It stays
// failing until one of its checks passes again; a machine without checks
// is probed with a TCP connect every second until one succeeds. An unknown
// machine is ignored. MarkFailing does not block on I/O.
func (c *Checker) MarkFailing(machineID string, err error) {
	m := (*c.machines.Load())[machineID]
	if m == nil {
		return
	}
	reason := "request path: connect failed"
	if err != nil {
		reason += ": " + err.Error()
	}

	m.mu.Lock()
	if m.removed {
		m.mu.Unlock()
		return
	}
	m.failUntilPass = true
	c.settleLocked(m, reason)
	noChecks := len(m.results) == 0
	m.mu.Unlock()

	if noChecks {
		m.wake()
	}
}

// Passing reports whether the machine passes its checks: true from Set
// until a check fails or MarkFailing is called. It is false for a machine
// not in the current set. It takes no lock.
func (c *Checker) Passing(machineID string) bool {
	m := (*c.machines.Load())[machineID]
	return m != nil && m.passing.Load()
}

// startLocked starts the goroutines checking m if Run is running. c.mu must
// be held.
func (c *Checker) startLocked(m *machine) {
	if c.state != running {
		return
	}
	ctx, cancel := context.WithCancel(c.ctx)
	r := &run{cancel: cancel}

	m.mu.Lock()
	m.run = r
	t := m.target
	held := m.failUntilPass
	m.mu.Unlock()

	for i, chk := range t.Checks {
		p := newHTTPProbe(c.dial, t.Addr, chk)
		c.goRun(r, func() { c.check(ctx, m, r, t, i, p) })
	}
	for i, chk := range t.TCPChecks {
		p := newTCPProbe(c.dial, t.Addr, chk)
		c.goRun(r, func() { c.check(ctx, m, r, t, len(t.Checks)+i, p) })
	}
	if len(t.Checks)+len(t.TCPChecks) == 0 {
		p := newTCPProbe(c.dial, t.Addr, config.Check{Interval: c.probeInterval, Timeout: passiveProbeTimeout})
		c.goRun(r, func() { c.probePassive(ctx, m, r, t, p) })
		if held {
			m.wake()
		}
	}
}

// goRun runs f on a new goroutine owned by both c and r.
func (c *Checker) goRun(r *run, f func()) {
	c.wg.Add(1)
	r.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer r.wg.Done()
		f()
	}()
}

// check runs probe p, the check at index idx of target t, on its schedule
// until ctx is done. r is the run checking t on m.
func (c *Checker) check(ctx context.Context, m *machine, r *run, t Target, idx int, p *probe) {
	if p.close != nil {
		defer p.close()
	}
	timer := time.NewTimer(time.Until(t.Started.Add(p.grace)))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		begin := time.Now()
		if t.Running != nil && !t.Running() {
			timer.Reset(p.interval)
			continue
		}
		err := p.attempt(ctx)
		if ctx.Err() != nil {
			return // stopped mid-attempt: not a result
		}
		c.record(m, r, t.App, idx, p, err)
		timer.Reset(time.Until(begin.Add(p.interval)))
	}
}

// probePassive serves a machine without checks: each time MarkFailing wakes
// it, it runs p every p.interval until an attempt passes or the machine is
// no longer held failing.
func (c *Checker) probePassive(ctx context.Context, m *machine, r *run, t Target, p *probe) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.kick:
		}
		timer := time.NewTimer(p.interval)
		for m.heldFailing(r) {
			select {
			case <-ctx.Done():
				timer.Stop()
				return
			case <-timer.C:
			}
			err := p.attempt(ctx)
			if ctx.Err() != nil {
				timer.Stop()
				return
			}
			c.record(m, r, t.App, -1, p, err)
			timer.Reset(p.interval)
		}
		timer.Stop()
	}
}

// record counts and logs one attempt of p against app's machine m and
// applies its result, unless r is no longer m's run. idx is the check's
// index in m.results, or -1 for a passive probe.
func (c *Checker) record(m *machine, r *run, app string, idx int, p *probe, err error) {
	if err != nil {
		c.metrics.checks.WithLabelValues(app, p.kind, resultFail).Inc()
		c.log.Debug("health check failed", "machine", m.id, "app", app, "check", p.name, "err", err)
	} else {
		c.metrics.checks.WithLabelValues(app, p.kind, resultPass).Inc()
		c.log.Debug("health check passed", "machine", m.id, "app", app, "check", p.name)
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	if m.run != r {
		return // the target changed or was removed while the attempt ran
	}
	reason := p.name + " passed"
	if err != nil {
		reason = err.Error()
	} else {
		m.failUntilPass = false
	}
	if idx >= 0 {
		m.results[idx] = err == nil
	}
	c.settleLocked(m, reason)
}

// settleLocked recomputes whether m passes and, on a change, logs it and
// calls report. m.mu must be held; holding it across report keeps one
// machine's reports in order.
func (c *Checker) settleLocked(m *machine, reason string) {
	passing := !m.failUntilPass && !slices.Contains(m.results, false)
	if passing == m.passing.Load() {
		return
	}
	m.passing.Store(passing)
	if passing {
		c.log.Info("machine passing health checks", "machine", m.id, "app", m.target.App, "reason", reason)
	} else {
		c.log.Warn("machine failing health checks", "machine", m.id, "app", m.target.App, "reason", reason)
	}
	c.report(m.id, passing, reason)
}

// machine is the state of one target. It lives from the Set that adds its
// MachineID to the Set that removes it, across changes of its target.
type machine struct {
	id      string
	passing atomic.Bool   // the last reported state; written under mu
	kick    chan struct{} // capacity 1: wakes probePassive; never closed

	mu            sync.Mutex // guards the fields below; held while report runs
	target        Target     // written under both Checker.mu and mu
	results       []bool     // latest result of each check, Checks then TCPChecks; true before the first attempt
	failUntilPass bool       // failing until a check passes (MarkFailing, or carried over a change of target)
	run           *run       // the goroutines checking target now; nil if none
	removed       bool       // Set dropped the machine; it changes no more
}

// run is the set of goroutines checking one target of one machine.
type run struct {
	cancel context.CancelFunc // stops them
	wg     sync.WaitGroup     // ends when they have all returned
}

func newMachine(t Target) *machine {
	m := &machine{
		id:      t.MachineID,
		kick:    make(chan struct{}, 1),
		target:  t,
		results: allTrue(len(t.Checks) + len(t.TCPChecks)),
	}
	m.passing.Store(true)
	return m
}

// detach disowns m's current run, whose later results will be ignored, and
// returns it (nil if none) for the caller to cancel and wait for. With
// remove, m changes no more.
func (m *machine) detach(remove bool) *run {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.run
	m.run = nil
	if remove {
		m.removed = true
	}
	return r
}

// retarget gives m a new target, with no check results yet. A failing m
// stays failing until one of the new checks passes.
func (m *machine) retarget(t Target) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.passing.Load() {
		m.failUntilPass = true
	}
	m.target = t
	m.results = allTrue(len(t.Checks) + len(t.TCPChecks))
}

// wake asks probePassive to start probing; it never blocks.
func (m *machine) wake() {
	select {
	case m.kick <- struct{}{}:
	default: // already woken
	}
}

// heldFailing reports whether r still checks m and m waits for a passing
// attempt.
func (m *machine) heldFailing(r *run) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.run == r && m.failUntilPass
}

func sameTarget(a, b Target) bool {
	return a.MachineID == b.MachineID &&
		a.App == b.App &&
		a.Addr == b.Addr &&
		a.Started.Equal(b.Started) &&
		slices.EqualFunc(a.Checks, b.Checks, sameCheck) &&
		slices.EqualFunc(a.TCPChecks, b.TCPChecks, sameCheck)
}

func sameCheck(a, b config.Check) bool {
	return a.GracePeriod == b.GracePeriod &&
		a.Interval == b.Interval &&
		a.Timeout == b.Timeout &&
		a.Method == b.Method &&
		a.Path == b.Path &&
		a.Protocol == b.Protocol &&
		a.TLSServerName == b.TLSServerName &&
		a.TLSSkipVerify == b.TLSSkipVerify &&
		maps.Equal(a.Headers, b.Headers)
}

func allTrue(n int) []bool {
	s := make([]bool, n)
	for i := range s {
		s[i] = true
	}
	return s
}
