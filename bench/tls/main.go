// Command tls benchmarks godwit against Caddy over TLS (issue 6): requests
// per second and p50/p99 latency for HTTP/1.1, HTTP/2 and HTTP/3, with a
// small (13-byte) and a 1 MiB response, both proxies in the same run,
// interleaved per round, in front of the same backend with the same
// certificate. Goal: godwit's HTTP/3 throughput at least Caddy's HTTP/3,
// and its HTTP/2 at least Caddy's HTTP/2.
//
// It builds godwit (or takes -godwit), installs Caddy with `go install`
// into the user's cache dir (or takes -caddy), writes a certificate for
// bench.test, and runs the backend (this binary, -internal-backend),
// godwit and Caddy as child processes, the proxies pinned to -proxy-cpu.
// The load is vegeta's library with one http.Client per protocol (quic-go's
// http3.Transport for HTTP/3), in this process, pinned to -load-cpu with
// the backend. It writes a markdown report to stdout and -out, raw data
// beside it, progress to stderr, and ends every child on exit, Ctrl-C too.
// Run from the repository root:
//
//	go run ./bench/tls -quick   # smoke test: 1 round x 1 s per cell, about 1 min
//	go run ./bench/tls          # 3 rounds x 5 s per cell, about 7 min
//
// bench/README.md describes the method.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/godwit/godwit/bench/internal/benchcmd"
	"github.com/godwit/godwit/bench/internal/benchenv"
	"github.com/godwit/godwit/bench/internal/child"
)

// stopGrace is how long a child has to exit after SIGTERM before SIGKILL.
const stopGrace = 10 * time.Second

// settings is the parsed command line.
type settings struct {
	godwit, caddy, caddyVersion string
	out                         string
	targets, protocols, sizes   []string
	rounds                      int
	duration, warmup, latDur    time.Duration
	conc                        int
	latRate                     map[string]int // size → req/s of the latency runs; 0: none
	proxyCPU, loadCPU           int
	keepTmp, quick              bool
}

// logf writes progress to stderr.
var logf = benchcmd.Logf("tls")

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-internal-backend" {
		internalBackend(os.Args[2:])
		return
	}
	s, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "tls:", err)
		os.Exit(2)
	}
	os.Exit(benchcmd.Run(logf, func(ctx context.Context) error { return runBench(ctx, s) }))
}

func parseFlags(args []string) (*settings, error) {
	fs := flag.NewFlagSet("tls", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: go run ./bench/tls [flags]

Requests/s and p50/p99 through godwit and Caddy over TLS: HTTP/1.1, HTTP/2
and HTTP/3, small and 1 MiB responses, interleaved per round. Writes a
markdown report to stdout and -out, progress to stderr. Needs Linux, Go,
taskset and two CPUs, and the Go module proxy the first time (Caddy is
installed with go install into the user's cache dir). See bench/README.md.

Flags:
`)
		fs.PrintDefaults()
	}
	s := &settings{}
	quick := fs.Bool("quick", false, "smoke test: -rounds 1 -duration 1s -warmup 0s; explicit flags still win")
	fs.StringVar(&s.godwit, "godwit", "", "a godwit binary to measure instead of building ./cmd/godwit")
	fs.StringVar(&s.caddy, "caddy", "", "a Caddy binary to use instead of the go-installed -caddy-version")
	fs.StringVar(&s.caddyVersion, "caddy-version", "v2.11.9", "Caddy version to go install (cached in the user's cache dir)")
	fs.StringVar(&s.out, "out", "bench/tls-latest.md", "report file (relative to the repository root unless absolute; \"\": stdout only); raw data beside it as .tsv")
	targets := fs.String("targets", "godwit,caddy", "proxies, comma-separated, in the order of odd rounds (even rounds reverse it)")
	protos := fs.String("protocols", "h1,h2,h3", "client protocols, comma-separated")
	sizeList := fs.String("sizes", "small,1m", "response sizes: small (13 B), 1m (1 MiB)")
	fs.IntVar(&s.rounds, "rounds", 3, "rounds; every cell is measured once per round")
	fs.DurationVar(&s.duration, "duration", 5*time.Second, "one max-throughput run")
	fs.DurationVar(&s.warmup, "warmup", time.Second, "max-throughput warm-up run per cell before round 1")
	fs.IntVar(&s.conc, "conc", 32, "requests in flight (vegeta workers = max workers)")
	latRate := fs.String("latency-rate", "small=1000,1m=50", "req/s of the fixed-rate latency runs per size; \"\" or 0: none")
	fs.DurationVar(&s.latDur, "latency-duration", 0, "one fixed-rate run (0: -duration)")
	fs.IntVar(&s.proxyCPU, "proxy-cpu", 0, "core for the proxies (taskset); -1: not pinned")
	fs.IntVar(&s.loadCPU, "load-cpu", 1, "core for the load generator and the backend (taskset); -1: not pinned")
	fs.BoolVar(&s.keepTmp, "keep-tmp", false, "keep the temp dir (configs, certificate, logs); kept anyway on failure")
	if err := benchcmd.Parse(fs, args, map[string]string{"rounds": "1", "duration": "1s", "warmup": "0s"}); err != nil {
		return nil, err
	}
	s.quick = *quick
	if s.latDur == 0 {
		s.latDur = s.duration
	}
	var err error
	if s.targets, err = oneOf("-targets", *targets, "godwit", "caddy"); err != nil {
		return nil, err
	}
	if s.protocols, err = oneOf("-protocols", *protos, protocols...); err != nil {
		return nil, err
	}
	if s.sizes, err = oneOf("-sizes", *sizeList, "small", "1m"); err != nil {
		return nil, err
	}
	s.latRate = map[string]int{}
	if *latRate != "" && *latRate != "0" {
		for _, kv := range benchcmd.List(*latRate) {
			k, v, ok := strings.Cut(kv, "=")
			n, err := strconv.Atoi(v)
			if _, known := sizes[k]; !ok || !known || err != nil || n < 0 {
				return nil, fmt.Errorf("-latency-rate: bad %q (want size=req/s, e.g. small=1000,1m=50)", kv)
			}
			s.latRate[k] = n
		}
	}
	if s.rounds < 1 || s.duration < 100*time.Millisecond || s.conc < 1 {
		return nil, errors.New("-rounds and -conc must be at least 1, -duration at least 100ms")
	}
	return s, nil
}

// oneOf splits a comma-separated list and checks each entry against
// allowed.
func oneOf(flagName, list string, allowed ...string) ([]string, error) {
	var out []string
	for _, v := range benchcmd.List(list) {
		if !slices.Contains(allowed, v) {
			return nil, fmt.Errorf("%s: unknown %q (want %s)", flagName, v, strings.Join(allowed, ", "))
		}
		if !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: none", flagName)
	}
	return out, nil
}

// cellKey names a cell: a target, a protocol and a size.
type cellKey struct {
	target, proto, size string
}

// run is one measured attack.
type run struct {
	round     int
	cell      cellKey
	rate      int // 0: max throughput
	res       loadResult
	cpuUs     float64 // the proxy's CPU µs per request
	proxyBusy float64 // % of the proxy core that the proxy used
	coreBusy  float64 // % of the proxy core busy, anyone
	loadBusy  float64 // % of the load core busy (vegeta and the backend)
	load1     string
}

// env is what the report says about the set-up beside the runs.
type env struct {
	root       string
	godwitBin  string
	caddyBin   string
	caddyVer   string
	caddyQUIC  string
	godwitQUIC string
	caddyNote  string // why Caddy was not measured; "" when it was
	failed     map[cellKey]string
	loadBefore string
	loadAfter  string
	pinned     bool
	configs    map[string]string
	started    time.Time
}

// runBench does the whole benchmark; main cleans up after it.
func runBench(ctx context.Context, s *settings) error {
	if runtime.GOOS != "linux" {
		return errors.New("needs Linux (/proc, taskset)")
	}
	root, err := benchenv.ModuleRoot()
	if err != nil {
		return err
	}
	e := &env{root: root, failed: map[cellKey]string{}, configs: map[string]string{}, started: time.Now()}
	pin := child.TasksetPath != "" && s.proxyCPU >= 0 && s.loadCPU >= 0
	if !pin {
		logf("WARNING: not pinning (taskset missing or a cpu is -1): the proxies and the load share the cores")
		s.proxyCPU, s.loadCPU = -1, -1
	} else if runtime.NumCPU() < 2 {
		return fmt.Errorf("the bench pins the proxies and the load to two cores; this machine has %d (use -proxy-cpu -1)", runtime.NumCPU())
	}
	e.pinned = pin

	tmp, err := os.MkdirTemp("", "godwit-tls-bench-")
	if err != nil {
		return err
	}
	keep := false // set by a failure worth a look at the logs
	defer func() {
		if s.keepTmp || (keep && ctx.Err() == nil) {
			logf("temp dir kept: %s (configs, certificate, every log)", tmp)
		} else {
			os.RemoveAll(tmp)
		}
	}()

	// Builds first, on every core. Caddy alone: nothing to build.
	if slices.Contains(s.targets, "godwit") {
		if s.godwit == "" {
			logf("go build ./cmd/godwit")
		}
		if e.godwitBin, err = benchenv.Godwit(ctx, root, s.godwit, tmp); err != nil {
			return err
		}
		e.godwitQUIC = moduleVersion(e.godwitBin, "github.com/quic-go/quic-go")
	}
	if slices.Contains(s.targets, "caddy") {
		if s.caddy != "" {
			e.caddyBin, err = filepath.Abs(s.caddy)
		} else {
			e.caddyBin, err = caddyBinary(s.caddyVersion)
		}
		if err != nil {
			e.caddyNote = "Caddy was not measured: " + err.Error()
			logf("WARNING: %s", e.caddyNote)
			s.targets = slices.DeleteFunc(s.targets, func(t string) bool { return t == "caddy" })
		} else {
			e.caddyVer, e.caddyQUIC = caddyVersion(e.caddyBin)
		}
	}
	if len(s.targets) == 0 {
		return errors.New("no target left to measure")
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}

	cert, err := newBenchCert(tmp)
	if err != nil {
		return err
	}
	e.loadBefore = benchenv.LoadAvg()

	// Ports: the backend's, then one per proxy.
	ports, err := benchenv.FreePorts(1 + len(s.targets))
	if err != nil {
		return err
	}

	// The backend shares the load generator's core, so that the proxies'
	// core runs nothing of ours but the proxy measured.
	backendAddr := "127.0.0.1:" + strconv.Itoa(ports[0])
	backend, err := child.Start(child.Command(s.loadCPU, self, "-internal-backend", "-addr", backendAddr), "backend", filepath.Join(tmp, "backend.log"), nil)
	if err != nil {
		return err
	}
	defer backend.Stop(stopGrace)
	if err := backend.WaitTCP(ctx, backendAddr, 10*time.Second); err != nil {
		return err
	}

	idle := max(64, s.conc) // idle upstream connections kept, both proxies
	targets := map[string]*target{}
	for i, name := range s.targets {
		addr := "127.0.0.1:" + strconv.Itoa(ports[1+i])
		var t *target
		switch name {
		case "godwit":
			logf("starting godwit on %s (HTTPS tcp, HTTP/3 udp), cpu %d", addr, s.proxyCPU)
			t, err = startGodwit(ctx, e.godwitBin, tmp, addr, backendAddr, cert, s.proxyCPU, idle)
			if err != nil {
				keep = true
				return err
			}
		case "caddy":
			logf("starting Caddy %s on %s (HTTPS tcp, HTTP/3 udp), cpu %d", e.caddyVer, addr, s.proxyCPU)
			t, err = startCaddy(ctx, e.caddyBin, tmp, addr, backendAddr, cert, s.proxyCPU, idle)
			if err != nil {
				e.caddyNote = "Caddy was not measured: it did not start: " + err.Error()
				logf("WARNING: %s", e.caddyNote)
				keep = true
				continue
			}
		}
		defer t.p.Stop(stopGrace)
		targets[name] = t
		e.configs[name] = t.cfg
	}
	s.targets = slices.DeleteFunc(s.targets, func(n string) bool { return targets[n] == nil })

	if pin {
		if err := pinSelf(s.loadCPU); err != nil {
			return err
		}
		runtime.GOMAXPROCS(1)
	}

	// Checks: every cell answers 200 with the right body over the right
	// protocol before anything is measured. A cell that does not is
	// reported as failed, and the others are measured.
	var cells []cellKey
	for _, size := range s.sizes {
		for _, proto := range s.protocols {
			for _, name := range s.targets {
				k := cellKey{name, proto, size}
				if err := check(ctx, targets[name], proto, size, cert, 5*time.Second); err != nil {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					e.failed[k] = shortErr(err.Error())
					logf("check %s %s %s: FAILED: %s (the cell is reported as failed)", label(name), protoName[proto], sizeLabel(size), e.failed[k])
					continue
				}
				logf("check %s %s %s: ok", label(name), protoName[proto], sizeLabel(size))
				cells = append(cells, k)
			}
		}
	}
	if len(cells) == 0 {
		keep = true
		return errors.New("no cell passed its check")
	}

	if s.warmup > 0 {
		logf("warm-up: %v per cell, %d cells", s.warmup, len(cells))
		for _, k := range cells {
			attack(ctx, targets[k.target], k.proto, k.size, cert, s.conc, 0, s.warmup)
			if ctx.Err() != nil {
				return ctx.Err()
			}
		}
	}

	perRound := 0
	for _, k := range cells {
		perRound++
		if s.latRate[k.size] > 0 {
			perRound++
		}
	}
	total := s.rounds * perRound
	est := float64(s.rounds) * (float64(len(cells))*s.duration.Seconds() + float64(perRound-len(cells))*s.latDur.Seconds())
	logf("measuring %d runs (about %.0f s)", total, est)
	var runs []run
	n := 0
	for r := 1; r <= s.rounds; r++ {
		order := slices.Clone(s.targets)
		if r%2 == 0 {
			slices.Reverse(order)
		}
		for _, size := range s.sizes {
			for _, proto := range s.protocols {
				rates := []int{0} // max throughput, then the fixed rate
				if lr := s.latRate[size]; lr > 0 {
					rates = append(rates, lr)
				}
				for _, rate := range rates {
					for _, name := range order {
						k := cellKey{name, proto, size}
						if _, bad := e.failed[k]; bad {
							continue
						}
						t := targets[name]
						dur := s.duration
						if rate > 0 {
							dur = s.latDur
						}
						t0, _ := benchenv.ProcessTicks(t.p.Pid())
						pb0, pt0 := benchenv.CoreTicks(s.proxyCPU)
						lb0, lt0 := benchenv.CoreTicks(s.loadCPU)
						res := attack(ctx, t, proto, size, cert, s.conc, rate, dur)
						if ctx.Err() != nil {
							return ctx.Err()
						}
						t1, terr := benchenv.ProcessTicks(t.p.Pid())
						pb1, pt1 := benchenv.CoreTicks(s.proxyCPU)
						lb1, lt1 := benchenv.CoreTicks(s.loadCPU)
						if t.p.Exited() || terr != nil {
							keep = true
							return fmt.Errorf("round %d, %s %s %s: %w", r, label(name), protoName[proto], sizeLabel(size), t.p.Died())
						}
						ru := run{round: r, cell: k, rate: rate, res: res, cpuUs: math.NaN(), proxyBusy: math.NaN(), coreBusy: math.NaN(), loadBusy: math.NaN()}
						if res.requests > 0 {
							ru.cpuUs = float64(t1-t0) / benchenv.TicksPerSecond() * 1e6 / float64(res.requests)
						}
						if pt1 > pt0 {
							// /proc/stat counts USER_HZ ticks per CPU, as /proc/PID/stat does.
							ru.proxyBusy = 100 * float64(t1-t0) / float64(pt1-pt0)
							ru.coreBusy = 100 * float64(pb1-pb0) / float64(pt1-pt0)
						}
						if lt1 > lt0 {
							ru.loadBusy = 100 * float64(lb1-lb0) / float64(lt1-lt0)
						}
						if f := strings.Fields(benchenv.LoadAvg()); len(f) > 0 {
							ru.load1 = f[0]
						}
						runs = append(runs, ru)
						n++
						mode := "max"
						if rate > 0 {
							mode = fmt.Sprintf("%d/s", rate)
						}
						logf("[%d/%d] round %d %s %s %s %s: %.0f req/s p50 %.2f ms p99 %.2f ms, %d requests, %d errors, %s CPU %.0f µs/req, proxy core %.0f%% (proxy %.0f%%), load core %.0f%%",
							n, total, r, protoName[proto], sizeLabel(size), label(name), mode, res.rps, res.p50, res.p99, res.requests, res.errors, label(name), ru.cpuUs, ru.coreBusy, ru.proxyBusy, ru.loadBusy)
						if res.errors > 0 {
							logf("WARNING: %d errors: %s", res.errors, strings.Join(res.errs, "; "))
						}
					}
				}
			}
		}
	}
	e.loadAfter = benchenv.LoadAvg()

	rep := report(s, e, runs)
	fmt.Print(rep)
	if s.out != "" {
		path := s.out
		if !filepath.IsAbs(path) {
			path = filepath.Join(e.root, path)
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, []byte(rep), 0o644); err != nil {
			return err
		}
		tsv := strings.TrimSuffix(path, ".md") + ".tsv"
		if err := os.WriteFile(tsv, []byte(runsTSV(runs)), 0o644); err != nil {
			return err
		}
		logf("report written to %s (raw data: %s)", path, tsv)
	}
	return nil
}
