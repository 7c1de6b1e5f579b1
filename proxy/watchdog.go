package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
)

// Watchdog defaults: loops are checked every watchdogEvery, and one that
// has made no progress for watchdogStuckAfter is stuck.
const (
	watchdogEvery      = time.Second
	watchdogStuckAfter = 5 * time.Second
)

// watchdog notices a loop of the node that stopped turning: Fly's 2024
// global proxy deadlock spread through gossip and froze every proxy
// silently. It watches the fleet's loop (gossip → routing table), the
// routing table's lock (held by every change), the health checker's result
// delivery and the autostop loop (through the autostart Manager's lock),
// and reports a stuck one in /healthz (503), in metrics and in the log
// (an Error once per episode, an Info when it moves again). It does not
// restart anything: whatever supervises the process acts on /healthz.
//
// The loops report progress with atomic adds (watchedLoop); the watchdog's
// goroutine, owned by Server.Run, samples them every every. Locks are
// probed from a goroutine of the watchdog, one probe at a time, so a held
// lock blocks the probe, not the watchdog. The request path does not take
// part: it reads the routing snapshot, which a stuck loop leaves as it
// was.
type watchdog struct {
	log *slog.Logger
	// every is how often loops are checked; stuckAfter how long a loop
	// may go without progress before it is stuck (tests shorten both).
	every, stuckAfter time.Duration
	// epoch is the origin of progress times (monotonic).
	epoch time.Time

	fleet    *watchedLoop // the fleet's loop: beats every iteration
	routing  *watchedLoop // the routing table's lock: probed
	health   *watchedLoop // health results into the routing table: enter/exit
	autostop *watchedLoop // the autostart Manager's lock: probed
	loops    []*watchedLoop

	probes sync.WaitGroup
}

// watchedLoop is one loop the watchdog watches. A loop that must keep
// turning calls beat on every iteration (with a timer that keeps it
// turning when idle); work that must end once begun calls enter and exit
// and is stuck only while some of it is under way. Both cost an atomic add
// and never block; the methods do nothing on a nil watchedLoop.
type watchedLoop struct {
	name string
	// turning: progress is due all the time; else only while busy.
	turning bool
	// probe, if set, is run by the watchdog (between enter and exit) to
	// test a lock: it must take and release it.
	probe func()

	beats  atomic.Uint64 // iterations or exits
	busy   atomic.Int64  // enters not yet exited
	active atomic.Bool   // its loop runs: watched and reported

	seen       uint64       // beats at the last check; the watchdog's goroutine only
	progressed atomic.Int64 // when progress was last seen, in ns since epoch
	stuck      atomic.Bool
}

func (l *watchedLoop) beat() {
	if l != nil {
		l.beats.Add(1)
	}
}

func (l *watchedLoop) enter() {
	if l != nil {
		l.busy.Add(1)
	}
}

func (l *watchedLoop) exit() {
	if l != nil {
		l.beats.Add(1)
		l.busy.Add(-1)
	}
}

func newWatchdog(log *slog.Logger, reg prometheus.Registerer) *watchdog {
	w := &watchdog{log: log, every: watchdogEvery, stuckAfter: watchdogStuckAfter, epoch: time.Now(),
		fleet:    &watchedLoop{name: "fleet", turning: true},
		routing:  &watchedLoop{name: "routing"},
		health:   &watchedLoop{name: "health"},
		autostop: &watchedLoop{name: "autostop"},
	}
	w.loops = []*watchedLoop{w.fleet, w.routing, w.health, w.autostop}
	reg.MustRegister(w)
	return w
}

// watch makes l watched from now on, with probe if not nil. Call it before
// run.
func (w *watchdog) watch(l *watchedLoop, probe func()) {
	if probe != nil {
		l.probe = probe
	}
	l.progressed.Store(int64(time.Since(w.epoch)))
	l.active.Store(true)
}

// run checks the watched loops every w.every until ctx ends, then waits
// for its probe under way, if any: a lock that is never released holds
// it, as it holds the loop that is stuck on it.
func (w *watchdog) run(ctx context.Context) {
	defer w.probes.Wait()
	t := time.NewTicker(w.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			w.check(now)
		}
	}
}

// check samples every watched loop once, at now, starts the next probe of
// those probed and logs the loops that became stuck or moved again.
func (w *watchdog) check(now time.Time) {
	at := now.Sub(w.epoch)
	for _, l := range w.loops {
		if !l.active.Load() {
			continue
		}
		busy := l.busy.Load()
		if b := l.beats.Load(); b != l.seen || (!l.turning && busy == 0) {
			l.seen = b
			l.progressed.Store(int64(at))
		}
		age := at - time.Duration(l.progressed.Load())
		switch stuck := age >= w.stuckAfter; {
		case stuck && !l.stuck.Load():
			l.stuck.Store(true)
			w.log.Error("watchdog: loop stuck: no progress; the node serves from its last routing snapshot", "loop", l.name, "for", age.Round(time.Millisecond))
		case !stuck && l.stuck.Load():
			l.stuck.Store(false)
			w.log.Info("watchdog: loop moving again", "loop", l.name)
		}
		if l.probe != nil && busy == 0 {
			l.enter()
			w.probes.Go(func() {
				defer l.exit()
				l.probe()
			})
		}
	}
}

// stuck describes the loops stuck now, "<loop> for <duration>" each; nil
// when none is.
func (w *watchdog) stuck() []string {
	var out []string
	for _, l := range w.loops {
		if l.active.Load() && l.stuck.Load() {
			out = append(out, fmt.Sprintf("%s for %v", l.name, w.age(l).Round(100*time.Millisecond)))
		}
	}
	return out
}

// age is how long ago l last made progress, as last checked.
func (w *watchdog) age(l *watchedLoop) time.Duration {
	return max(time.Since(w.epoch)-time.Duration(l.progressed.Load()), 0)
}

var (
	descWatchdogStuck = prometheus.NewDesc("godwit_watchdog_stuck",
		"1 while the loop is stuck: it made no progress for the watchdog's threshold (5s). Loops: fleet (gossip into the routing table), routing (the table's lock), health (check results into the table), autostop (the autostart manager's lock).", []string{"loop"}, nil)
	descWatchdogProgress = prometheus.NewDesc("godwit_watchdog_last_progress_seconds",
		"Time since the watchdog last saw the loop make progress (it checks every second): at most about a second while the loop turns.", []string{"loop"}, nil)
)

func (w *watchdog) Describe(ch chan<- *prometheus.Desc) {
	ch <- descWatchdogStuck
	ch <- descWatchdogProgress
}

func (w *watchdog) Collect(ch chan<- prometheus.Metric) {
	for _, l := range w.loops {
		if !l.active.Load() {
			continue
		}
		stuck := 0.0
		if l.stuck.Load() {
			stuck = 1
		}
		ch <- prometheus.MustNewConstMetric(descWatchdogStuck, prometheus.GaugeValue, stuck, l.name)
		ch <- prometheus.MustNewConstMetric(descWatchdogProgress, prometheus.GaugeValue, w.age(l).Seconds(), l.name)
	}
}

// watchLoops watches the routing table's lock, the health checker's
// results and the autostop loop (the fleet's loop is watched where Run
// starts it) and runs the watchdog in g until ctx ends.
func (s *Server) watchLoops(ctx context.Context, g *errgroup.Group) {
	s.watch.watch(s.watch.routing, s.table.Probe)
	s.watch.watch(s.watch.health, nil)
	// The Manager's lock: its autostop pass holds it throughout.
	wakes := s.handler.wakes
	s.watch.watch(s.watch.autostop, func() { wakes.RecentlyStopped("") })
	g.Go(func() error { s.watch.run(ctx); return nil })
}
