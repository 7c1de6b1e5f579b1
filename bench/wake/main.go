// Command wake benchmarks godwit's wake overhead (issue 5): the time from
// a burst of concurrent requests for a stopped (or suspended) machine to
// the first response through godwit, minus the app's own start-to-ready
// (or resume-to-answer) time measured without godwit, p50/p99, and the
// waiters that failed.
//
// It builds godwit (or takes -godwit) and autostart's test app into a temp
// dir, runs `godwit run` as a child process with one exec machine, and
// interleaves per round: the app alone cold, the app alone resumed, godwit
// cold, godwit resumed. It writes a markdown report to stdout and -out,
// progress to stderr, and ends every child on exit, Ctrl-C too. Run from
// the repository root:
//
//	go run ./bench/wake -quick   # smoke test, 3 rounds, a few seconds
//	go run ./bench/wake          # 20 rounds
//
// bench/README.md describes the method.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/godwit/godwit/bench/internal/benchcmd"
	"github.com/godwit/godwit/bench/internal/benchenv"
	"github.com/godwit/godwit/bench/internal/child"
)

// settings is the parsed command line.
type settings struct {
	godwit      string
	out         string
	n           int
	waiters     int
	listenDelay time.Duration
	proxyCPU    int
	loadCPU     int
	settle      time.Duration
	keepTmp     bool
	quick       bool
}

// pinnedEnv marks the bench's own re-exec under taskset.
const pinnedEnv = "GODWIT_WAKE_BENCH_PINNED"

// logf writes progress to stderr.
var logf = benchcmd.Logf("wake")

func main() {
	var s settings
	flag.StringVar(&s.godwit, "godwit", "", "a godwit binary to measure instead of building ./cmd/godwit")
	flag.StringVar(&s.out, "out", "bench/wake-latest.md", "report file (also printed to stdout); \"\" for stdout only")
	flag.IntVar(&s.n, "n", 20, "rounds; each measures the app alone and godwit, cold and resumed, once")
	flag.IntVar(&s.waiters, "waiters", 50, "concurrent requests sent through godwit at once per round")
	flag.DurationVar(&s.listenDelay, "listen-delay", 0, "the test app's -listen-delay (a slower boot)")
	flag.IntVar(&s.proxyCPU, "proxy-cpu", 0, "core for godwit (taskset); -1: not pinned")
	flag.IntVar(&s.loadCPU, "load-cpu", 1, "core for the bench (the waiters) and the test app; -1: not pinned")
	flag.DurationVar(&s.settle, "settle", 100*time.Millisecond, "pause after a stop or suspend before the next measurement")
	flag.BoolVar(&s.keepTmp, "keep-tmp", false, "keep the temp dir (binaries, godwit's config and log)")
	flag.BoolVar(&s.quick, "quick", false, "smoke test: -n 3; explicit flags still win")
	if err := benchcmd.Parse(flag.CommandLine, os.Args[1:], map[string]string{"n": "3"}); err != nil {
		fmt.Fprintln(os.Stderr, "wake:", err)
		os.Exit(2)
	}
	if s.n < 1 || s.waiters < 1 {
		fmt.Fprintln(os.Stderr, "wake: -n and -waiters must be at least 1")
		os.Exit(2)
	}
	if child.TasksetPath == "" {
		s.proxyCPU, s.loadCPU = -1, -1
	}
	if s.loadCPU >= 0 && os.Getenv(pinnedEnv) == "" {
		os.Exit(reexecPinned(s.loadCPU))
	}
	os.Exit(benchcmd.Run(logf, func(ctx context.Context) error { return run(ctx, s) }))
}

// reexecPinned runs the bench again under taskset on cpu (Go's threads
// all follow a process's affinity only when it is set before they exist)
// and returns its exit status. Signals reach the child too: it is in the
// same process group, and SIGTERM is passed on.
func reexecPinned(cpu int) int {
	self, err := os.Executable()
	if err != nil {
		logf("FAILED: %v", err)
		return 1
	}
	c := child.Command(cpu, append([]string{self}, os.Args[1:]...)...)
	c.Env = append(os.Environ(), pinnedEnv+"=1")
	c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	if err := c.Start(); err != nil {
		logf("FAILED: %v", err)
		return 1
	}
	go func() {
		for sig := range sigs {
			if sig == syscall.SIGTERM {
				c.Process.Signal(sig)
			}
		}
	}()
	err = c.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return 1
	}
	return 0
}

// run does the whole benchmark. At an interrupt (ctx) it stops between
// measurements, and its deferred calls stop godwit (which stops its
// machine) and the app.
func run(ctx context.Context, s settings) error {
	root, err := benchenv.ModuleRoot()
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "godwit-wake-")
	if err != nil {
		return err
	}
	keep := false // set by a failure worth a look at the logs
	defer func() {
		if s.keepTmp || (keep && ctx.Err() == nil) {
			logf("temp dir kept: %s", tmp)
		} else {
			os.RemoveAll(tmp)
		}
	}()

	if s.godwit == "" {
		logf("go build ./cmd/godwit")
	}
	bin, err := benchenv.Godwit(ctx, root, s.godwit, tmp)
	if err != nil {
		return err
	}
	testapp := filepath.Join(tmp, "testapp")
	logf("go build ./autostart/internal/testapp")
	if err := benchenv.Build(ctx, root, testapp, "./autostart/internal/testapp"); err != nil {
		return err
	}
	appArgv := []string{testapp, "-listen-delay", s.listenDelay.String()}
	// godwit runs the same argv, taskset included, so that the app runs on
	// the same core in both cases and taskset's exec is in both times.
	machineArgv := appArgv
	if s.loadCPU >= 0 {
		machineArgv = append([]string{child.TasksetPath, "-c", strconv.Itoa(s.loadCPU)}, appArgv...)
	}

	ports, err := benchenv.FreePorts(3)
	if err != nil {
		return err
	}
	coldPort, resumePort, machinePort := ports[0], ports[1], ports[2]
	cfgPath := filepath.Join(tmp, "godwit.toml")
	cfgText := godwitConfig(machinePort, machineArgv, s.waiters)
	if err := os.WriteFile(cfgPath, []byte(cfgText), 0o644); err != nil {
		return err
	}
	loadBefore := benchenv.LoadAvg()

	logf("starting godwit (%s) on cpu %d", bin, s.proxyCPU)
	e, err := startEdge(ctx, bin, cfgPath, filepath.Join(tmp, "godwit.log"), s.proxyCPU)
	if err != nil {
		keep = true
		return err
	}
	pids := map[int]bool{} // machine pids seen, killed if godwit leaves one
	defer func() {
		e.stop()
		killStray(pids, testapp)
	}()
	g := &godwitBench{edge: e, waiters: s.waiters, settle: s.settle, pids: pids}

	// The app alone, resumed, needs a running app of its own.
	resumeApp, err := startApp(appArgv, s.loadCPU, resumePort)
	if err != nil {
		return err
	}
	defer resumeApp.Stop(appStopGrace)
	if _, err := pollReady(resumePort, 10*time.Second); err != nil {
		return fmt.Errorf("test app alone: %w", err)
	}
	if err := g.warmup(); err != nil {
		keep = true
		return err
	}

	var r results
	for i := 0; i < s.n; i++ {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		d, err := baselineCold(appArgv, s.loadCPU, coldPort)
		if err != nil {
			return fmt.Errorf("round %d: app alone, cold: %w", i+1, err)
		}
		r.baseCold = append(r.baseCold, d)
		time.Sleep(s.settle)
		d, err = baselineResume(resumeApp, resumePort, s.settle)
		if err != nil {
			return fmt.Errorf("round %d: app alone, resume: %w", i+1, err)
		}
		r.baseResume = append(r.baseResume, d)
		warm := g.burst()
		if warm.failed > 0 {
			keep = true
			return fmt.Errorf("round %d: godwit, machine running: %d of %d requests failed: %s", i+1, warm.failed, s.waiters, strings.Join(warm.failures, "; "))
		}
		r.warm = append(r.warm, warm.first)
		cold, err := g.round("stop")
		if err != nil {
			keep = true
			return fmt.Errorf("round %d: godwit, cold: %w", i+1, err)
		}
		r.cold = append(r.cold, cold)
		resume, err := g.round("suspend")
		if err != nil {
			keep = true
			return fmt.Errorf("round %d: godwit, resume: %w", i+1, err)
		}
		r.resume = append(r.resume, resume)
		logf("round %d/%d: alone cold %s resume %s | godwit running %s | cold first %s last %s (woke %s) failed %d | resume first %s last %s (woke %s) failed %d",
			i+1, s.n, ms(r.baseCold[i]), ms(r.baseResume[i]), ms(r.warm[i]),
			ms(cold.first), ms(cold.last), ms(cold.woke), cold.failed,
			ms(resume.first), ms(resume.last), ms(resume.woke), resume.failed)
	}

	rep := report(s, r, reportInfo{
		root: root, godwit: bin, cfg: cfgText, argv: machineArgv,
		loadBefore: loadBefore, loadAfter: benchenv.LoadAvg(),
	})
	fmt.Print(rep)
	if s.out != "" {
		out := s.out
		if !filepath.IsAbs(out) {
			out = filepath.Join(root, out)
		}
		if err := os.WriteFile(out, []byte(rep), 0o644); err != nil {
			return err
		}
		logf("report written to %s", out)
	}
	return nil
}

// results holds every round's measurements: the app alone, cold and
// resumed; godwit's burst to the running machine (warm: its first answer);
// godwit's rounds.
type results struct {
	baseCold, baseResume []time.Duration
	warm                 []time.Duration
	cold, resume         []roundResult
}

// baselineCold execs the app and polls until GET / answers 200: exec to
// answer.
func baselineCold(argv []string, cpu, port int) (time.Duration, error) {
	t0 := time.Now()
	a, err := startApp(argv, cpu, port)
	if err != nil {
		return 0, err
	}
	defer a.Stop(appStopGrace)
	at, err := pollReady(port, 10*time.Second)
	if err != nil {
		return 0, err
	}
	return at.Sub(t0), nil
}

// baselineResume suspends the running app (SIGSTOP, until the kernel
// shows it stopped), waits settle, then sends SIGCONT and one GET / on a
// new connection: SIGCONT to answer.
func baselineResume(a *child.Proc, port int, settle time.Duration) (time.Duration, error) {
	pid := a.Pid()
	if err := a.Signal(syscall.SIGSTOP); err != nil {
		return 0, err
	}
	if err := waitState(pid, 'T', 5*time.Second); err != nil {
		return 0, err
	}
	time.Sleep(settle)
	t0 := time.Now()
	if err := a.Signal(syscall.SIGCONT); err != nil {
		return 0, err
	}
	if err := getOK(pollClient, port); err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}

// pollClient makes the baseline's requests, each on a new connection.
var pollClient = &http.Client{
	Transport: &http.Transport{DisableKeepAlives: true},
	Timeout:   2 * time.Second,
}

func getOK(c *http.Client, port int) error {
	resp, err := c.Get("http://127.0.0.1:" + strconv.Itoa(port) + "/")
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /: status %d", resp.StatusCode)
	}
	return nil
}

// pollReady tries GET / every 0.5 ms until it answers 200 and returns
// when it did.
func pollReady(port int, timeout time.Duration) (time.Time, error) {
	end := time.Now().Add(timeout)
	var last error
	for time.Now().Before(end) {
		if last = getOK(pollClient, port); last == nil {
			return time.Now(), nil
		}
		time.Sleep(500 * time.Microsecond)
	}
	return time.Time{}, fmt.Errorf("port %d not answering within %v: %w", port, timeout, last)
}

func godwitConfig(port int, argv []string, waiters int) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = strconv.Quote(a)
	}
	return fmt.Sprintf(`# written by bench/wake
[node]
name   = "wake-bench"
region = "iad"

[listen]
http  = "127.0.0.1:0"
admin = "127.0.0.1:0"

[log]
level  = "info"
format = "json"
access = false

[proxy]
drain_timeout = "2s"

[autostart]
wake_timeout  = "10s"
stop_interval = "1h"     # no autostop during the bench
max_waiters   = %d

[[app]]
name  = "wake"
hosts = ["wake.bench"]
# no checks: readiness is a TCP connect to the machine

[[machine]]
id      = "m1"
app     = "wake"
address = "127.0.0.1:%d"
state   = "stopped"
  [machine.driver]
  kind    = "exec"
  command = [%s]
`, max(1024, 2*waiters), port, strings.Join(q, ", "))
}

func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 2, 64) + "ms"
}
