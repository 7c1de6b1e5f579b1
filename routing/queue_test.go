package routing

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/godwit/godwit/config"
)

type waitResult struct {
	m   *Machine
	err error
}

// pendingWait is a call of App.Wait running in its own goroutine.
type pendingWait struct{ ch chan waitResult }

// startWait calls a.Wait in a new goroutine of the synctest bubble and
// returns once that call is queued (or has returned), so waiters started one
// after another are queued in that order.
func startWait(a *App, ctx context.Context, timeout time.Duration, max int) pendingWait {
	w := pendingWait{ch: make(chan waitResult, 1)}
	go func() {
		m, err := a.Wait(ctx, timeout, max)
		w.ch <- waitResult{m, err}
	}()
	synctest.Wait()
	return w
}

// done returns the result of a Wait that must have returned (in a synctest
// bubble after synctest.Wait).
func (w pendingWait) done(t testing.TB) waitResult {
	t.Helper()
	r, ok := w.poll()
	if !ok {
		t.Fatal("Wait: still waiting, want it returned")
	}
	return r
}

// poll returns the result if Wait has returned.
func (w pendingWait) poll() (waitResult, bool) {
	select {
	case r := <-w.ch:
		return r, true
	default:
		return waitResult{}, false
	}
}

// newQueueTable returns a table whose app "app" has one machine m1 in ams
// with hard limit hard, every slot taken, plus the given extra machines.
func newQueueTable(t *testing.T, hard int, extra ...config.Machine) (*Table, *App, *Machine) {
	t.Helper()
	tab := NewTable("ams", []config.App{testApp("app", 1, hard)},
		append([]config.Machine{testMachine("m1", "app", "ams")}, extra...))
	m1 := mustMachine(t, tab, "m1")
	fill(t, m1)
	return tab, mustApp(t, tab, "app"), m1
}

func TestQueueFIFO(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 8
		_, a, m1 := newQueueTable(t, 1)
		var waits []pendingWait
		for i := range n {
			waits = append(waits, startWait(a, t.Context(), time.Minute, 100))
			if got := a.QueueLen(); got != i+1 {
				t.Fatalf("QueueLen after %d waiters: got %d, want %d", i+1, got, i+1)
			}
			if m, err := a.Pick(); !errors.Is(err, ErrAtCapacity) {
				t.Fatalf("Pick with %d waiters: got %s, %v, want ErrAtCapacity", i+1, idOf(m), err)
			}
		}
		for i := range n {
			m1.Release() // the slot held by the previous owner
			synctest.Wait()
			for j, w := range waits {
				r, ok := w.poll()
				switch {
				case j == i && !ok:
					t.Fatalf("release %d: waiter %d still waiting, want it handed the slot", i+1, j+1)
				case j == i && (r.m != m1 || r.err != nil):
					t.Fatalf("release %d: waiter %d got %s, %v, want m1", i+1, j+1, idOf(r.m), r.err)
				case j != i && ok:
					t.Fatalf("release %d: waiter %d returned (%s, %v), want waiter %d first", i+1, j+1, idOf(r.m), r.err, i+1)
				}
			}
			if got, want := a.QueueLen(), n-i-1; got != want {
				t.Errorf("QueueLen after release %d: got %d, want %d", i+1, got, want)
			}
			if got := m1.Inflight(); got != 1 {
				t.Errorf("m1 in flight after handoff %d: got %d, want 1", i+1, got)
			}
		}
		m1.Release()
		checkIdle(t, a)
	})
}

func TestQueueTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, a, m1 := newQueueTable(t, 2)
		start := time.Now()
		m, err := a.Wait(t.Context(), 5*time.Second, 10)
		if !errors.Is(err, ErrQueueTimeout) || m != nil {
			t.Fatalf("Wait on a full app: got %s, %v, want nil, ErrQueueTimeout", idOf(m), err)
		}
		if got := time.Since(start); got != 5*time.Second {
			t.Errorf("Wait returned after %v, want 5s", got)
		}
		if got := a.QueueLen(); got != 0 {
			t.Errorf("QueueLen after timeout: got %d, want 0", got)
		}
		if got := m1.Inflight(); got != 2 {
			t.Errorf("m1 in flight after timeout: got %d, want 2", got)
		}
		m1.Release()
		m1.Release()
		checkIdle(t, a)
	})
}

func TestQueueContext(t *testing.T) {
	for _, tt := range []struct {
		name  string
		ctx   func(context.Context) (context.Context, context.CancelFunc)
		after time.Duration // when Wait returns
		want  error
	}{
		{"cancel", context.WithCancel, 0, context.Canceled},
		{"deadline", func(ctx context.Context) (context.Context, context.CancelFunc) {
			return context.WithTimeout(ctx, time.Second)
		}, time.Second, context.DeadlineExceeded},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				_, a, m1 := newQueueTable(t, 1)
				ctx, cancel := tt.ctx(t.Context())
				defer cancel()
				other := startWait(a, t.Context(), time.Minute, 10)
				start := time.Now()
				w := startWait(a, ctx, time.Minute, 10)
				if got := a.QueueLen(); got != 2 {
					t.Fatalf("QueueLen: got %d, want 2", got)
				}
				if tt.want == context.Canceled {
					cancel()
				}
				r := <-w.ch // the clock moves on to the deadline here
				if !errors.Is(r.err, tt.want) || r.m != nil {
					t.Fatalf("Wait: got %s, %v, want nil, %v", idOf(r.m), r.err, tt.want)
				}
				if got := time.Since(start); got != tt.after {
					t.Errorf("Wait returned after %v, want %v", got, tt.after)
				}
				if got := a.QueueLen(); got != 1 {
					t.Errorf("QueueLen after the context ended: got %d, want 1", got)
				}
				// The other waiter is still first in line and gets the slot.
				m1.Release()
				synctest.Wait()
				if r := other.done(t); r.m != m1 {
					t.Fatalf("remaining waiter: got %s, %v, want m1", idOf(r.m), r.err)
				}
				m1.Release()
				checkIdle(t, a)
			})
		})
	}
}

func TestQueueFull(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, a, m1 := newQueueTable(t, 1)
		if m, err := a.Wait(t.Context(), time.Minute, 0); !errors.Is(err, ErrQueueFull) {
			t.Errorf("Wait with max 0: got %s, %v, want ErrQueueFull", idOf(m), err)
		}
		w1 := startWait(a, t.Context(), time.Minute, 2)
		w2 := startWait(a, t.Context(), time.Minute, 2)
		start := time.Now()
		if m, err := a.Wait(t.Context(), time.Minute, 2); !errors.Is(err, ErrQueueFull) {
			t.Errorf("third Wait with max 2: got %s, %v, want ErrQueueFull", idOf(m), err)
		}
		if d := time.Since(start); d != 0 {
			t.Errorf("ErrQueueFull after %v, want at once", d)
		}
		if got := a.QueueLen(); got != 2 {
			t.Errorf("QueueLen after a refused Wait: got %d, want 2", got)
		}
		for i, w := range []pendingWait{w1, w2} {
			m1.Release()
			synctest.Wait()
			if r := w.done(t); r.m != m1 {
				t.Fatalf("waiter %d: got %s, %v, want m1", i+1, idOf(r.m), r.err)
			}
		}
		m1.Release()
		checkIdle(t, a)
	})
}

// Concurrent Waits must not get past max between checking and queueing.
func TestQueueFullConcurrent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const max, callers = 5, 50
		_, a, m1 := newQueueTable(t, 1)
		start := make(chan struct{})
		results := make(chan waitResult, callers)
		for range callers {
			go func() {
				<-start
				m, err := a.Wait(t.Context(), time.Minute, max)
				results <- waitResult{m, err}
			}()
		}
		close(start)
		synctest.Wait()
		if got := a.QueueLen(); got != max {
			t.Errorf("QueueLen after %d concurrent Waits with max %d: got %d, want %d", callers, max, got, max)
		}
		full := 0
		for len(results) > 0 {
			if r := <-results; errors.Is(r.err, ErrQueueFull) {
				full++
			} else {
				t.Errorf("Wait: got %s, %v, want ErrQueueFull or still waiting", idOf(r.m), r.err)
			}
		}
		if full != callers-max {
			t.Errorf("ErrQueueFull: got %d, want %d", full, callers-max)
		}
		for range max {
			m1.Release()
			synctest.Wait()
			if r := <-results; r.m != m1 {
				t.Fatalf("waiter: got %s, %v, want m1", idOf(r.m), r.err)
			}
		}
		m1.Release()
		checkIdle(t, a)
	})
}

func TestQueueMachineBecomesUsable(t *testing.T) {
	up, down := func(m *Machine) { m.SetHealthy(true) }, func(m *Machine) { m.SetHealthy(false) }
	start, stop := func(m *Machine) { m.SetStarted(true) }, func(m *Machine) { m.SetStarted(false) }
	tests := []struct {
		name    string
		m2      config.Machine
		before  func(m *Machine) // makes m2 unusable
		partial func(m *Machine) // leaves it unusable
		after   func(m *Machine) // makes it usable
	}{
		{"healthy", testMachine("m2", "app", "fra"), down, down, up},
		{"started", stopped(testMachine("m2", "app", "fra")), stop, stop, start},
		{"healthy, then started", stopped(testMachine("m2", "app", "fra")), down, up, start},
		{"started, then healthy", stopped(testMachine("m2", "app", "fra")), down, start, up},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				tab, a, m1 := newQueueTable(t, 1, tt.m2)
				m2 := mustMachine(t, tab, "m2")
				tt.before(m2)
				if m, err := a.Pick(); !errors.Is(err, ErrAtCapacity) {
					t.Fatalf("Pick: got %s, %v, want ErrAtCapacity", idOf(m), err)
				}
				w := startWait(a, t.Context(), time.Minute, 10)
				tt.partial(m2)
				synctest.Wait()
				if r, ok := w.poll(); ok {
					t.Fatalf("Wait with m2 still unusable: got %s, %v, want it waiting", idOf(r.m), r.err)
				}
				tt.after(m2)
				synctest.Wait()
				if r := w.done(t); r.m != m2 || r.err != nil {
					t.Fatalf("Wait after m2 became usable: got %s, %v, want m2", idOf(r.m), r.err)
				}
				m2.Release()
				m1.Release()
				checkIdle(t, a)
			})
		})
	}
}

// While requests wait, a newcomer may not take a free slot ahead of them,
// neither through Pick nor through its own Wait.
func TestQueueNoOvertaking(t *testing.T) {
	t.Run("Pick", func(t *testing.T) {
		tab := NewTable("ams", []config.App{testApp("app", 1, 1)}, []config.Machine{testMachine("m1", "app", "ams")})
		a := mustApp(t, tab, "app")
		w := &waiter{got: make(chan *Machine, 1)}
		a.queue.push(w, 10) // queued, and the slot of m1 still free
		if m, err := a.Pick(); !errors.Is(err, ErrAtCapacity) {
			t.Fatalf("Pick with a waiter and a free slot: got %s, %v, want ErrAtCapacity", idOf(m), err)
		}
		m1 := a.Machine("m1")
		m1.SetHealthy(false)
		if m, err := a.Pick(); !errors.Is(err, ErrNoMachine) {
			t.Fatalf("Pick with a waiter and no usable machine: got %s, %v, want ErrNoMachine", idOf(m), err)
		}
		a.queue.kick(nil)
		if got := len(w.got); got != 0 {
			t.Fatalf("waiter after kick with no usable machine: got %d slots, want 0", got)
		}
		m1.SetHealthy(true)
		select {
		case m := <-w.got:
			if m != m1 {
				t.Fatalf("waiter: got %s, want m1", idOf(m))
			}
			m.Release()
		default:
			t.Fatal("waiter after m1 became healthy: got nothing, want its free slot")
		}
		checkIdle(t, a)
	})
	// A Release frees the slot before it hands it on; a newcomer's Wait in
	// between must leave the slot to the older waiter.
	t.Run("Wait", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			_, a, m1 := newQueueTable(t, 1)
			first := startWait(a, t.Context(), time.Minute, 10)
			m1.inflight.Add(-1) // the first half of m1.Release
			if m, err := a.Pick(); !errors.Is(err, ErrAtCapacity) {
				t.Fatalf("Pick by a newcomer: got %s, %v, want ErrAtCapacity", idOf(m), err)
			}
			newcomer := startWait(a, t.Context(), time.Minute, 10)
			a.queue.kick(m1) // the second half
			synctest.Wait()
			if r := first.done(t); r.m != m1 {
				t.Fatalf("first waiter: got %s, %v, want m1", idOf(r.m), r.err)
			}
			if r, ok := newcomer.poll(); ok {
				t.Fatalf("newcomer: got %s, %v, want still waiting behind the first", idOf(r.m), r.err)
			}
			m1.Release()
			synctest.Wait()
			if r := newcomer.done(t); r.m != m1 {
				t.Fatalf("newcomer: got %s, %v, want m1", idOf(r.m), r.err)
			}
			m1.Release()
			checkIdle(t, a)
		})
	})
}

// The ends of Wait race with handoffs: a timeout, a cancel or the queueing
// itself can meet a Release. Whatever wins, no slot may leak and no waiter
// stay queued.
func TestQueueRaces(t *testing.T) {
	const rounds = 2000
	tab := NewTable("ams", []config.App{testApp("app", 1, 1)}, []config.Machine{testMachine("m1", "app", "ams")})
	a := mustApp(t, tab, "app")
	m1 := mustMachine(t, tab, "m1")
	var got, timedOut, canceled int
	for i := range rounds {
		if !m1.TryAcquire() {
			t.Fatalf("round %d: m1 busy at the start, want idle", i)
		}
		ctx, cancel := context.WithCancel(t.Context())
		timeout := time.Duration(i%50) * time.Microsecond
		var wg sync.WaitGroup
		wg.Go(func() { m1.Release() })
		if i%3 == 0 {
			wg.Go(cancel)
		}
		m, err := a.Wait(ctx, timeout, 10)
		wg.Wait()
		cancel()
		switch {
		case err == nil:
			if m != m1 {
				t.Fatalf("round %d: Wait got %s, want m1", i, idOf(m))
			}
			got++
			m.Release()
		case errors.Is(err, ErrQueueTimeout):
			timedOut++
		case errors.Is(err, context.Canceled):
			canceled++
		default:
			t.Fatalf("round %d: Wait got error %v, want nil, ErrQueueTimeout or context.Canceled", i, err)
		}
		if m1.Inflight() != 0 || a.QueueLen() != 0 {
			t.Fatalf("round %d: got %d in flight and %d queued, want 0 and 0", i, m1.Inflight(), a.QueueLen())
		}
	}
	t.Logf("%d rounds: %d handed a slot, %d timed out, %d canceled", rounds, got, timedOut, canceled)
}

// hammer runs workers that Pick (or Wait when at capacity), hold and Release,
// tracking the largest number of concurrent holders per machine. disturb,
// if set, runs alongside until the workers are done.
func hammer(t *testing.T, tab *Table, workers, rounds int, disturb func(stop <-chan struct{})) (maxSeen map[string]int32, queued int64) {
	t.Helper()
	holders := make(map[*Machine]*atomic.Int32)
	maxes := make(map[*Machine]*atomic.Int32)
	for _, m := range mustApp(t, tab, "app").Machines() {
		holders[m], maxes[m] = new(atomic.Int32), new(atomic.Int32)
	}
	var waits atomic.Int64
	stop := make(chan struct{})
	var bg sync.WaitGroup
	if disturb != nil {
		bg.Go(func() { disturb(stop) })
	}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for r := range rounds {
				a := tab.App("app") // as the proxy does, per request
				m, err := a.Pick()
				if errors.Is(err, ErrAtCapacity) || errors.Is(err, ErrNoMachine) {
					waits.Add(1)
					m, err = a.Wait(t.Context(), time.Minute, workers)
				}
				if err != nil {
					t.Errorf("worker %d round %d: got error %v, want a machine", w, r, err)
					return
				}
				n := holders[m].Add(1)
				for {
					old := maxes[m].Load()
					if n <= old || maxes[m].CompareAndSwap(old, n) {
						break
					}
				}
				if in, hard := m.Inflight(), m.HardLimit(); in > hard {
					t.Errorf("%s: got %d in flight, want at most the hard limit %d", m.ID, in, hard)
				}
				runtime.Gosched()
				holders[m].Add(-1)
				m.Release()
			}
		})
	}
	wg.Wait()
	close(stop)
	bg.Wait()
	maxSeen = make(map[string]int32)
	for m, v := range maxes {
		maxSeen[m.ID] = v.Load()
	}
	return maxSeen, waits.Load()
}

func TestHardLimitUnderConcurrency(t *testing.T) {
	const hard, workers, rounds = 3, 100, 200
	apps := []config.App{testApp("app", 2, hard)}
	ms := []config.Machine{testMachine("l1", "app", "ams"), testMachine("l2", "app", "ams"), testMachine("r1", "app", "fra")}
	tests := []struct {
		name    string
		disturb func(tab *Table) func(stop <-chan struct{})
	}{
		{"steady", func(*Table) func(<-chan struct{}) { return nil }},
		// Health flaps on one machine and the config is reloaded unchanged,
		// both of which kick the queue while requests come and go.
		{"flapping and reloads", func(tab *Table) func(<-chan struct{}) {
			return func(stop <-chan struct{}) {
				l2 := tab.Machine("l2")
				defer l2.SetHealthy(true)
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					l2.SetHealthy(i%2 == 1)
					if i%10 == 0 {
						tab.Update(apps, ms)
					}
					runtime.Gosched()
				}
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab := NewTable("ams", apps, ms)
			maxSeen, queued := hammer(t, tab, workers, rounds, tt.disturb(tab))
			top := int32(0)
			for id, n := range maxSeen {
				if n > hard {
					t.Errorf("%s: got %d concurrent holders, want at most %d", id, n, hard)
				}
				top = max(top, n)
			}
			if top != hard {
				t.Errorf("largest concurrent holders: got %d, want %d (the test did not reach the limit)", top, hard)
			}
			if queued == 0 {
				t.Errorf("requests that had to wait: got 0, want some (the test did not fill the app)")
			}
			t.Logf("max holders %v, %d of %d requests waited", maxSeen, queued, workers*rounds)
			checkIdle(t, mustApp(t, tab, "app"))
		})
	}
}

func ExampleApp_Wait() {
	tab := NewTable("ams", []config.App{{Name: "app", HTTPService: config.HTTPService{
		Concurrency: config.Concurrency{SoftLimit: 1, HardLimit: 1}}}},
		[]config.Machine{{ID: "m1", App: "app", Region: "ams", Address: "10.0.0.1:8080"}})
	a := tab.App("app")
	m, _ := a.Pick()
	_, err := a.Pick()
	fmt.Println(err)
	go m.Release() // the request on m1 ends
	m, err = a.Wait(context.Background(), time.Second, 10)
	fmt.Println(m.ID, err)
	m.Release()
	// Output:
	// routing: every machine is at its hard limit
	// m1 <nil>
}
