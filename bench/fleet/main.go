// Command fleet benchmarks godwit's fleet with edges as child processes on
// loopback:
//
//	a. propagation: how long a machine's state change at its owner takes to
//	   show at every other edge (5 edges by default);
//	b. failover: after SIGKILL of an owner edge, how long until the accepting
//	   edge answers from another machine, what the requests meanwhile get,
//	   and how long until gossip declares the owner dead;
//	c. backhaul cost: latency and throughput of client → edge A → edge B →
//	   machine against client → edge B → machine, for the QUIC and HTTP/2
//	   backhauls.
//
// It builds godwit (or takes -godwit), writes a markdown report to stdout
// and -out (raw data beside it), and progress to stderr. Every child
// process ends with it, on Ctrl-C too. Run from the repository root:
//
//	go run ./bench/fleet -quick        # smoke test, about 1 min
//	go run ./bench/fleet               # full run, about 15 min
//
// bench/README.md describes the method.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/godwit/godwit/bench/internal/benchcmd"
	"github.com/godwit/godwit/bench/internal/benchenv"
)

// config is the parsed command line.
type config struct {
	godwit    string
	out       string
	phases    map[string]bool
	protocols []string
	edges     int
	changes   int
	pollEvery time.Duration
	changeGap time.Duration
	kills     int
	shotEvery time.Duration
	rounds    int
	duration  time.Duration
	warmup    time.Duration
	conns     []int
	proxyCPU  int
	edgeCap   float64
	loadCPU   int
	load      string // "wrk" or "go"
	keepTmp   bool
	quick     bool
}

var (
	tmpDir    string
	godwitBin string
	repoRoot  string
	outPath   string
)

// logf writes progress to stderr.
var logf = benchcmd.Logf("fleet")

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-internal-load" {
		internalLoad(os.Args[2:])
		return
	}
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "fleet:", err)
		os.Exit(2)
	}
	os.Exit(benchcmd.Run(logf, func(ctx context.Context) error { return run(ctx, cfg) }))
}

func parseFlags(args []string) (*config, error) {
	fs := flag.NewFlagSet("fleet", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: go run ./bench/fleet [flags]

Measures godwit's fleet with edges as child processes on loopback:
a. propagation of a machine state change to every edge, b. failover after
SIGKILL of an owner edge, c. the backhaul's cost (client → edge A → edge B →
machine against client → edge B → machine), per backhaul protocol (mux,
HTTP/2, QUIC). Writes a
markdown report to stdout and -out, progress to stderr. Needs Linux, Go,
taskset and two CPUs; wrk for c (installed with apt-get when missing and run
as root; else a Go load loop is used). See bench/README.md.

Flags:
`)
		fs.PrintDefaults()
	}
	c := &config{}
	quick := fs.Bool("quick", false, "smoke test: few samples, short runs (about 1 min); explicit flags still win")
	fs.StringVar(&c.godwit, "godwit", "", "a godwit binary to measure instead of building ./cmd/godwit")
	fs.StringVar(&c.out, "out", "bench/fleet-latest.md", "report file (relative to the repository root unless absolute); raw data beside it as -propagation.tsv, -failover.tsv, -backhaul.tsv")
	phases := fs.String("phases", "propagation,failover,backhaul", "what to measure, comma-separated")
	protocols := fs.String("protocols", "mux,h2,quic", "backhaul protocols, comma-separated (propagation uses the first)")
	fs.IntVar(&c.edges, "edges", 5, "edges in the propagation fleet")
	fs.IntVar(&c.changes, "changes", 30, "machine state changes measured (propagation)")
	fs.DurationVar(&c.pollEvery, "poll", 5*time.Millisecond, "how often each edge's /v1/machines is polled (propagation)")
	fs.DurationVar(&c.changeGap, "change-gap", 500*time.Millisecond, "pause between changes (propagation)")
	fs.IntVar(&c.kills, "kills", 5, "kills per protocol (failover)")
	fs.DurationVar(&c.shotEvery, "every", 10*time.Millisecond, "request interval at the accepting edge (failover)")
	fs.IntVar(&c.rounds, "rounds", 5, "rounds; every cell is measured once per round (backhaul)")
	fs.DurationVar(&c.duration, "duration", 10*time.Second, "one load run, whole seconds with wrk (backhaul)")
	fs.DurationVar(&c.warmup, "warmup", 2*time.Second, "warm-up run per scenario (backhaul)")
	conns := fs.String("conns", "1,64", "connection counts, comma-separated; the smallest gives the latency goal, the largest the throughput goal (backhaul)")
	fs.IntVar(&c.proxyCPU, "proxy-cpu", 0, "core for the edges of the backhaul benchmark (taskset)")
	fs.Float64Var(&c.edgeCap, "edge-cap", 0.4, "throughput runs with each edge capped at this fraction of a core (a cgroup each: a capacity of its own, as on separate machines); 0: none (backhaul)")
	fs.IntVar(&c.loadCPU, "load-cpu", 1, "core for the load generator and the backend (taskset)")
	fs.StringVar(&c.load, "load", "auto", "load generator: wrk, go (the bench's own loop), or auto (wrk, installed if missing and possible, else go)")
	fs.BoolVar(&c.keepTmp, "keep-tmp", false, "keep the temp dir (configs, every edge's log); kept anyway on failure")
	if err := benchcmd.Parse(fs, args, map[string]string{"changes": "6", "kills": "1", "rounds": "1", "duration": "2s", "warmup": "1s"}); err != nil {
		return nil, err
	}
	c.quick = *quick
	c.phases = map[string]bool{}
	for _, p := range benchcmd.List(*phases) {
		switch p {
		case "propagation", "failover", "backhaul":
			c.phases[p] = true
		default:
			return nil, fmt.Errorf("-phases: unknown %q (want propagation, failover, backhaul)", p)
		}
	}
	for _, p := range benchcmd.List(*protocols) {
		if p != "mux" && p != "h2" && p != "quic" {
			return nil, fmt.Errorf("-protocols: unknown %q (want mux, h2, quic)", p)
		}
		c.protocols = append(c.protocols, p)
	}
	if len(c.protocols) == 0 || len(c.phases) == 0 {
		return nil, errors.New("-phases and -protocols must name at least one")
	}
	for _, s := range benchcmd.List(*conns) {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("-conns: bad %q", s)
		}
		c.conns = append(c.conns, n)
	}
	if len(c.conns) == 0 {
		return nil, errors.New("-conns: none")
	}
	if c.load != "auto" && c.load != "wrk" && c.load != "go" {
		return nil, fmt.Errorf("-load: %q (want auto, wrk or go)", c.load)
	}
	if c.changes < 1 || c.kills < 1 || c.rounds < 1 || c.duration < time.Second {
		return nil, errors.New("-changes, -kills and -rounds must be at least 1, -duration at least 1s")
	}
	return c, nil
}

// run does the whole benchmark. It removes its temp dir at the end unless
// -keep-tmp or a failure (not an interrupt) says to keep it.
func run(ctx context.Context, cfg *config) (err error) {
	if runtime.GOOS != "linux" {
		return errors.New("needs Linux (loopback addresses beyond 127.0.0.1, /proc, taskset)")
	}
	if repoRoot, err = benchenv.ModuleRoot(); err != nil {
		return err
	}
	outPath = cfg.out
	if !filepath.IsAbs(outPath) {
		outPath = filepath.Join(repoRoot, outPath)
	}
	if _, err := exec.LookPath("taskset"); err != nil && cfg.phases["backhaul"] {
		return errors.New("taskset not found (Debian: apt-get install util-linux)")
	}
	if cfg.phases["backhaul"] && runtime.NumCPU() < 2 {
		return fmt.Errorf("the backhaul benchmark pins edges and load to two cores; this machine has %d", runtime.NumCPU())
	}
	if tmpDir, err = os.MkdirTemp("", "godwit-fleet-bench-"); err != nil {
		return err
	}
	defer func() {
		if cfg.keepTmp || (err != nil && ctx.Err() == nil) {
			logf("temp dir kept: %s (configs and every edge's log)", tmpDir)
		} else {
			os.RemoveAll(tmpDir)
		}
	}()
	if cfg.phases["backhaul"] {
		cfg.load = chooseLoad(cfg.load)
	}
	if cfg.godwit == "" {
		logf("building ./cmd/godwit")
	}
	if godwitBin, err = benchenv.Godwit(ctx, repoRoot, cfg.godwit, tmpDir); err != nil {
		return err
	}
	header := machineInfo(cfg)
	started := time.Now()
	var sections []string
	for _, p := range []struct {
		name string
		fn   func(context.Context, *config) (string, error)
	}{{"propagation", runPropagation}, {"failover", runFailover}, {"backhaul", runBackhaul}} {
		if !cfg.phases[p.name] {
			continue
		}
		s, err := p.fn(ctx, cfg)
		if err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		sections = append(sections, s)
	}
	report := header + fmt.Sprintf("- load average after the runs: %s; took %v\n\n", benchenv.LoadAvg(), time.Since(started).Round(time.Second)) +
		strings.Join(sections, "\n")
	if err := os.MkdirAll(filepath.Dir(outPath), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(outPath, []byte(report), 0o644); err != nil {
		return err
	}
	fmt.Print(report)
	logf("report written to %s (raw data: %s-*.tsv)", outPath, strings.TrimSuffix(outPath, ".md"))
	return nil
}

// chooseLoad resolves -load auto: wrk if installed, else installed with
// apt-get when running as root (as bench/run.sh does), else the Go loop.
func chooseLoad(load string) string {
	if load != "auto" {
		return load
	}
	if _, err := exec.LookPath("wrk"); err == nil {
		return "wrk"
	}
	if os.Geteuid() == 0 {
		if _, err := exec.LookPath("apt-get"); err == nil {
			logf("installing wrk from Debian (apt-get)")
			env := append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
			up := exec.Command("apt-get", "update", "-q")
			up.Env = env
			in := exec.Command("apt-get", "install", "-y", "-q", "--no-install-recommends", "wrk")
			in.Env = env
			if out, err := up.CombinedOutput(); err != nil {
				logf("apt-get update failed (%v): %s", err, lastLines(string(out), 3))
			} else if out, err := in.CombinedOutput(); err != nil {
				logf("apt-get install wrk failed (%v): %s", err, lastLines(string(out), 3))
			}
			if _, err := exec.LookPath("wrk"); err == nil {
				return "wrk"
			}
		}
	}
	logf("wrk not available: using the bench's Go load loop")
	return "go"
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, " / ")
}

// machineInfo is the report's header: what ran, where, how.
func machineInfo(cfg *config) string {
	var b strings.Builder
	b.WriteString("# godwit fleet benchmark\n\n")
	fmt.Fprintf(&b, "- command: `go run ./bench/fleet %s`\n", strings.Join(os.Args[1:], " "))
	fmt.Fprintf(&b, "- date: %s\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	if commit := benchenv.Commit(repoRoot); cfg.godwit != "" {
		fmt.Fprintf(&b, "- godwit binary: prebuilt %s (not built from this tree; tree at %s)\n", cfg.godwit, commit)
	} else {
		fmt.Fprintf(&b, "- godwit commit: %s\n", commit)
	}
	fmt.Fprintf(&b, "- machine: %d CPUs, %s, kernel %s\n", benchenv.CPUCount(), benchenv.CPUModel(), benchenv.Kernel())
	tools := benchenv.GoVersion()
	if cfg.phases["backhaul"] {
		if cfg.load == "wrk" {
			wv, _ := exec.Command("wrk", "-v").CombinedOutput() // it exits with status 1
			if f := strings.Fields(string(wv)); len(f) > 1 {
				tools += ", wrk " + f[1]
			}
		} else {
			tools += ", load: the bench's Go loop (wrk not available)"
		}
	}
	fmt.Fprintf(&b, "- tools: %s\n", tools)
	phases := []string{}
	for _, p := range []string{"propagation", "failover", "backhaul"} {
		if cfg.phases[p] {
			phases = append(phases, p)
		}
	}
	quick := ""
	if cfg.quick {
		quick = " (QUICK: a smoke test, not a measurement)"
	}
	fmt.Fprintf(&b, "- settings: phases %s; protocols %s; propagation %d edges, %d changes, poll %v; failover %d kills per protocol, a request every %v; backhaul %d rounds × %v (warm-up %v), conns %v, edges on CPU %d, load + backend on CPU %d%s\n",
		strings.Join(phases, ","), strings.Join(cfg.protocols, ","), cfg.edges, cfg.changes, cfg.pollEvery, cfg.kills, cfg.shotEvery,
		cfg.rounds, cfg.duration, cfg.warmup, cfg.conns, cfg.proxyCPU, cfg.loadCPU, quick)
	fmt.Fprintf(&b, "- load average (1/5/15 min) before the runs: %s (other work on the two cores shows as noise)\n", benchenv.LoadAvg())
	return b.String()
}

// writeTSV writes raw rows beside the report: OUT-<name>.tsv.
func writeTSV(name string, rows [][]string) {
	path := strings.TrimSuffix(outPath, ".md") + "-" + name + ".tsv"
	var b strings.Builder
	for _, r := range rows {
		b.WriteString(strings.Join(r, "\t") + "\n")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err == nil {
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			logf("WARNING: %v", err)
		}
	}
}
