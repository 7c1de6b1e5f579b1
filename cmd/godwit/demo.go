package main

import (
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/godwit/godwit/config"
	"github.com/godwit/godwit/proxy"
)

// demoConfig is the config of one demo edge, a text/template rendered with
// a demoEdgeConfig. It is TOML, as an operator writes it, rather than
// config values built in Go: the demo then shows what a fleet's config
// looks like, config.Parse validates it as it would a file, and the
// shared parts (simulated distances, apps) read in one place.
//
//go:embed demo.toml
var demoConfig string

// demoRegions are the regions of the demo's fleet, in the order of their
// edges' ports. Never written.
var demoRegions = []string{"iad", "cdg", "nrt"}

// demoSleeper is the region whose hello machine sleeps (a process of its
// own, stopped) until a request needs it: the farthest from the first
// edge.
const demoSleeper = "nrt"

// demoReadyWithin bounds how long the fleet may take to start and learn
// every machine through gossip before the demo gives up.
const demoReadyWithin = 10 * time.Second

// demoEdgeConfig is what demo.toml needs to render one edge.
type demoEdgeConfig struct {
	Name, Region string
	HTTP, Admin  string // listen addresses
	Level        string // log.level
	Access       bool   // log.access
	Join         []string
	KeyFile      string // gossip.secret_key_file
	Machines     []demoMachineConfig
}

// demoMachineConfig is one [[machine]] of an edge.
type demoMachineConfig struct {
	ID, App, Region, Addr string
	Primary               string // the app's primary_region (not rendered)
	// Command, if set, runs the machine as a process of its own (driver
	// exec), stopped until a request needs it. Nil: the demo serves it
	// in-process (driver none), started.
	Command []string
}

// demoEdge is one running edge of the demo.
type demoEdge struct {
	conf demoEdgeConfig
	cfg  *config.Config
	srv  *proxy.Server // nil until started
	stop context.CancelFunc
	done chan error // Run's error, once it has returned
}

// cmdDemo runs a small fleet in one process: an edge per region (more with
// -edges), gossiping on loopback with a key made at start, the backhaul
// between them delayed by real inter-region round trips, and sample
// machines of two apps in every region. It prints how to talk to it and
// runs until ctx ends, then drains every edge and stops the machines.
func cmdDemo(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	began := time.Now()
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	httpAddr := fs.String("http", "127.0.0.1:8080", "the first edge's client listener; the other edges take the next ports (port 0: free ports)")
	adminAddr := fs.String("admin", "127.0.0.1:9090", "the first edge's admin listener (/metrics, /v1/...); the other edges take the next ports (port 0: free ports)")
	perRegion := fs.Int("edges", 1, "edges per region (1 to 9)")
	verbose := fs.Bool("v", false, "log every request, and the edges' own events")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 || *perRegion < 1 || *perRegion > 9 {
		fmt.Fprintln(stderr, "usage: godwit demo [-http ADDR] [-admin ADDR] [-edges N] [-v]")
		return 2
	}
	n := len(demoRegions) * *perRegion
	https, err := demoAddrs(*httpAddr, n)
	if err != nil {
		fmt.Fprintln(stderr, "demo: -http:", err)
		return 2
	}
	admins, err := demoAddrs(*adminAddr, n)
	if err != nil {
		fmt.Fprintln(stderr, "demo: -admin:", err)
		return 2
	}

	dir, err := os.MkdirTemp("", "godwit-demo-")
	if err != nil {
		fmt.Fprintln(stderr, "demo:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	keyFile, err := demoGossipKey(dir)
	if err != nil {
		fmt.Fprintln(stderr, "demo:", err)
		return 1
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(stderr, "demo: cannot find this program to run machines with:", err)
		return 1
	}

	// The apps as demo.toml has them: each gets a machine in every region.
	apps, err := demoAppConfigs(keyFile)
	if err != nil {
		fmt.Fprintln(stderr, "demo:", err)
		return 1
	}

	// The edges, with their machines: each region's first edge owns the
	// region's machines.
	machines := &demoMachines{todos: &todoList{}}
	defer machines.close()
	level, access := "warn", false
	if *verbose {
		level, access = "info", true
	}
	edges := make([]*demoEdge, 0, n)
	for i := range n {
		region := demoRegions[i / *perRegion]
		conf := demoEdgeConfig{
			Name:    fmt.Sprintf("edge-%s-%d", region, i%*perRegion+1),
			Region:  region,
			HTTP:    https[i],
			Admin:   admins[i],
			Level:   level,
			Access:  access,
			KeyFile: keyFile,
		}
		if i%*perRegion == 0 {
			for _, app := range apps {
				m := demoMachineConfig{ID: app.Name + "-" + region, App: app.Name, Region: region, Primary: app.PrimaryRegion}
				if app.Name == "hello" && region == demoSleeper {
					m.Command = []string{exe, "demo-machine"}
					m.Addr, err = demoFreeAddr()
				} else {
					m.Addr, err = machines.start(m)
				}
				if err != nil {
					fmt.Fprintf(stderr, "demo: machine %s: %v\n", m.ID, err)
					return 1
				}
				conf.Machines = append(conf.Machines, m)
			}
		}
		edges = append(edges, &demoEdge{conf: conf})
	}

	// The first edge starts alone; the others join its gossip address
	// (memberlist then tells everyone about everyone). alive ends with
	// ctx or as soon as an edge stops on its own (it failed).
	alive, abort := context.WithCancel(ctx)
	defer abort()
	for i, e := range edges {
		if i > 0 {
			e.conf.Join = []string{edges[0].srv.GossipAddr()}
		}
		if err := e.start(ctx, abort, stderr); err != nil {
			return stopDemo(ctx, edges, stderr, err)
		}
		if i == 0 {
			if err := demoWaitFor(alive, demoReadyWithin, func() bool { return e.srv.GossipAddr() != "" }); err != nil {
				return stopDemo(ctx, edges, stderr, fmt.Errorf("%s did not start gossip: %w", e.conf.Name, err))
			}
		}
	}
	if err := demoWaitFor(alive, demoReadyWithin-time.Since(began), func() bool { return fleetKnowsAll(edges) }); err != nil {
		return stopDemo(ctx, edges, stderr, fmt.Errorf("the edges did not learn each other's machines: %w", err))
	}
	printDemo(stdout, edges, time.Since(began))
	<-alive.Done()
	return stopDemo(ctx, edges, stderr, nil)
}

// stopDemo stops the edges that run, the last started first, each after
// the one before has drained: an edge leaving gossip waits until its
// leave has reached a peer, which takes its full timeout if every peer
// is leaving at once. The machines in the demo's process stop after the
// edges (deferred by cmdDemo). err is why the demo stops before ctx
// ended; nil when it did. It returns the exit code.
func stopDemo(ctx context.Context, edges []*demoEdge, stderr io.Writer, err error) int {
	var failed []error // of edges
	for _, e := range slices.Backward(edges) {
		if e.srv == nil {
			continue
		}
		e.stop()
		if rerr := <-e.done; rerr != nil {
			failed = append(failed, fmt.Errorf("%s: %w", e.conf.Name, rerr))
		}
	}
	if len(failed) == 0 && (err == nil || ctx.Err() != nil && errors.Is(err, context.Canceled)) {
		// Ctrl-C, possibly while starting.
		fmt.Fprintln(stderr, "godwit demo: every edge drained and its machines stopped")
		return 0
	}
	fmt.Fprintln(stderr, "demo:", errors.Join(append([]error{err}, failed...)...))
	return 1
}

// demoAppConfigs are the apps of demo.toml, from a config rendered for an
// edge that owns no machine.
func demoAppConfigs(keyFile string) ([]config.App, error) {
	cfg, err := demoEdgeConfig{Name: "edge", Region: demoRegions[0], HTTP: "127.0.0.1:0", Admin: "127.0.0.1:0", Level: "warn", KeyFile: keyFile}.parse()
	if err != nil {
		return nil, err
	}
	return cfg.Apps, nil
}

// parse renders the edge's config from demo.toml and validates it.
func (c demoEdgeConfig) parse() (*config.Config, error) {
	var b strings.Builder
	if err := template.Must(template.New("demo.toml").Parse(demoConfig)).Execute(&b, c); err != nil {
		return nil, fmt.Errorf("render the config of %s: %w", c.Name, err)
	}
	cfg, err := config.Parse([]byte(b.String()), "demo.toml ("+c.Name+")")
	if err != nil {
		return nil, fmt.Errorf("the config of %s: %w", c.Name, err)
	}
	return cfg, nil
}

// start renders, validates and starts the edge: its listeners are bound
// when start returns, and it runs until stop. failed is called if it
// stops on its own. ctx is for values only: the edge does not stop with
// it, so that stopDemo can stop the edges one after another.
func (e *demoEdge) start(ctx context.Context, failed func(), logOut io.Writer) error {
	cfg, err := e.conf.parse()
	if err != nil {
		return err
	}
	e.cfg = cfg
	log := newLogger(cfg.Log, logOut).With("edge", cfg.Node.Name)
	log = slog.New(demoLogFilter{log.Handler()})
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	srv, err := proxy.New(cfg, log, reg)
	if err != nil {
		return fmt.Errorf("%s: %w", e.conf.Name, err)
	}
	runCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	if err := srv.Listen(); err != nil {
		// Run with a context that has ended releases what New set up (it
		// binds again, or serves and drains at once).
		stop()
		srv.Run(runCtx)
		if strings.Contains(err.Error(), "address already in use") {
			err = fmt.Errorf("%w (ports busy? try godwit demo -http 127.0.0.1:18080 -admin 127.0.0.1:19090)", err)
		}
		return fmt.Errorf("%s: %w", e.conf.Name, err)
	}
	e.srv, e.stop, e.done = srv, stop, make(chan error, 1)
	go func() {
		err := srv.Run(runCtx)
		if runCtx.Err() == nil {
			failed()
		}
		e.done <- err
	}()
	return nil
}

// demoLogFilter drops the edges' warning that backhaul.simulated_rtt is
// set: the demo says so itself, once.
type demoLogFilter struct{ slog.Handler }

func (f demoLogFilter) Handle(ctx context.Context, r slog.Record) error {
	if strings.HasPrefix(r.Message, "backhaul.simulated_rtt is set") {
		return nil
	}
	return f.Handler.Handle(ctx, r)
}

func (f demoLogFilter) WithAttrs(as []slog.Attr) slog.Handler {
	return demoLogFilter{f.Handler.WithAttrs(as)}
}

func (f demoLogFilter) WithGroup(name string) slog.Handler {
	return demoLogFilter{f.Handler.WithGroup(name)}
}

// fleetKnowsAll reports whether every edge routes to every machine of the
// demo: its own, and the others' through gossip, reachable.
func fleetKnowsAll(edges []*demoEdge) bool {
	for _, e := range edges {
		for _, o := range edges {
			for _, m := range o.conf.Machines {
				rm := e.srv.Table().Machine(m.ID)
				if rm == nil || !rm.Reachable() {
					return false
				}
			}
		}
	}
	return true
}

// demoWaitFor polls cond every 5 ms until it holds, d passes or ctx ends.
func demoWaitFor(ctx context.Context, d time.Duration, cond func() bool) error {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return fmt.Errorf("not within %v", d)
		case <-tick.C:
		}
	}
	return nil
}

// demoAddrs are n listener addresses: base, then the ports after it, or
// n times base when its port is 0 (each gets a free port).
func demoAddrs(base string, n int) ([]string, error) {
	host, p, err := net.SplitHostPort(base)
	if err != nil {
		return nil, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port+n-1 > 65535 {
		return nil, fmt.Errorf("%q: want host:port with a port from 0 to %d", base, 65535-n+1)
	}
	out := make([]string, n)
	for i := range out {
		if port == 0 {
			out[i] = base
		} else {
			out[i] = net.JoinHostPort(host, strconv.Itoa(port+i))
		}
	}
	return out, nil
}

// demoFreeAddr is a loopback address with a port free now, for a
// machine that listens only once a request wakes it.
func demoFreeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// demoGossipKey writes a new gossip key (as `godwit keygen` prints one)
// into dir and returns its path.
func demoGossipKey(dir string) (string, error) {
	key := make([]byte, 32)
	rand.Read(key)
	path := filepath.Join(dir, "gossip.key")
	if err := os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("gossip key: %w", err)
	}
	return path, nil
}

// printDemo prints the edges, the apps and the lines to try, each of them
// working as printed (TestDemoCurlLinesWork runs them).
func printDemo(w io.Writer, edges []*demoEdge, took time.Duration) {
	cfg := edges[0].cfg
	rtts := make([]string, 0, len(cfg.Backhaul.SimulatedRTT))
	for pair := range cfg.Backhaul.SimulatedRTT {
		rtts = append(rtts, pair)
	}
	slices.SortFunc(rtts, func(a, b string) int {
		return int(cfg.Backhaul.SimulatedRTT[a] - cfg.Backhaul.SimulatedRTT[b])
	})
	for i, pair := range rtts {
		rtts[i] = fmt.Sprintf("%s %v", pair, cfg.Backhaul.SimulatedRTT[pair])
	}
	// port of the first edge of a region, and its admin address.
	port := func(region string) (string, string) {
		for _, e := range edges {
			if e.conf.Region == region {
				_, p, _ := net.SplitHostPort(e.srv.Addr("http"))
				return p, e.srv.Addr("admin")
			}
		}
		return "", ""
	}
	var primary, reader string
	for _, a := range cfg.Apps {
		if a.Name == "todo" {
			primary = a.PrimaryRegion
		}
	}
	for _, r := range demoRegions {
		if r != primary && reader == "" {
			reader = r
		}
	}
	sleeper := demoSleeper

	fmt.Fprintf(w, "godwit demo: %d edges in %d regions, gossiping on loopback (ready in %v).\n", len(edges), len(demoRegions), took.Round(time.Millisecond))
	fmt.Fprintf(w, "Requests between regions cross the backhaul, delayed by real round trips: %s.\n\n", strings.Join(rtts, ", "))
	for _, e := range edges {
		fmt.Fprintf(w, "  %-11s %s  http://%-16s  metrics http://%s/metrics\n", e.conf.Name, e.conf.Region, e.srv.Addr("http"), e.srv.Addr("admin"))
	}
	machines := func(app string) string {
		var ids []string
		for _, e := range edges {
			for _, m := range e.conf.Machines {
				if m.App == app {
					ids = append(ids, m.ID)
				}
			}
		}
		return strings.Join(ids, ", ")
	}
	fmt.Fprintf(w, "\n  hello.localhost  %s; hello-%s sleeps until a request needs it\n", machines("hello"), sleeper)
	fmt.Fprintf(w, "  todo.localhost   %s; reads go to the nearest, writes to the primary, %s\n", machines("todo"), primary)

	rp, radmin := port(reader)
	sp, sadmin := port(sleeper)
	_, padmin := port(primary)
	fmt.Fprintf(w, `
Try:
  # a read at the %[1]s edge: the machine in %[1]s answers
  curl -s http://todo.localhost:%[2]s/
  # a write at the %[1]s edge: todo-%[1]s answers fly-replay: region=%[3]s, the edge replays it to todo-%[3]s
  curl -si -X POST -d 'buy milk' http://todo.localhost:%[2]s/
  # wakes hello-%[4]s: held to %[4]s, the request waits for its process to start (Godwit-Woke)
  curl -si -H 'fly-force-region: %[4]s' http://hello.localhost:%[5]s/
  # puts it back to sleep (then the line above wakes it again)
  curl -s -X POST http://%[6]s/v1/apps/hello/machines/hello-%[4]s/stop
  # every machine of the fleet, as one edge sees it; the replays counted at %[1]s
  curl -s http://%[7]s/v1/machines
  curl -s http://%[8]s/metrics | grep '^godwit_replays_total'

Load (writes at %[1]s, each replayed to %[3]s):
  godwit load --rate 500 --duration 10s -X POST -H 'Host: todo.localhost' http://127.0.0.1:%[2]s/

Ctrl-C stops it: every edge drains, its machines stop. -v logs every request.
`, reader, rp, primary, sleeper, sp, sadmin, padmin, radmin)
}
