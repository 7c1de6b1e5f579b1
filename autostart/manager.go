package autostart

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/godwit/godwit/routing"
)

// Defaults for Options' zero values.
const (
	// DefaultWakeTimeout bounds one wake: the driver's start and the wait
	// for the first passing check. Fly does not document its own (PM03);
	// 30 s covers a slow cold start (a JVM, a large Rails app) and is still
	// shorter than most clients' patience.
	DefaultWakeTimeout = 30 * time.Second
	// DefaultMaxWaiters is the number of callers of Wake that may wait at
	// once for the machines of one app.
	DefaultMaxWaiters = 1000
	// DefaultReadyInterval is the pause between readiness attempts during
	// a wake: fast, unlike the checks' normal interval.
	DefaultReadyInterval = 25 * time.Millisecond
	// DefaultBackoffMin and DefaultBackoffMax bound the pause after a failed
	// wake, during which further wakes fail at once: it starts at the
	// minimum and doubles with each consecutive failure up to the maximum.
	DefaultBackoffMin = time.Second
	DefaultBackoffMax = 30 * time.Second
	// DefaultDrainTimeout bounds the wait for a cordoned machine's
	// in-flight requests before it is stopped anyway.
	DefaultDrainTimeout = 10 * time.Second
	// DefaultStopInterval is the period of the autostop pass. Fly runs its
	// own "every few minutes".
	DefaultStopInterval = time.Minute
	// DefaultRecentStop is the window of RecentlyStopped: Fly's PM11 uses
	// five minutes.
	DefaultRecentStop = 5 * time.Minute
)

const (
	readyAttemptTimeout = time.Second           // bound on one readiness attempt
	drainPoll           = 10 * time.Millisecond // in-flight count sampling during a drain
	defaultKillTimeout  = 5 * time.Second       // Spec.KillTimeout when unset, as Fly's
	stopCallSlack       = 10 * time.Second      // a driver's stop is given KillTimeout plus this
)

// Errors of Wake, Start and Stop, for the proxy to turn into a status and a
// code. Wake's errors wrap exactly one of them (a BackoffError is
// ErrBackoff); ErrCanceled also wraps the caller's context error.
var (
	// ErrWakeTimeout: the machine was not ready within the wake timeout
	// (Fly's PM03). The machine is failed and backs off.
	ErrWakeTimeout = errors.New("autostart: machine wake timed out")
	// ErrStartFailed: the driver failed to start the machine, or the
	// machine exited during its start (Fly's PM01). The machine is failed
	// and backs off.
	ErrStartFailed = errors.New("autostart: machine start failed")
	// ErrNotStartable: the machine's driver cannot start it (the none
	// driver: it is managed elsewhere; Fly's PM08).
	ErrNotStartable = errors.New("autostart: machine cannot be started by its driver")
	// ErrCanceled: the caller stopped waiting (its context ended) or the
	// Manager closed (Fly's PM10). The start itself goes on for the others.
	ErrCanceled = errors.New("autostart: wake canceled")
	// ErrTooManyWaiters: Options.MaxWaiters callers already wait for
	// machines of the app.
	ErrTooManyWaiters = errors.New("autostart: too many requests waiting for the app's machines to wake")
	// ErrBackoff: the machine's last start failed and it is not tried
	// again before the backoff ends. The error is a *BackoffError.
	ErrBackoff = errors.New("autostart: machine failed recently and is backing off")
	// ErrUnknownMachine: the id is not one of this node's machines.
	ErrUnknownMachine = errors.New("autostart: not a machine of this node")
	// ErrStopFailed: the driver failed to stop or suspend the machine
	// (Fly's PM07). The machine is failed.
	ErrStopFailed = errors.New("autostart: machine stop failed")
	// ErrClosed: the Manager is closed.
	ErrClosed = errors.New("autostart: manager closed")
)

// BackoffError is Wake's error during a failed machine's backoff. It is
// ErrBackoff for errors.Is; Last is the failure that started the backoff
// (wrapping ErrWakeTimeout or ErrStartFailed), for the message and code.
type BackoffError struct {
	Machine string
	Until   time.Time // the next wake after this calls the driver again
	Last    error
}

func (e *BackoffError) Error() string {
	return fmt.Sprintf("autostart: machine %s failed recently, not started again before %s: %v",
		e.Machine, e.Until.Format(time.RFC3339Nano), e.Last)
}

// Is makes a BackoffError match ErrBackoff.
func (e *BackoffError) Is(target error) bool { return target == ErrBackoff }

// StopMode says what stopping a machine does. The zero value is ModeOff.
type StopMode uint8

// Stop modes: Fly's auto_stop_machines values.
const (
	ModeOff     StopMode = iota // never autostopped; not a mode for Stop
	ModeStop                    // stopped: a wake is a cold start
	ModeSuspend                 // suspended: a wake resumes it; falls back to stop where the driver cannot suspend
)

func (m StopMode) String() string {
	switch m {
	case ModeOff:
		return "off"
	case ModeStop:
		return "stop"
	case ModeSuspend:
		return "suspend"
	}
	return "unknown"
}

// Scope says where an app's MinRunning holds.
type Scope uint8

// Scopes of min_machines_running.
const (
	// ScopePrimary is Fly's: MinRunning machines stay started in the
	// primary region; other regions may stop all of theirs.
	ScopePrimary Scope = iota
	// ScopeRegion is godwit's opt-in: MinRunning machines stay started in
	// every region that has machines.
	ScopeRegion
)

// AppPolicy is one app's autostop settings. The zero value never
// autostops.
type AppPolicy struct {
	Autostop   StopMode // ModeOff (never), ModeStop or ModeSuspend
	MinRunning int      // min_machines_running; applies where Scope says
	Scope      Scope
	// MaxPerPass bounds the machines of one region stopped in one pass;
	// 0 means 1, Fly's.
	MaxPerPass int
	// PrimaryRegion is the app's primary_region; "" makes MinRunning hold
	// in every region.
	PrimaryRegion string
}

// Options configure a Manager. Zero values take the defaults above.
type Options struct {
	Table  *routing.Table // required: the machines' routing state is kept in step here
	Driver Driver         // required

	// Machines are this node's machines the Manager starts and stops; Apps
	// the autostop settings by app name (an app absent is never
	// autostopped). Update replaces both.
	Machines []Spec
	Apps     map[string]AppPolicy

	WakeTimeout   time.Duration // one wake, driver and readiness; default DefaultWakeTimeout
	MaxWaiters    int           // Wake callers waiting at once per app; default DefaultMaxWaiters
	ReadyInterval time.Duration // the longest pause between readiness attempts (they start 1 ms apart); default DefaultReadyInterval
	// Ready makes one readiness attempt on a starting machine: nil error
	// means ready. The integration runs the app's HTTP checks here when it
	// has some; nil means a TCP connect to Spec.Addr. Each attempt is
	// bounded by ctx (at most one second).
	Ready      func(ctx context.Context, s *Spec) error
	BackoffMin time.Duration // first pause after a failed wake; default DefaultBackoffMin
	BackoffMax time.Duration // longest pause; default DefaultBackoffMax

	DrainTimeout time.Duration // wait for in-flight requests of a stopping machine; default DefaultDrainTimeout
	// BeforeStop, if set, is called once a stopping machine is cordoned,
	// before its in-flight requests are drained: the proxy sends
	// WebSocket close frames there, so long-lived tunnels end instead of
	// holding the drain for DrainTimeout. It must not block long.
	BeforeStop func(id string)
	// Gone, if set, is called once a machine's process has ended: stopped
	// (not suspended) by the Manager, or exited on its own. The proxy
	// closes its idle connections to the machine there: each would fail
	// the next request sent on it (and cost a retry on a new connection)
	// after the machine starts again. It is called without the Manager's
	// lock and must not block long.
	Gone         func(id string)
	StopInterval time.Duration // autostop period; default DefaultStopInterval
	RecentStop   time.Duration // RecentlyStopped's window; default DefaultRecentStop

	Log        *slog.Logger          // default slog.Default()
	Registerer prometheus.Registerer // nil registers no metrics
	// Now is the clock of states, backoffs, RecentlyStopped and the
	// autostop's uptime rule; default time.Now. Timeouts use real time.
	Now func() time.Time
}

// Manager knows the lifecycle state of this node's machines and starts and
// stops them through a Driver: Wake on demand (one start for any number of
// waiters), Stop with a cordon and a drain, the autostop pass (Run) and
// the start of one more machine when every started one is over its soft
// limit (AutostartOnSoft). It keeps each machine's routing.Machine in step
// with the lifecycle state, which the table signals to gossip.
//
// All methods are safe for concurrent use. The driver is called for one
// machine by one operation at a time, in the order the operations were
// asked for. Every goroutine the Manager starts ends by Close.
type Manager struct {
	table      *routing.Table
	driver     Driver
	log        *slog.Logger
	met        *metrics
	now        func() time.Time
	ready      func(ctx context.Context, s *Spec) error
	beforeStop func(id string)
	gone       func(id string)

	wakeTimeout   time.Duration
	readyInterval time.Duration
	backoffMin    time.Duration
	backoffMax    time.Duration
	drainTimeout  time.Duration
	stopInterval  time.Duration
	recentStop    time.Duration
	maxWaiters    int

	ctx    context.Context // the lifetime of every goroutine; Close cancels it
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine started; Close waits for it
	passes atomic.Int64   // autostop passes done

	mu       sync.Mutex
	closed   bool
	machines map[string]*machine
	apps     map[string]AppPolicy
	waiters  map[string]int  // Wake callers waiting, by app
	softWake map[string]bool // by app: an AutostartOnSoft start is under way
}

// machine is the Manager's record of one machine. Its fields are guarded
// by Manager.mu.
type machine struct {
	spec      *Spec // replaced, never modified, by Update
	state     routing.State
	since     time.Time // of the last state change
	reason    string    // of the last state change
	failedAt  time.Time
	failure   string
	lastErr   error         // the failure that set the backoff
	backoff   time.Duration // the current pause; 0 after a success
	retryAt   time.Time     // end of the backoff
	startedAt time.Time     // of the last successful wake
	stoppedAt time.Time     // of the last stop or suspend
	// unstoppable: the driver said it cannot stop the machine (none);
	// the autostop leaves it alone.
	unstoppable bool

	wake *wakeOp // the wake waiters join, until it reports
	stop *stopOp // the stop callers join, until it reports
	// tail is closed when the last operation scheduled on the machine has
	// finished with its driver; the next one waits for it. nil: none.
	tail chan struct{}
}

// wakeOp is one start shared by every waiter.
type wakeOp struct {
	after    chan struct{} // the previous operation's finished, or nil
	finished chan struct{} // closed when the op is done with the driver
	done     chan struct{} // closed when err is set: waiters return
	err      error
	exited   chan struct{} // closed when the driver reports an exit during the start
	exitSeen bool          // exited is closed; guarded by Manager.mu
	softApp  string        // an AutostartOnSoft start: the app whose flag it clears
}

// stopOp is one stop or suspend shared by every caller.
type stopOp struct {
	mode     StopMode
	reason   string
	from     routing.State // the state before the cordon
	after    chan struct{}
	finished chan struct{}
	done     chan struct{}
	err      error
}

// errExited is a start's error when the machine exits before it is ready.
var errExited = errors.New("machine exited during its start")

// New returns a Manager for the machines in opts. It starts one goroutine
// when the driver reports exits (Exits); Close ends it.
func New(opts Options) (*Manager, error) {
	if opts.Table == nil || opts.Driver == nil {
		return nil, errors.New("autostart: Options.Table and Options.Driver are required")
	}
	m := &Manager{
		table:         opts.Table,
		driver:        opts.Driver,
		log:           opts.Log,
		met:           newMetrics(opts.Registerer),
		now:           opts.Now,
		ready:         opts.Ready,
		beforeStop:    opts.BeforeStop,
		gone:          opts.Gone,
		wakeTimeout:   positive(opts.WakeTimeout, DefaultWakeTimeout),
		readyInterval: positive(opts.ReadyInterval, DefaultReadyInterval),
		backoffMin:    positive(opts.BackoffMin, DefaultBackoffMin),
		backoffMax:    positive(opts.BackoffMax, DefaultBackoffMax),
		drainTimeout:  positive(opts.DrainTimeout, DefaultDrainTimeout),
		stopInterval:  positive(opts.StopInterval, DefaultStopInterval),
		recentStop:    positive(opts.RecentStop, DefaultRecentStop),
		maxWaiters:    opts.MaxWaiters,
		machines:      make(map[string]*machine),
		waiters:       make(map[string]int),
		softWake:      make(map[string]bool),
	}
	if m.log == nil {
		m.log = slog.Default()
	}
	if m.now == nil {
		m.now = time.Now
	}
	if m.ready == nil {
		m.ready = DialReady
	}
	if m.maxWaiters <= 0 {
		m.maxWaiters = DefaultMaxWaiters
	}
	m.backoffMax = max(m.backoffMax, m.backoffMin)
	m.ctx, m.cancel = context.WithCancel(context.Background())
	m.Update(opts.Machines, opts.Apps)
	if ex, ok := opts.Driver.(Exits); ok {
		m.wg.Add(1)
		go m.watchExits(ex.Exits())
	}
	return m, nil
}

func positive(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// DialReady is the readiness of a machine without checks: its address
// accepts a TCP connection.
func DialReady(ctx context.Context, s *Spec) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", s.Addr)
	if err != nil {
		return err
	}
	return c.Close()
}

// Close cancels the operations under way (their waiters get ErrCanceled)
// and returns once every goroutine of the Manager has ended. Later calls
// fail with ErrClosed. Close is idempotent.
func (m *Manager) Close() error {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	m.cancel()
	m.wg.Wait()
	return nil
}

// Update replaces the machines and the apps' autostop settings (a config
// reload). A machine that keeps its id keeps its state, backoff and the
// operations under way (which finish with the spec they started with);
// a new one takes its state from the routing table. The routing table is
// expected to have been updated first: its machines are given the
// Manager's states.
func (m *Manager) Update(machines []Spec, apps map[string]AppPolicy) {
	m.mu.Lock()
	defer m.mu.Unlock()
	next := make(map[string]*machine, len(machines))
	for i := range machines {
		s := machines[i]
		rm := m.table.Machine(s.ID)
		if rm != nil && rm.Remote() {
			rm = nil
		}
		rec := m.machines[s.ID]
		if rec == nil {
			rec = &machine{state: routing.StateStopped, since: m.now(), reason: "configured"}
			if rm != nil {
				rec.state = rm.State()
			}
		} else if rm != nil {
			rm.SetState(rec.state) // a routing machine rebuilt from config
		}
		rec.spec = &s
		next[s.ID] = rec
	}
	m.machines = next
	m.apps = make(map[string]AppPolicy, len(apps))
	for name, p := range apps {
		m.apps[name] = p
	}
}

// Wake makes sure machine id is started and ready, starting it if needed,
// and returns nil once it is. A started machine returns at once. Callers
// for the same machine share one start: the driver is called once however
// many wait. A stopping machine is started again once its stop has ended.
//
// The start is bounded by Options.WakeTimeout from its beginning; its
// readiness is the first passing Options.Ready attempt, polled every
// Options.ReadyInterval. When the caller's ctx ends it stops waiting
// (ErrCanceled) but the start goes on for the other waiters, and even when
// none is left: a machine asked for is likely wanted again soon, and the
// autostop pass stops it if not.
//
// Errors: ErrTooManyWaiters at once when Options.MaxWaiters callers
// already wait for the app; a *BackoffError (ErrBackoff) at once during a
// failed machine's backoff; ErrWakeTimeout, ErrStartFailed or
// ErrNotStartable when the start fails; ErrCanceled; ErrUnknownMachine;
// ErrClosed.
func (m *Manager) Wake(ctx context.Context, id string) error {
	return m.wake(ctx, id, false)
}

// Start is the admin API's start: Wake, except that it ignores a failed
// machine's backoff.
func (m *Manager) Start(ctx context.Context, id string) error {
	return m.wake(ctx, id, true)
}

func (m *Manager) wake(ctx context.Context, id string, admin bool) error {
	if rm := m.table.Machine(id); rm != nil && !rm.Remote() && rm.Started() {
		return nil // the common case, without the lock
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return ErrClosed
	}
	rec := m.machines[id]
	if rec == nil {
		m.mu.Unlock()
		return fmt.Errorf("%w: %s", ErrUnknownMachine, id)
	}
	if rec.state == routing.StateStarted && rec.stop == nil {
		m.mu.Unlock()
		return nil
	}
	app := rec.spec.App
	if n := m.waiters[app]; n >= m.maxWaiters {
		m.mu.Unlock()
		m.met.wake(outcomeTooManyWaiters)
		return fmt.Errorf("%w: app %s, %d waiting", ErrTooManyWaiters, app, n)
	}
	op := rec.wake
	if op == nil {
		if !admin && rec.state == routing.StateFailed && m.now().Before(rec.retryAt) {
			err := &BackoffError{Machine: id, Until: rec.retryAt, Last: rec.lastErr}
			m.mu.Unlock()
			m.met.wake(outcomeBackoff)
			return err
		}
		op = m.startWakeLocked(id, rec, "")
	}
	m.waiters[app]++
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		if m.waiters[app]--; m.waiters[app] <= 0 {
			delete(m.waiters, app)
		}
		m.mu.Unlock()
	}()
	select {
	case <-op.done:
		m.met.wake(outcomeOf(op.err))
		return op.err
	case <-ctx.Done():
		m.met.wake(outcomeCanceled)
		return fmt.Errorf("%w: machine %s: caller gone: %w", ErrCanceled, id, context.Cause(ctx))
	}
}

// startWakeLocked schedules a wake of rec after the operations already
// scheduled on it; softApp marks an AutostartOnSoft start. Called with m.mu
// held and m not closed.
func (m *Manager) startWakeLocked(id string, rec *machine, softApp string) *wakeOp {
	op := &wakeOp{
		softApp:  softApp,
		after:    rec.tail,
		finished: make(chan struct{}),
		done:     make(chan struct{}),
		exited:   make(chan struct{}),
	}
	rec.tail = op.finished
	rec.wake = op
	m.wg.Add(1)
	go m.runWake(id, rec, op)
	return op
}

// runWake is the goroutine of one wake.
func (m *Manager) runWake(id string, rec *machine, op *wakeOp) {
	defer m.wg.Done()
	defer close(op.finished)
	ctx, cancel := context.WithTimeout(m.ctx, m.wakeTimeout)
	defer cancel()
	if op.after != nil {
		select {
		case <-op.after:
		case <-ctx.Done():
			// The operation before (a stop draining) outlasted the wake.
			// The waiters hear it now; the machine is not touched, and
			// this op still waits its turn so that later ones keep order.
			err := m.wakeError(id, "waiting for the machine's stop to end", nil, true)
			if m.ctx.Err() != nil {
				err = fmt.Errorf("%w: machine %s: %w", ErrCanceled, id, ErrClosed)
			}
			m.mu.Lock()
			m.reportWakeLocked(rec, op, err)
			m.mu.Unlock()
			select {
			case <-op.after:
			case <-m.ctx.Done():
			}
			return
		}
	}

	m.mu.Lock()
	prev, spec := rec.state, rec.spec
	if prev == routing.StateStarted {
		m.reportWakeLocked(rec, op, nil)
		m.mu.Unlock()
		return
	}
	m.setStateLocked(id, rec, routing.StateStarting, "wake")
	m.mu.Unlock()

	began := time.Now()
	err := m.driver.Start(ctx, spec)
	started := err == nil
	if started {
		err = m.waitReady(ctx, spec, op)
	}
	took := time.Since(began)

	m.mu.Lock()
	switch {
	case err == nil:
		kind := kindCold
		if prev == routing.StateSuspended {
			kind = kindResume
		}
		m.met.wakeDuration.WithLabelValues(kind).Observe(took.Seconds())
		rec.backoff, rec.retryAt, rec.startedAt = 0, time.Time{}, m.now()
		m.setStateLocked(id, rec, routing.StateStarted, fmt.Sprintf("woken (%s) in %v", kind, took.Round(time.Millisecond)))
	case m.ctx.Err() != nil:
		err = fmt.Errorf("%w: machine %s: %w", ErrCanceled, id, ErrClosed)
		m.setStateLocked(id, rec, routing.StateFailed, "start canceled: manager closed")
	case errors.Is(err, ErrUnsupported):
		err = fmt.Errorf("%w: machine %s: %w", ErrNotStartable, id, err)
		m.setStateLocked(id, rec, prev, "start not supported by the driver")
	default:
		what := "start failed"
		if started {
			what = "not ready"
		}
		timedOut := ctx.Err() != nil && !errors.Is(err, errExited)
		err = m.wakeError(id, what, err, timedOut)
		m.failLocked(id, rec, err)
	}
	m.reportWakeLocked(rec, op, err)
	m.mu.Unlock()

	if err != nil && started && m.ctx.Err() == nil {
		// A machine that started but never became ready is stopped again,
		// so that the next wake starts it afresh and nothing runs unseen.
		sctx, cancel := context.WithTimeout(m.ctx, killTimeout(spec)+stopCallSlack)
		if serr := m.driver.Stop(sctx, spec); serr != nil {
			m.log.Warn("machine stop after a failed wake", "machine", id, "app", spec.App, "err", serr)
		}
		cancel()
	}
}

// wakeError describes a failed wake: the wake timeout (whatever the
// driver or the last readiness attempt said then), or the start's failure.
// cause may be nil.
func (m *Manager) wakeError(id, what string, cause error, timedOut bool) error {
	kind, after := ErrStartFailed, ""
	if timedOut {
		kind, after = ErrWakeTimeout, " after "+m.wakeTimeout.String()
	}
	if cause == nil {
		return fmt.Errorf("%w: machine %s%s: %s", kind, id, after, what)
	}
	return fmt.Errorf("%w: machine %s%s: %s: %w", kind, id, after, what, cause)
}

// failLocked marks rec failed with err and starts or lengthens its
// backoff.
func (m *Manager) failLocked(id string, rec *machine, err error) {
	now := m.now()
	if rec.backoff == 0 {
		rec.backoff = m.backoffMin
	} else {
		rec.backoff = min(2*rec.backoff, m.backoffMax)
	}
	rec.retryAt = now.Add(rec.backoff)
	rec.lastErr = err
	rec.failedAt, rec.failure = now, err.Error()
	m.setStateLocked(id, rec, routing.StateFailed, err.Error())
}

// reportWakeLocked gives the waiters of op its result; later Wake calls
// start a new one.
func (m *Manager) reportWakeLocked(rec *machine, op *wakeOp, err error) {
	if rec.wake == op {
		rec.wake = nil
	}
	if op.softApp != "" {
		delete(m.softWake, op.softApp)
		m.met.wake(outcomeOf(err))
	}
	op.err = err
	close(op.done)
}

// waitReady polls the starting machine until a readiness attempt passes,
// ctx ends (the wake timeout) or the driver reports that the machine
// exited.
func (m *Manager) waitReady(ctx context.Context, spec *Spec, op *wakeOp) error {
	// Attempts come quickly at first and then less often: the pause is a
	// tenth of the time waited so far, at least readyPollMin and at most
	// the ready interval, so a machine ready after t is seen ready at
	// most max(1 ms, t/10) later (a fixed 25 ms poll cost a 9 ms cold
	// start 24 ms: bench/wake).
	start := time.Now()
	pause := time.NewTimer(0)
	defer pause.Stop()
	<-pause.C
	var last error // the last attempt's failure not caused by the wake's end
	for {
		select {
		case <-op.exited:
			return errExited
		default:
		}
		actx, cancel := context.WithTimeout(ctx, readyAttemptTimeout)
		err := m.ready(actx, spec)
		cancel()
		if err == nil {
			return nil
		}
		if last == nil || !expired(ctx) {
			last = err
		}
		pause.Reset(min(max(time.Since(start)/10, readyPollMin), m.readyInterval))
		select {
		case <-op.exited:
			return errExited
		case <-ctx.Done():
			return fmt.Errorf("%w (last attempt: %v)", ctx.Err(), last)
		case <-pause.C:
		}
	}
}

// readyPollMin is the shortest pause between readiness attempts.
const readyPollMin = time.Millisecond

// expired reports whether ctx has ended or reached its deadline (an
// attempt cut short by the deadline may fail before ctx's Err is set).
func expired(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	dl, ok := ctx.Deadline()
	return ok && !time.Now().Before(dl)
}

// watchExits follows the driver's reports of machines that exited.
func (m *Manager) watchExits(ch <-chan string) {
	defer m.wg.Done()
	for {
		select {
		case <-m.ctx.Done():
			return
		case id, ok := <-ch:
			if !ok {
				return
			}
			m.exited(id)
		}
	}
}

// exited handles a machine that stopped on its own: a starting one fails
// its wake at once; a started one is stopped (the next request wakes it).
// Exits of machines stopping or already down are the Manager's own doing.
func (m *Manager) exited(id string) {
	m.mu.Lock()
	rec := m.machines[id]
	if rec == nil {
		m.mu.Unlock()
		return
	}
	switch rec.state {
	case routing.StateStarting:
		if op := rec.wake; op != nil && !op.exitSeen {
			op.exitSeen = true
			close(op.exited)
		}
	case routing.StateStarted:
		rec.failedAt, rec.failure = m.now(), "exited on its own"
		m.setStateLocked(id, rec, routing.StateStopped, "exited on its own")
		m.mu.Unlock()
		if m.gone != nil {
			m.gone(id)
		}
		return
	}
	m.mu.Unlock()
}

// setStateLocked records a transition and applies it to the routing
// machine (which signals it to gossip). A machine entering StateStarted
// has just passed its readiness check, so it is marked healthy first.
func (m *Manager) setStateLocked(id string, rec *machine, st routing.State, reason string) {
	from := rec.state
	rec.state, rec.since, rec.reason = st, m.now(), reason
	if rm := m.table.Machine(id); rm != nil && !rm.Remote() {
		if st == routing.StateStarted {
			rm.SetHealthy(true)
		}
		rm.SetState(st)
	}
	if from == st {
		return
	}
	lvl := slog.LevelInfo
	if st == routing.StateFailed {
		lvl = slog.LevelWarn
	}
	m.log.Log(context.Background(), lvl, "machine state", "machine", id, "app", rec.spec.App, "from", from.String(), "to", st.String(), "reason", reason)
}

// Stop stops (ModeStop) or suspends (ModeSuspend) machine id and returns
// once it has, or when ctx ends (the stop goes on). The machine is first
// cordoned (StateStopping: the pick skips it and no new request gets a
// slot), Options.BeforeStop is called, its in-flight requests drain for up
// to Options.DrainTimeout, then the driver stops or suspends it (a driver
// that cannot suspend stops it). A stopped machine, or a suspended one
// asked to suspend, returns at once; callers during a stop share it. A
// machine starting is stopped once its wake has ended. Errors:
// ErrStopFailed (the machine is failed), ErrUnknownMachine, ErrClosed, and
// ctx's. A driver that cannot stop the machine at all (none) fails with
// ErrStopFailed wrapping ErrUnsupported and leaves it as it was, and the
// autostop leaves it alone from then on.
func (m *Manager) Stop(ctx context.Context, id string, mode StopMode) error {
	if mode != ModeStop && mode != ModeSuspend {
		return fmt.Errorf("autostart: stop machine %s: mode %v: want stop or suspend", id, mode)
	}
	m.mu.Lock()
	op, err := m.stopLocked(id, mode, "requested")
	m.mu.Unlock()
	if err != nil || op == nil {
		return err
	}
	select {
	case <-op.done:
		return op.err
	case <-ctx.Done():
		return fmt.Errorf("autostart: stop machine %s: %w", id, context.Cause(ctx))
	}
}

// stopLocked schedules a stop of machine id, or returns the one under way
// (nil when there is nothing to do). A started machine with nothing
// scheduled before is cordoned at once.
func (m *Manager) stopLocked(id string, mode StopMode, reason string) (*stopOp, error) {
	if m.closed {
		return nil, ErrClosed
	}
	rec := m.machines[id]
	if rec == nil {
		return nil, fmt.Errorf("%w: %s", ErrUnknownMachine, id)
	}
	if rec.stop != nil {
		return rec.stop, nil
	}
	if rec.wake == nil && (rec.state == routing.StateStopped || rec.state == routing.StateSuspended && mode == ModeSuspend) {
		return nil, nil
	}
	op := &stopOp{mode: mode, reason: reason, after: rec.tail,
		finished: make(chan struct{}), done: make(chan struct{})}
	rec.tail = op.finished
	rec.stop = op
	if rec.wake == nil && rec.state == routing.StateStarted {
		op.from = rec.state
		m.setStateLocked(id, rec, routing.StateStopping, reason)
	}
	m.wg.Add(1)
	go m.runStop(id, rec, op)
	return op, nil
}

// runStop is the goroutine of one stop.
func (m *Manager) runStop(id string, rec *machine, op *stopOp) {
	defer m.wg.Done()
	defer close(op.finished)
	if op.after != nil {
		select {
		case <-op.after:
		case <-m.ctx.Done():
			m.mu.Lock()
			m.reportStopLocked(rec, op, ErrClosed)
			m.mu.Unlock()
			return
		}
	}
	m.mu.Lock()
	spec := rec.spec
	if rec.state == routing.StateStopped || rec.state == routing.StateSuspended && op.mode == ModeSuspend {
		m.reportStopLocked(rec, op, nil) // stopped meanwhile (a failed wake, an exit)
		m.mu.Unlock()
		return
	}
	if rec.state != routing.StateStopping {
		op.from = rec.state
	}
	m.setStateLocked(id, rec, routing.StateStopping, op.reason)
	m.mu.Unlock()

	if m.beforeStop != nil {
		m.beforeStop(id)
	}
	m.drain(id)

	mode := op.mode
	ctx, cancel := context.WithTimeout(m.ctx, killTimeout(spec)+stopCallSlack)
	var err error
	if mode == ModeSuspend {
		err = m.driver.Suspend(ctx, spec)
		if errors.Is(err, ErrUnsupported) {
			mode = ModeStop
			err = m.driver.Stop(ctx, spec)
		}
	} else {
		err = m.driver.Stop(ctx, spec)
	}
	cancel()

	m.mu.Lock()
	switch {
	case err == nil:
		st := routing.StateStopped
		if mode == ModeSuspend {
			st = routing.StateSuspended
		}
		rec.stoppedAt = m.now()
		m.met.stops.WithLabelValues(mode.String()).Inc()
		m.setStateLocked(id, rec, st, op.reason)
	case errors.Is(err, ErrUnsupported):
		// Not this driver's to stop (none): it stays as it was.
		err = fmt.Errorf("%w: machine %s: %s: %w", ErrStopFailed, id, mode, err)
		rec.unstoppable = true
		m.setStateLocked(id, rec, op.from, "stop not supported by the driver")
	default:
		err = fmt.Errorf("%w: machine %s: %s: %w", ErrStopFailed, id, mode, err)
		rec.failedAt, rec.failure = m.now(), err.Error()
		m.setStateLocked(id, rec, routing.StateFailed, err.Error())
	}
	m.reportStopLocked(rec, op, err)
	m.mu.Unlock()
	if err == nil && mode == ModeStop && m.gone != nil {
		m.gone(id)
	}
}

func (m *Manager) reportStopLocked(rec *machine, op *stopOp, err error) {
	if rec.stop == op {
		rec.stop = nil
	}
	op.err = err
	close(op.done)
}

// drain waits until the cordoned machine has no request in flight, for at
// most the drain timeout.
func (m *Manager) drain(id string) {
	rm := m.table.Machine(id)
	if rm == nil || rm.Remote() || rm.Inflight() == 0 {
		return
	}
	deadline := time.NewTimer(m.drainTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(drainPoll)
	defer tick.Stop()
	for rm.Inflight() > 0 {
		select {
		case <-tick.C:
		case <-deadline.C:
			m.log.Warn("machine stopped with requests in flight", "machine", id, "inflight", rm.Inflight(), "drain_timeout", m.drainTimeout)
			return
		case <-m.ctx.Done():
			return
		}
	}
}

func killTimeout(s *Spec) time.Duration {
	if s.KillTimeout > 0 {
		return s.KillTimeout
	}
	return defaultKillTimeout
}

// RecentlyStopped reports whether machine id was stopped or suspended by
// this Manager within Options.RecentStop and is still down: Fly's PM11
// rule, by which an edge sends a request elsewhere rather than wake such a
// machine when another candidate exists.
func (m *Manager) RecentlyStopped(id string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	rec := m.machines[id]
	if rec == nil || rec.stoppedAt.IsZero() {
		return false
	}
	if rec.state != routing.StateStopped && rec.state != routing.StateSuspended {
		return false
	}
	return m.now().Sub(rec.stoppedAt) < m.recentStop
}

// MachineState is one machine's lifecycle as the admin API shows it.
type MachineState struct {
	ID, App, Region   string
	State             string    // started, starting, stopping, stopped, suspended, failed
	Since             time.Time // of the last change
	Reason            string    // of the last change
	LastFailure       time.Time // zero: never failed
	LastFailureReason string
	RetryAt           time.Time // a failed machine's backoff end; zero: none
	StoppedAt         time.Time // the last stop or suspend; zero: never
}

// States returns the lifecycle of every machine, sorted by app and id.
func (m *Manager) States() []MachineState {
	m.mu.Lock()
	out := make([]MachineState, 0, len(m.machines))
	now := m.now()
	for id, rec := range m.machines {
		s := MachineState{ID: id, App: rec.spec.App, Region: rec.spec.Region, State: rec.state.String(),
			Since: rec.since, Reason: rec.reason, LastFailure: rec.failedAt, LastFailureReason: rec.failure,
			StoppedAt: rec.stoppedAt}
		if rec.state == routing.StateFailed && now.Before(rec.retryAt) {
			s.RetryAt = rec.retryAt
		}
		out = append(out, s)
	}
	m.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].App != out[j].App {
			return out[i].App < out[j].App
		}
		return out[i].ID < out[j].ID
	})
	return out
}
