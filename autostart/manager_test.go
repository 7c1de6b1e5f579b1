package autostart

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/godwit/godwit/config"
	"github.com/godwit/godwit/routing"
)

// noLeaks fails the test if a goroutine started during it outlives its
// cleanups. Call it first, so that its check runs after every other
// cleanup (the Manager's Close, the listeners').
func noLeaks(t *testing.T) {
	t.Helper()
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}

// fakeDriver records its calls; each operation does what its func says
// (nil: succeed at once).
type fakeDriver struct {
	start   func(ctx context.Context, s *Spec) error
	stop    func(ctx context.Context, s *Spec) error
	suspend func(ctx context.Context, s *Spec) error

	starts, stops, suspends atomic.Int32
	mu                      sync.Mutex
	calls                   []string // "start m1", "stop m1", ...
}

func (d *fakeDriver) record(op, id string) {
	d.mu.Lock()
	d.calls = append(d.calls, op+" "+id)
	d.mu.Unlock()
}

func (d *fakeDriver) Calls() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.calls...)
}

func (d *fakeDriver) Start(ctx context.Context, s *Spec) error {
	d.starts.Add(1)
	d.record("start", s.ID)
	if d.start != nil {
		return d.start(ctx, s)
	}
	return nil
}

func (d *fakeDriver) Stop(ctx context.Context, s *Spec) error {
	d.stops.Add(1)
	d.record("stop", s.ID)
	if d.stop != nil {
		return d.stop(ctx, s)
	}
	return nil
}

func (d *fakeDriver) Suspend(ctx context.Context, s *Spec) error {
	d.suspends.Add(1)
	d.record("suspend", s.ID)
	if d.suspend != nil {
		return d.suspend(ctx, s)
	}
	return nil
}

// exitDriver is a fakeDriver that reports exits.
type exitDriver struct {
	*fakeDriver
	exits chan string
}

func (d exitDriver) Exits() <-chan string { return d.exits }

// testClock is a clock the test moves.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *testClock { return &testClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// tmach describes one machine of a test table.
type tmach struct {
	id, app, region string
	stopped         bool
	remote          string // owner node; "" for this node's
}

// testSetup builds a routing table in region "ams" (apps with soft limit
// soft and no hard limit, primary region "ams") and the specs of its
// local machines, each with a reserved loopback address nothing listens
// on yet.
func testSetup(t *testing.T, soft int, machines ...tmach) (*routing.Table, []Spec) {
	t.Helper()
	apps := map[string]bool{}
	var cms []config.Machine
	var specs []Spec
	var remotes []routing.RemoteMachine
	for _, m := range machines {
		addr := reserveAddr(t)
		if !apps[m.app] {
			apps[m.app] = true
		}
		if m.remote != "" {
			remotes = append(remotes, routing.RemoteMachine{ID: m.id, App: m.app, Region: m.region, Addr: addr,
				Owner: m.remote, Started: !m.stopped, Healthy: true, Reachable: true, Soft: soft})
			continue
		}
		state := config.StateStarted
		if m.stopped {
			state = config.StateStopped
		}
		cms = append(cms, config.Machine{ID: m.id, App: m.app, Region: m.region, Address: addr, State: state})
		specs = append(specs, Spec{ID: m.id, App: m.app, Region: m.region, PrimaryRegion: "ams", Addr: addr})
	}
	var cas []config.App
	for name := range apps {
		cas = append(cas, config.App{Name: name, Org: "personal", PrimaryRegion: "ams", Hosts: []string{name + ".example"},
			HTTPService: config.HTTPService{Concurrency: config.Concurrency{Type: config.ConcurrencyRequests, SoftLimit: soft}}})
	}
	tab := routing.NewTable("ams", cas, cms)
	if len(remotes) > 0 {
		tab.SetRemote(remotes)
	}
	return tab, specs
}

// reserveAddr returns a loopback address with a free port that nothing
// listens on (until the test listens there).
func reserveAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// serveAfter starts a real server on addr after delay: it accepts connections
// and closes them. The test's cleanup stops it.
func serveAfter(t *testing.T, addr string, delay time.Duration) {
	t.Helper()
	var (
		mu     sync.Mutex
		l      net.Listener
		done   = make(chan struct{})
		closed bool
	)
	timer := time.AfterFunc(delay, func() {
		mu.Lock()
		defer mu.Unlock()
		if closed {
			close(done)
			return
		}
		var err error
		l, err = net.Listen("tcp", addr)
		if err != nil {
			t.Errorf("listen on %s: %v", addr, err)
			close(done)
			return
		}
		go func() {
			defer close(done)
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	})
	t.Cleanup(func() {
		mu.Lock()
		closed = true
		if l != nil {
			l.Close()
		}
		fired := !timer.Stop()
		mu.Unlock()
		if fired {
			<-done
		}
	})
}

// newTestManager builds a Manager and closes it at cleanup.
func newTestManager(t *testing.T, opts Options) *Manager {
	t.Helper()
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	m, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// eventually polls cond every few ms until it holds or d passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(2 * time.Millisecond) // poll interval, within the deadline
	}
}

// stateOf returns the Manager's state of machine id.
func stateOf(m *Manager, id string) MachineState {
	for _, s := range m.States() {
		if s.ID == id {
			return s
		}
	}
	return MachineState{}
}

func counter(t *testing.T, c prometheus.Collector) float64 {
	t.Helper()
	return testutil.ToFloat64(c)
}

// TestWakeSingleFlight: 200 concurrent wakes of a stopped machine call the
// driver once, and all return once the machine listens, not when the
// driver returns.
func TestWakeSingleFlight(t *testing.T) {
	noLeaks(t)
	tab, specs := testSetup(t, 20, tmach{id: "m1", app: "app", region: "ams", stopped: true})
	const listenAfter = 300 * time.Millisecond
	d := &fakeDriver{}
	d.start = func(ctx context.Context, s *Spec) error {
		serveAfter(t, s.Addr, listenAfter)
		return nil
	}
	reg := prometheus.NewRegistry()
	m := newTestManager(t, Options{Table: tab, Driver: d, Machines: specs, WakeTimeout: 10 * time.Second, Registerer: reg})

	const n = 200
	began := time.Now()
	errs := make(chan error, n)
	took := make(chan time.Duration, n)
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- m.Wake(context.Background(), "m1")
			took <- time.Since(began)
		}()
	}
	wg.Wait()
	close(errs)
	close(took)
	failed := 0
	for err := range errs {
		if err != nil {
			failed++
			t.Errorf("Wake: got %v, want nil", err)
		}
	}
	for d := range took {
		if d < listenAfter {
			t.Fatalf("a Wake returned after %v, before the machine listened (%v): want readiness, not the driver's return", d, listenAfter)
		}
	}
	if got := d.starts.Load(); got != 1 {
		t.Errorf("driver starts: got %d, want 1", got)
	}
	rm := tab.Machine("m1")
	if !rm.Started() || rm.State() != routing.StateStarted {
		t.Errorf("routing machine: got state %v, want started", rm.State())
	}
	if st := stateOf(m, "m1"); st.State != "started" {
		t.Errorf("States: got %q (%s), want started", st.State, st.Reason)
	}
	if got, err := tab.App("app").Pick(); err != nil || got != rm {
		t.Errorf("Pick after the wake: got %v, %v, want m1", got, err)
	} else {
		got.Release()
	}
	if got := counter(t, m.met.wakes.WithLabelValues(outcomeOK)); got != n {
		t.Errorf("wakes_total{outcome=ok}: got %v, want %d", got, n)
	}
	if got := testutil.CollectAndCount(m.met.wakeDuration); got != 2 {
		t.Errorf("wake_duration series: got %d, want 2 (cold, resume)", got)
	}
	h := histogram(t, reg, "godwit_machine_wake_duration_seconds", kindCold)
	if h.count != 1 || h.sum < listenAfter.Seconds() {
		t.Errorf("wake_duration{kind=cold}: got count %d sum %.3fs, want 1 and at least %v", h.count, h.sum, listenAfter)
	}
}

type histo struct {
	count uint64
	sum   float64
}

func histogram(t *testing.T, reg *prometheus.Registry, name, kind string) histo {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, mt := range mf.GetMetric() {
			for _, l := range mt.GetLabel() {
				if l.GetName() == "kind" && l.GetValue() == kind {
					return histo{mt.GetHistogram().GetSampleCount(), mt.GetHistogram().GetSampleSum()}
				}
			}
		}
	}
	t.Fatalf("no %s{kind=%q}", name, kind)
	return histo{}
}

// TestWakeStarted: waking a started machine returns at once, without the
// driver.
func TestWakeStarted(t *testing.T) {
	noLeaks(t)
	tab, specs := testSetup(t, 20, tmach{id: "m1", app: "app", region: "ams"})
	d := &fakeDriver{}
	m := newTestManager(t, Options{Table: tab, Driver: d, Machines: specs})
	if err := m.Wake(context.Background(), "m1"); err != nil {
		t.Fatalf("Wake: got %v, want nil", err)
	}
	if got := d.starts.Load(); got != 0 {
		t.Errorf("driver starts: got %d, want 0", got)
	}
	if err := m.Wake(context.Background(), "nope"); !errors.Is(err, ErrUnknownMachine) {
		t.Errorf("Wake(unknown): got %v, want ErrUnknownMachine", err)
	}
}

// TestWakeReadyCheck: readiness is Options.Ready (the app's checks), not
// a TCP connect, when it is set.
func TestWakeReadyCheck(t *testing.T) {
	noLeaks(t)
	tab, specs := testSetup(t, 20, tmach{id: "m1", app: "app", region: "ams", stopped: true})
	serveAfter(t, specs[0].Addr, 0) // listening at once, but not ready
	var passAt atomic.Int64
	d := &fakeDriver{start: func(context.Context, *Spec) error {
		passAt.Store(time.Now().Add(200 * time.Millisecond).UnixNano())
		return nil
	}}
	var attempts atomic.Int32
	ready := func(ctx context.Context, s *Spec) error {
		attempts.Add(1)
		if time.Now().UnixNano() < passAt.Load() {
			return errors.New("GET /health: 503")
		}
		return nil
	}
	m := newTestManager(t, Options{Table: tab, Driver: d, Machines: specs, Ready: ready, ReadyInterval: 20 * time.Millisecond})
	began := time.Now()
	if err := m.Wake(context.Background(), "m1"); err != nil {
		t.Fatalf("Wake: got %v, want nil", err)
	}
	if took := time.Since(began); took < 200*time.Millisecond {
		t.Errorf("Wake returned after %v, before the check passed (200ms)", took)
	}
	// Polled fast: about every 20ms over 200ms, not at a check's interval.
	if got := attempts.Load(); got < 5 {
		t.Errorf("readiness attempts: got %d, want at least 5 (polled every 20ms)", got)
	}
}

// TestWakeNeverListens: a machine that never listens fails every waiter
// with the timeout within the wake timeout, is marked failed and stopped
// again, and further wakes fail at once during its backoff, which doubles
// with each failure.
func TestWakeNeverListens(t *testing.T) {
	noLeaks(t)
	tab, specs := testSetup(t, 20, tmach{id: "m1", app: "app", region: "ams", stopped: true})
	d := &fakeDriver{}
	clk := newClock()
	const timeout = 400 * time.Millisecond
	m := newTestManager(t, Options{Table: tab, Driver: d, Machines: specs, WakeTimeout: timeout, Now: clk.Now,
		BackoffMin: time.Second, BackoffMax: 3 * time.Second, Registerer: prometheus.NewRegistry()})

	const n = 20
	began := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, n)
	took := make([]time.Duration, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = m.Wake(context.Background(), "m1")
			took[i] = time.Since(began)
		}()
	}
	wg.Wait()
	for i := range n {
		if !errors.Is(errs[i], ErrWakeTimeout) {
			t.Errorf("waiter %d: got %v, want ErrWakeTimeout", i, errs[i])
		}
		if took[i] > timeout+time.Second {
			t.Errorf("waiter %d returned after %v, want within the wake timeout %v + 1s", i, took[i], timeout)
		}
	}
	if errs[0] == nil || !strings.Contains(errs[0].Error(), "refused") {
		t.Errorf("error: got %q, want the last readiness failure (connection refused) in it", errs[0])
	}
	st := stateOf(m, "m1")
	if st.State != "failed" || !strings.Contains(st.Reason, "timed out") || st.LastFailure.IsZero() {
		t.Errorf("state: got %q reason %q failed at %v, want failed, timed out, a failure time", st.State, st.Reason, st.LastFailure)
	}
	if got := tab.Machine("m1").State(); got != routing.StateFailed {
		t.Errorf("routing state: got %v, want failed", got)
	}
	if want := clk.Now().Add(time.Second); !st.RetryAt.Equal(want) {
		t.Errorf("RetryAt: got %v, want %v (1s backoff)", st.RetryAt, want)
	}
	eventually(t, 2*time.Second, "the unready machine stopped again", func() bool { return d.stops.Load() == 1 })

	// Within the backoff: at once, no driver call.
	began = time.Now()
	err := m.Wake(context.Background(), "m1")
	var be *BackoffError
	if !errors.Is(err, ErrBackoff) || !errors.As(err, &be) || !errors.Is(be.Last, ErrWakeTimeout) {
		t.Fatalf("Wake during the backoff: got %v, want a BackoffError after ErrWakeTimeout", err)
	}
	if took := time.Since(began); took > 100*time.Millisecond {
		t.Errorf("Wake during the backoff took %v, want at once", took)
	}
	if got := d.starts.Load(); got != 1 {
		t.Errorf("driver starts during the backoff: got %d, want 1", got)
	}
	if got := counter(t, m.met.wakes.WithLabelValues(outcomeTimeout)); got != n {
		t.Errorf("wakes_total{timeout}: got %v, want %d", got, n)
	}
	if got := counter(t, m.met.wakes.WithLabelValues(outcomeBackoff)); got != 1 {
		t.Errorf("wakes_total{backoff}: got %v, want 1", got)
	}

	// After it: the driver again, and the backoff doubles, then caps.
	for i, want := range []time.Duration{2 * time.Second, 3 * time.Second} {
		clk.Advance(stateOf(m, "m1").RetryAt.Sub(clk.Now()))
		if err := m.Wake(context.Background(), "m1"); !errors.Is(err, ErrWakeTimeout) {
			t.Fatalf("Wake after backoff %d: got %v, want ErrWakeTimeout", i+1, err)
		}
		if got := d.starts.Load(); got != int32(i+2) {
			t.Errorf("driver starts after backoff %d: got %d, want %d", i+1, got, i+2)
		}
		if got := stateOf(m, "m1").RetryAt.Sub(clk.Now()); got != want {
			t.Errorf("backoff after failure %d: got %v, want %v", i+2, got, want)
		}
	}
}

// TestWakeDriverError: a driver error fails the waiters with
// ErrStartFailed (wrapping it), marks the machine failed, and backs off.
func TestWakeDriverError(t *testing.T) {
	noLeaks(t)
	tab, specs := testSetup(t, 20, tmach{id: "m1", app: "app", region: "ams", stopped: true})
	apiDown := errors.New("machines API: 502 bad gateway")
	d := &fakeDriver{start: func(context.Context, *Spec) error { return apiDown }}
	m := newTestManager(t, Options{Table: tab, Driver: d, Machines: specs})
	err := m.Wake(context.Background(), "m1")
	if !errors.Is(err, ErrStartFailed) || !errors.Is(err, apiDown) {
		t.Fatalf("Wake: got %v, want ErrStartFailed wrapping the driver's error", err)
	}
	if st := stateOf(m, "m1"); st.State != "failed" || !strings.Contains(st.LastFailureReason, "502") {
		t.Errorf("state: got %q, last failure %q, want failed with the driver's error", st.State, st.LastFailureReason)
	}
	if err := m.Wake(context.Background(), "m1"); !errors.Is(err, ErrBackoff) {
		t.Errorf("second Wake: got %v, want ErrBackoff", err)
	}
	if got := d.starts.Load(); got != 1 {
		t.Errorf("driver starts: got %d, want 1 (no retry during the backoff)", got)
	}
	if got := d.stops.Load(); got != 0 {
		t.Errorf("driver stops: got %d, want 0 (nothing started)", got)
	}
	// The admin API's Start ignores the backoff.
	if err := m.Start(context.Background(), "m1"); !errors.Is(err, ErrStartFailed) {
		t.Errorf("Start during the backoff: got %v, want the driver tried again (ErrStartFailed)", err)
	}
	if got := d.starts.Load(); got != 2 {
		t.Errorf("driver starts after the admin Start: got %d, want 2", got)
	}
}

// TestWakeNotStartable: a driver that cannot start the machine (none)
// fails at once with ErrNotStartable and leaves it as it was.
func TestWakeNotStartable(t *testing.T) {
	noLeaks(t)
	tab, specs := testSetup(t, 20, tmach{id: "m1", app: "app", region: "ams", stopped: true})
	d := &fakeDriver{start: func(context.Context, *Spec) error { return ErrUnsupported }}
	m := newTestManager(t, Options{Table: tab, Driver: d, Machines: specs})
	if err := m.Wake(context.Background(), "m1"); !errors.Is(err, ErrNotStartable) {
		t.Fatalf("Wake: got %v, want ErrNotStartable", err)
	}
	if st := stateOf(m, "m1"); st.State != "stopped" {
		t.Errorf("state: got %q, want stopped", st.State)
	}
}

// TestWakeExits: a machine that exits during its start fails the wake at
// once, well before the wake timeout.
func TestWakeExits(t *testing.T) {
	noLeaks(t)
	tab, specs := testSetup(t, 20, tmach{id: "m1", app: "app", region: "ams", stopped: true})
	exits := make(chan string, 1)
	d := exitDriver{fakeDriver: &fakeDriver{}, exits: exits}
	d.start = func(_ context.Context, s *Spec) error {
		exits <- s.ID // the process died at once
		return nil
	}
	m := newTestManager(t, Options{Table: tab, Driver: d, Machines: specs, WakeTimeout: 10 * time.Second})
	began := time.Now()
	err := m.Wake(context.Background(), "m1")
	if !errors.Is(err, ErrStartFailed) || !strings.Contains(err.Error(), "exited") {
		t.Fatalf("Wake: got %v, want ErrStartFailed saying it exited", err)
	}
	if took := time.Since(began); took > 2*time.Second {
		t.Errorf("Wake took %v, want the exit noticed at once (timeout 10s)", took)
	}
	if st := stateOf(m, "m1"); st.State != "failed" {
		t.Errorf("state: got %q, want failed", st.State)
	}
}

// TestWakeCallerGone: a waiter whose context ends returns at once; the
// start goes on and the other waiters get the machine.
func TestWakeCallerGone(t *testing.T) {
	noLeaks(t)
	tab, specs := testSetup(t, 20, tmach{id: "m1", app: "app", region: "ams", stopped: true})
	gate := make(chan struct{})
	d := &fakeDriver{start: func(ctx context.Context, s *Spec) error {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
		serveAfter(t, s.Addr, 0)
		return nil
	}}
	m := newTestManager(t, Options{Table: tab, Driver: d, Machines: specs, WakeTimeout: 10 * time.Second, Registerer: prometheus.NewRegistry()})

	const others = 5
	results := make(chan error, others)
	for range others {
		go func() { results <- m.Wake(context.Background(), "m1") }()
	}
	ctx, cancel := context.WithCancel(context.Background())
	gone := make(chan error, 1)
	go func() { gone <- m.Wake(ctx, "m1") }()
	eventually(t, 2*time.Second, "6 waiters", func() bool { return m.waiting("app") == others+1 })

	cancel()
	select {
	case err := <-gone:
		if !errors.Is(err, ErrCanceled) || !errors.Is(err, context.Canceled) {
			t.Errorf("canceled waiter: got %v, want ErrCanceled and context.Canceled", err)
		}
	case <-time.After(time.Second):
		t.Fatal("canceled waiter still waiting after 1s")
	}
	select {
	case err := <-results:
		t.Fatalf("another waiter returned %v after one left, want it still waiting", err)
	default:
	}
	close(gate)
	for range others {
		if err := <-results; err != nil {
			t.Errorf("waiter: got %v, want nil", err)
		}
	}
	if got := d.starts.Load(); got != 1 {
		t.Errorf("driver starts: got %d, want 1", got)
	}
	if got := counter(t, m.met.wakes.WithLabelValues(outcomeCanceled)); got != 1 {
		t.Errorf("wakes_total{canceled}: got %v, want 1", got)
	}
}

// waiting is the number of Wake callers waiting for app's machines.
func (m *Manager) waiting(app string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.waiters[app]
}

// TestWakeWaiterCap: beyond MaxWaiters waiting for one app, Wake fails at
// once; other apps are not affected.
func TestWakeWaiterCap(t *testing.T) {
	noLeaks(t)
	tab, specs := testSetup(t, 20,
		tmach{id: "m1", app: "app", region: "ams", stopped: true},
		tmach{id: "o1", app: "other", region: "ams", stopped: true})
	gate := make(chan struct{})
	d := &fakeDriver{start: func(ctx context.Context, s *Spec) error {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
		serveAfter(t, s.Addr, 0)
		return nil
	}}
	m := newTestManager(t, Options{Table: tab, Driver: d, Machines: specs, MaxWaiters: 3, Registerer: prometheus.NewRegistry()})
	results := make(chan error, 4)
	for range 3 {
		go func() { results <- m.Wake(context.Background(), "m1") }()
	}
	eventually(t, 2*time.Second, "3 waiters", func() bool { return m.waiting("app") == 3 })
	began := time.Now()
	if err := m.Wake(context.Background(), "m1"); !errors.Is(err, ErrTooManyWaiters) {
		t.Errorf("fourth Wake: got %v, want ErrTooManyWaiters", err)
	}
	if took := time.Since(began); took > 100*time.Millisecond {
		t.Errorf("fourth Wake took %v, want at once", took)
	}
	go func() { results <- m.Wake(context.Background(), "o1") }()
	eventually(t, 2*time.Second, "a waiter of the other app", func() bool { return m.waiting("other") == 1 })
	close(gate)
	for range 4 {
		if err := <-results; err != nil {
			t.Errorf("waiter: got %v, want nil", err)
		}
	}
	if got := counter(t, m.met.wakes.WithLabelValues(outcomeTooManyWaiters)); got != 1 {
		t.Errorf("wakes_total{too_many_waiters}: got %v, want 1", got)
	}
}

// TestStopDrains: Stop cordons the machine (no new request), calls
// BeforeStop, waits for the request in flight, then stops it.
func TestStopDrains(t *testing.T) {
	noLeaks(t)
	tab, specs := testSetup(t, 20, tmach{id: "m1", app: "app", region: "ams"})
	rm := tab.Machine("m1")
	var stopInflight atomic.Int32
	var stopAt atomic.Int64
	d := &fakeDriver{stop: func(context.Context, *Spec) error {
		stopInflight.Store(int32(rm.Inflight()))
		stopAt.Store(time.Now().UnixNano())
		return nil
	}}
	var before atomic.Int32
	clk := newClock()
	m := newTestManager(t, Options{Table: tab, Driver: d, Machines: specs, DrainTimeout: 10 * time.Second,
		BeforeStop: func(id string) {
			if id == "m1" {
				before.Add(1)
			}
		}, Now: clk.Now, RecentStop: time.Minute, Registerer: prometheus.NewRegistry()})

	held, err := tab.App("app").Pick()
	if err != nil {
		t.Fatalf("Pick: %v", err)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- m.Stop(context.Background(), "m1", ModeStop) }()
	eventually(t, 2*time.Second, "stopping", func() bool { return rm.State() == routing.StateStopping })
	if _, err := tab.App("app").Pick(); !errors.Is(err, routing.ErrNoMachine) {
		t.Errorf("Pick while cordoned: got %v, want ErrNoMachine", err)
	}
	if rm.TryAcquire() {
		t.Errorf("TryAcquire while cordoned: got true, want false")
		rm.Release()
	}
	eventually(t, 2*time.Second, "BeforeStop called", func() bool { return before.Load() == 1 })
	if got := stateOf(m, "m1").State; got != "stopping" {
		t.Errorf("state while draining: got %q, want stopping", got)
	}
	var releasedAt atomic.Int64
	timer := time.AfterFunc(150*time.Millisecond, func() {
		releasedAt.Store(time.Now().UnixNano())
		held.Release()
	})
	defer timer.Stop()
	if err := <-stopped; err != nil {
		t.Fatalf("Stop: got %v, want nil", err)
	}
	if stopAt.Load() < releasedAt.Load() || stopInflight.Load() != 0 {
		t.Errorf("driver stop: at %d with %d in flight, want after the release (%d) with none", stopAt.Load(), stopInflight.Load(), releasedAt.Load())
	}
	if got := stateOf(m, "m1"); got.State != "stopped" || got.StoppedAt.IsZero() {
		t.Errorf("state: got %q stopped at %v, want stopped with a time", got.State, got.StoppedAt)
	}
	if rm.State() != routing.StateStopped {
		t.Errorf("routing state: got %v, want stopped", rm.State())
	}
	if !m.RecentlyStopped("m1") {
		t.Errorf("RecentlyStopped just after the stop: got false, want true")
	}
	clk.Advance(time.Minute)
	if m.RecentlyStopped("m1") {
		t.Errorf("RecentlyStopped after the window: got true, want false")
	}
	if got := counter(t, m.met.stops.WithLabelValues("stop")); got != 1 {
		t.Errorf("stops_total{stop}: got %v, want 1", got)
	}
	if err := m.Stop(context.Background(), "m1", ModeStop); err != nil || d.stops.Load() != 1 {
		t.Errorf("Stop of a stopped machine: got %v with %d driver stops, want nil and still 1", err, d.stops.Load())
	}
}

// TestStopDrainTimeout: a request that never ends holds the stop for the
// drain timeout only.
func TestStopDrainTimeout(t *testing.T) {
	noLeaks(t)
	tab, specs := testSetup(t, 20, tmach{id: "m1", app: "app", region: "ams"})
	rm := tab.Machine("m1")
	var stopInflight atomic.Int32
	d := &fakeDriver{stop: func(context.Context, *Spec) error {
		stopInflight.Store(int32(rm.Inflight()))
		return nil
	}}
	const drain = 200 * time.Millisecond
	m := newTestManager(t, Options{Table: tab, Driver: d, Machines: specs, DrainTimeout: drain})
	held, err := tab.App("app").Pick()
	if err != nil {
		t.Fatalf("Pick: %v", err)
	}
	defer held.Release()
	began := time.Now()
	if err := m.Stop(context.Background(), "m1", ModeStop); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if took := time.Since(began); took < drain || took > drain+2*time.Second {
		t.Errorf("Stop took %v, want the drain timeout %v (+ under 2s)", took, drain)
	}
	if got := stopInflight.Load(); got != 1 {
		t.Errorf("in flight at the driver's stop: got %d, want 1 (stopped at the drain timeout)", got)
	}
}

// TestWakeWhileStopping: a request for the only machine while it is
// stopping waits for the stop, then wakes it again.
func TestWakeWhileStopping(t *testing.T) {
	noLeaks(t)
	tab, specs := testSetup(t, 20, tmach{id: "m1", app: "app", region: "ams"})
	serveAfter(t, specs[0].Addr, 0)
	d := &fakeDriver{}
	m := newTestManager(t, Options{Table: tab, Driver: d, Machines: specs, DrainTimeout: 10 * time.Second})
	held, err := tab.App("app").Pick()
	if err != nil {
		t.Fatalf("Pick: %v", err)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- m.Stop(context.Background(), "m1", ModeStop) }()
	eventually(t, 2*time.Second, "stopping", func() bool { return tab.Machine("m1").Cordoned() })
	woke := make(chan error, 1)
	go func() { woke <- m.Wake(context.Background(), "m1") }()
	eventually(t, 2*time.Second, "a waiter", func() bool { return m.waiting("app") == 1 })
	if got := d.Calls(); len(got) != 0 {
		t.Errorf("driver calls while draining: got %v, want none", got)
	}
	held.Release()
	if err := <-stopped; err != nil {
		t.Errorf("Stop: got %v, want nil", err)
	}
	if err := <-woke; err != nil {
		t.Errorf("Wake: got %v, want nil", err)
	}
	if got, want := strings.Join(d.Calls(), ","), "stop m1,start m1"; got != want {
		t.Errorf("driver calls: got %s, want %s", got, want)
	}
	if !tab.Machine("m1").Started() {
		t.Errorf("routing: got %v, want started", tab.Machine("m1").State())
	}
}

// TestSuspendResume: a suspend keeps the machine suspended; its wake is a
// resume in the histogram. A driver that cannot suspend stops instead.
func TestSuspendResume(t *testing.T) {
	noLeaks(t)
	tab, specs := testSetup(t, 20, tmach{id: "m1", app: "app", region: "ams"}, tmach{id: "m2", app: "app", region: "ams"})
	serveAfter(t, specs[0].Addr, 0)
	d := &fakeDriver{suspend: func(_ context.Context, s *Spec) error {
		if s.ID == "m2" {
			return ErrUnsupported
		}
		return nil
	}}
	reg := prometheus.NewRegistry()
	m := newTestManager(t, Options{Table: tab, Driver: d, Machines: specs, Registerer: reg})
	for _, id := range []string{"m1", "m2"} {
		if err := m.Stop(context.Background(), id, ModeSuspend); err != nil {
			t.Fatalf("Stop(%s, suspend): %v", id, err)
		}
	}
	if got := stateOf(m, "m1").State; got != "suspended" {
		t.Errorf("m1: got %q, want suspended", got)
	}
	if got := stateOf(m, "m2").State; got != "stopped" {
		t.Errorf("m2 (driver cannot suspend): got %q, want stopped", got)
	}
	if got := tab.Machine("m1").State(); got != routing.StateSuspended {
		t.Errorf("routing m1: got %v, want suspended", got)
	}
	if err := m.Wake(context.Background(), "m1"); err != nil {
		t.Fatalf("Wake(m1): %v", err)
	}
	if h := histogram(t, reg, "godwit_machine_wake_duration_seconds", kindResume); h.count != 1 {
		t.Errorf("wake_duration{kind=resume}: got count %d, want 1", h.count)
	}
	if h := histogram(t, reg, "godwit_machine_wake_duration_seconds", kindCold); h.count != 0 {
		t.Errorf("wake_duration{kind=cold}: got count %d, want 0", h.count)
	}
	if got := counter(t, m.met.stops.WithLabelValues("suspend")); got != 1 {
		t.Errorf("stops_total{suspend}: got %v, want 1", got)
	}
	if got := counter(t, m.met.stops.WithLabelValues("stop")); got != 1 {
		t.Errorf("stops_total{stop}: got %v, want 1", got)
	}
}

// TestStopFails: a driver that fails to stop leaves the machine failed.
func TestStopFails(t *testing.T) {
	noLeaks(t)
	tab, specs := testSetup(t, 20, tmach{id: "m1", app: "app", region: "ams"})
	d := &fakeDriver{stop: func(context.Context, *Spec) error { return errors.New("kill: permission denied") }}
	m := newTestManager(t, Options{Table: tab, Driver: d, Machines: specs})
	if err := m.Stop(context.Background(), "m1", ModeStop); !errors.Is(err, ErrStopFailed) {
		t.Fatalf("Stop: got %v, want ErrStopFailed", err)
	}
	if st := stateOf(m, "m1"); st.State != "failed" || !strings.Contains(st.Reason, "permission denied") {
		t.Errorf("state: got %q (%s), want failed with the driver's error", st.State, st.Reason)
	}
	if err := m.Stop(context.Background(), "m1", ModeOff); err == nil {
		t.Errorf("Stop(ModeOff): got nil, want an error")
	}
}

// TestClose: Close ends a wake under way (its waiters get ErrCanceled),
// returns after every goroutine, and later calls fail with ErrClosed.
func TestClose(t *testing.T) {
	noLeaks(t)
	tab, specs := testSetup(t, 20, tmach{id: "m1", app: "app", region: "ams", stopped: true})
	d := exitDriver{fakeDriver: &fakeDriver{}, exits: make(chan string)}
	d.start = func(ctx context.Context, _ *Spec) error {
		<-ctx.Done()
		return ctx.Err()
	}
	m, err := New(Options{Table: tab, Driver: d, Machines: specs, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	res := make(chan error, 1)
	go func() { res <- m.Wake(context.Background(), "m1") }()
	eventually(t, 2*time.Second, "the driver called", func() bool { return d.starts.Load() == 1 })
	m.Close()
	if err := <-res; !errors.Is(err, ErrCanceled) {
		t.Errorf("waiter at Close: got %v, want ErrCanceled", err)
	}
	if err := m.Wake(context.Background(), "m1"); !errors.Is(err, ErrClosed) {
		t.Errorf("Wake after Close: got %v, want ErrClosed", err)
	}
	m.Close() // idempotent
}

// TestNoneDriver: with the none driver a wake fails at once as not
// startable, and a stop leaves the machine started, which the autostop
// then leaves alone.
func TestNoneDriver(t *testing.T) {
	noLeaks(t)
	tab, specs := testSetup(t, 20, tmach{id: "up", app: "app", region: "ams"}, tmach{id: "down", app: "app", region: "ams", stopped: true})
	m := newTestManager(t, Options{Table: tab, Driver: None{}, Machines: specs,
		Apps: map[string]AppPolicy{"app": {Autostop: ModeStop}}})
	if err := m.Wake(context.Background(), "down"); !errors.Is(err, ErrNotStartable) {
		t.Errorf("Wake: got %v, want ErrNotStartable", err)
	}
	if got := stateOf(m, "down").State; got != "stopped" {
		t.Errorf("state after the wake: got %q, want stopped", got)
	}
	err := m.Stop(context.Background(), "up", ModeSuspend)
	if !errors.Is(err, ErrStopFailed) || !errors.Is(err, ErrUnsupported) {
		t.Errorf("Stop: got %v, want ErrStopFailed wrapping ErrUnsupported", err)
	}
	settle(t, m, tab, []string{"up"})
	if st := tab.Machine("up").State(); st != routing.StateStarted {
		t.Errorf("after the stop and the autostop: got %v, want started", st)
	}
}
