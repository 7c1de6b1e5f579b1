// Command godwit is the edge reverse proxy: `godwit run` serves one edge
// node, `godwit demo` a self-contained local setup, `godwit config check`
// validates a config file.
package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/godwit/godwit/config"
	"github.com/godwit/godwit/proxy"
)

const usage = `godwit — a global edge reverse proxy

Usage:
  godwit run --config FILE      run one edge node until SIGINT/SIGTERM (graceful drain);
                                SIGHUP reloads the config file
  godwit demo [flags]           run a local fleet (3 regions) with sample apps and machines
  godwit status [--admin URL]   show the fleet's members and machines as one edge sees them
  godwit load [flags] URL       send load; report replayed and direct latency, replay overhead,
                                errors; --fail-on thresholds (see 'godwit load --help')
  godwit config check FILE      validate a config file; print every error with its line
  godwit keygen                 print a new gossip key (base64 of 32 random bytes) for gossip.secret_key_file
  godwit version                print the version

Run 'godwit COMMAND --help' for a command's flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		// The first signal starts the drain; a second one means "now".
		<-ctx.Done()
		stop()
		second := make(chan os.Signal, 1)
		signal.Notify(second, os.Interrupt, syscall.SIGTERM)
		<-second
		fmt.Fprintln(os.Stderr, "godwit: second signal: exiting without waiting for the drain")
		os.Exit(1)
	}()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// run is main with its dependencies passed in: ctx ends on SIGINT/SIGTERM.
// It returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "run":
		return cmdRun(ctx, args[1:], stdout, stderr)
	case "demo":
		return cmdDemo(ctx, args[1:], stdout, stderr)
	case "demo-machine": // hidden: a machine of `godwit demo`, run by its exec driver
		return cmdDemoMachine(ctx, args[1:], stdout, stderr)
	case "status":
		return cmdStatus(ctx, args[1:], stdout, stderr)
	case "load":
		return cmdLoad(ctx, args[1:], stdout, stderr)
	case "config":
		if len(args) < 2 || args[1] != "check" {
			fmt.Fprintln(stderr, "usage: godwit config check FILE")
			return 2
		}
		return cmdConfigCheck(args[2:], stdout, stderr)
	case "keygen":
		key := make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			fmt.Fprintln(stderr, "godwit keygen:", err)
			return 1
		}
		fmt.Fprintln(stdout, base64.StdEncoding.EncodeToString(key))
		return 0
	case "version", "--version", "-v":
		fmt.Fprintln(stdout, "godwit", version())
		return 0
	case "help", "--help", "-h":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "godwit: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}

func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

func cmdConfigCheck(args []string, stdout, stderr io.Writer) int {
	if len(args) != 1 {
		fmt.Fprintln(stderr, "usage: godwit config check FILE")
		return 2
	}
	cfg, err := config.Load(args[0])
	if err != nil {
		fmt.Fprintln(stderr, err)
		var errs config.Errors
		if errors.As(err, &errs) {
			fmt.Fprintf(stderr, "%d error(s) in %s\n", len(errs), args[0])
		}
		return 1
	}
	fmt.Fprintf(stdout, "%s: ok (%d apps, %d machines)\n", args[0], len(cfg.Apps), len(cfg.Machines))
	return 0
}

func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "godwit.toml", "config file (TOML)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := config.Load(*path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	return serve(ctx, cfg, stderr, func(srv *proxy.Server) {
		srv.SetConfigSource(func() (*config.Config, error) { return config.Load(*path) })
		go reloadOnSIGHUP(ctx, srv)
	})
}

// reloadOnSIGHUP reloads the node's config on every SIGHUP until ctx ends.
// A refused config is logged by the node, which keeps the old one.
func reloadOnSIGHUP(ctx context.Context, srv *proxy.Server) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			srv.ReloadSource() // logs its outcome
		}
	}
}

// serve runs a node until ctx ends, then drains it. ready, if set, is
// called once the listeners are bound.
func serve(ctx context.Context, cfg *config.Config, logOut io.Writer, ready func(*proxy.Server)) int {
	log := newLogger(cfg.Log, logOut)
	if os.Getenv("GOGC") == "" {
		// A proxy's live heap is small and mostly per-request garbage:
		// collecting at 4x the live heap instead of 2x halves GC work for a
		// few MiB more memory. GOGC in the environment overrides it.
		debug.SetGCPercent(400)
	}
	setMemoryLimit(log)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	srv, err := proxy.New(cfg, log, reg)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	if err := srv.Listen(); err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	if ready != nil {
		ready(srv)
	}
	if err := srv.Run(ctx); err != nil {
		log.Error("node failed", "err", err)
		return 1
	}
	return 0
}

func newLogger(c config.Log, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: c.Level}
	if c.Format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}
