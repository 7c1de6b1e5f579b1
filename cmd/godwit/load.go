package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
	"github.com/tsenart/vegeta/v12/lib/plot"

	"github.com/godwit/godwit/loadgen"
)

const loadUsage = `Usage: godwit load [flags] URL
       godwit load [flags] --targets FILE

Sends requests at a steady rate (or with a fixed number in flight) with
vegeta's attacker, and reports latency separately for the responses godwit
replayed (a machine answered fly-replay and the edge sent the request on)
and for the direct ones, and what replays cost.

How a response is classed, from the Server-Timing header godwit adds:
  replayed      its replay phase is longer than zero (replay;dur=20.412)
  direct        its replay phase is zero (replay;dur=0.000)
  unclassified  no replay phase: a proxy error (Godwit-Error), or not godwit

Requests:
  URL                   the URL to send to; flags may come before or after it
  -X METHOD             method (default GET, or POST with a body)
  -H 'Name: value'      request header, repeatable; -H 'Host: web.example.com'
                        sets the Host (and the TLS server name stays the URL's)
  --body STRING         request body
  --body-file FILE      request body from a file
  --targets FILE        requests in vegeta's http format instead of URL and -X,
                        sent in turn ('-' reads stdin); -H and the body apply
                        to every one:
                            POST http://127.0.0.1:8080/write
                            Host: web.example.com
                            @body.json

                            GET http://127.0.0.1:8080/
                            Host: web.example.com

Pace:
  --rate N[/PERIOD]     requests per second (100, 100/s), or per another period
                        (5/100ms, 600/m); 0: as fast as --concurrency allows
                        (default 50/s, or 0 when only --concurrency is given)
  --concurrency N       at most N requests in flight (alias --max-workers); at
                        the cap the rate falls behind (default: no cap)
  --duration D          how long to send (default 10s); 0: until Ctrl-C
  --timeout D           one request, to the end of its body (default 30s)
  --connect-timeout D   one new connection: TCP and TLS, or QUIC (default 10s)

Protocol:
  --http 1.1|2|3        HTTP/1.1; HTTP/2 (TLS with ALPN h2 for https://, h2c
                        with prior knowledge for http://); HTTP/3 over QUIC
                        (https:// only). Only that protocol: a server without
                        it is an error, never a quiet fallback. (default 1.1)
  --insecure            accept any TLS certificate (self-signed ones)
                        Redirects are not followed: a 3xx is measured as is.

Output:
  a summary on stdout: latency p50 p90 p99 p99.9 max per group (replayed,
  direct, all); the replay overhead (replayed minus direct at each of them)
  and the replay phase's own duration from Server-Timing; status codes;
  proxy error codes (Godwit-Error); transport errors with their messages.
  Latency runs from the request's start to the end of the response body;
  percentiles are exact (nearest rank over every response).
  --output FILE         the report as JSON ('-': stdout, the summary then goes
                        to stderr); fields in the README, "godwit load"
  --plot FILE           vegeta's HTML latency plot, one series each for
                        replayed, direct, unclassified and ERROR
  --progress MODE       auto (default): a live line on stderr, rewritten every
                        250ms when it is a terminal, else a line every 5s;
                        live, plain or off

Thresholds (exit 1 when one fails, listing which):
  --fail-on EXPR        repeatable; ` + "METRIC OP VALUE, OP one of < <= > >=" + `
      p50 p90 p99 p99.9 max mean min   latency of all responses (VALUE: 50ms, 1.5s)
      replayed_STAT direct_STAT        latency of one group, STAT as above
      replay_STAT                      the replay phase (Server-Timing)
      overhead_STAT                    replayed minus direct, at that statistic
      errors transport_errors proxy_errors
                                       a count (10) or a share of requests (1%)
      replayed direct unclassified     a count, or a share of responses
      requests responses               a count
      rps                              requests per second achieved
    A threshold that cannot be measured (replay_p99 without replayed
    responses) fails. Errors are transport errors plus 5xx and Godwit-Error
    responses.

Exit status: 0 done; 1 a threshold failed, no request got a response, or
writing the report or the plot failed; 2 a usage error (flags, URL, an
unreadable body or targets file, an --output or --plot file that cannot be
created: checked before any request is sent).

Examples:
  godwit load --rate 200/s --duration 30s -H 'Host: web.example.com' \
      -X POST --body '{"k":1}' http://127.0.0.1:8080/write
  godwit load --http 3 --insecure --concurrency 20 --duration 1m \
      -H 'Host: web.example.com' https://127.0.0.1:8443/
  godwit load --targets mix.txt --rate 100 --output report.json --plot plot.html \
      --fail-on 'p99<50ms' --fail-on 'errors<1%' --fail-on 'replay_p99<5ms'
`

// loadProgressEvery is how often a live progress line is rewritten, and
// loadPlainEvery how often a plain one is written.
const (
	loadProgressEvery = 250 * time.Millisecond
	loadPlainEvery    = 5 * time.Second
)

// repeated is a flag that may be given many times.
type repeated []string

func (r *repeated) String() string     { return strings.Join(*r, ", ") }
func (r *repeated) Set(v string) error { *r = append(*r, v); return nil }

// loadFlags are godwit load's flags, parsed.
type loadFlags struct {
	method, body, bodyFile, targetsFile string
	headers, failOn                     repeated
	rate, proto, output, plotFile, mode string
	concurrency                         uint64
	duration, timeout, connectTimeout   time.Duration
	insecure                            bool
	urls                                []string
	set                                 map[string]bool // flags given
}

// loadConfig is what godwit load runs: its flags validated.
type loadConfig struct {
	opts       loadgen.Options
	client     loadgen.ClientOptions
	settings   loadgen.Settings
	thresholds []loadgen.Threshold
	output     string
	plotFile   string
	progress   string // "live", "plain" or "off"
}

func cmdLoad(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f, err := parseLoadFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, loadUsage)
		return 0
	}
	if err != nil {
		if err != errLoadUsage {
			fmt.Fprintf(stderr, "godwit load: %v\n", err)
		}
		fmt.Fprintln(stderr, "Run 'godwit load --help' for usage.")
		return 2
	}
	cfg, err := f.config(isTerminal(stderr))
	if err != nil {
		fmt.Fprintf(stderr, "godwit load: %v\nRun 'godwit load --help' for usage.\n", err)
		return 2
	}
	return runLoad(ctx, cfg, stdout, stderr)
}

// errLoadUsage: the flag package has already said what was wrong.
var errLoadUsage = errors.New("usage")

// parseLoadFlags parses args, flags and URL in any order.
func parseLoadFlags(args []string, stderr io.Writer) (*loadFlags, error) {
	f := &loadFlags{set: map[string]bool{}}
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {} // errors name the flag; --help prints loadUsage
	fs.StringVar(&f.method, "X", "", "")
	fs.Var(&f.headers, "H", "")
	fs.StringVar(&f.body, "body", "", "")
	fs.StringVar(&f.bodyFile, "body-file", "", "")
	fs.StringVar(&f.targetsFile, "targets", "", "")
	fs.StringVar(&f.rate, "rate", "50/s", "")
	fs.Uint64Var(&f.concurrency, "concurrency", 0, "")
	fs.Uint64Var(&f.concurrency, "max-workers", 0, "")
	fs.DurationVar(&f.duration, "duration", 10*time.Second, "")
	fs.DurationVar(&f.timeout, "timeout", 30*time.Second, "")
	fs.DurationVar(&f.connectTimeout, "connect-timeout", 10*time.Second, "")
	fs.StringVar(&f.proto, "http", loadgen.HTTP1, "")
	fs.BoolVar(&f.insecure, "insecure", false, "")
	fs.StringVar(&f.output, "output", "", "")
	fs.StringVar(&f.plotFile, "plot", "", "")
	fs.StringVar(&f.mode, "progress", "auto", "")
	fs.Var(&f.failOn, "fail-on", "")
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, errLoadUsage
		}
		if fs.NArg() == 0 {
			break
		}
		f.urls = append(f.urls, fs.Arg(0))
		args = fs.Args()[1:]
	}
	fs.Visit(func(fl *flag.Flag) { f.set[fl.Name] = true })
	return f, nil
}

// config validates the flags. terminal says whether stderr is one.
func (f *loadFlags) config(terminal bool) (*loadConfig, error) {
	cfg := &loadConfig{output: f.output, plotFile: f.plotFile}
	switch f.mode {
	case "auto":
		cfg.progress = "plain"
		if terminal {
			cfg.progress = "live"
		}
	case "live", "plain", "off":
		cfg.progress = f.mode
	default:
		return nil, fmt.Errorf("--progress %q: want auto, live, plain or off", f.mode)
	}
	switch f.proto {
	case loadgen.HTTP1, "1", "h1", "http/1.1":
		f.proto = loadgen.HTTP1
	case loadgen.HTTP2, "h2", "http/2":
		f.proto = loadgen.HTTP2
	case loadgen.HTTP3, "h3", "http/3":
		f.proto = loadgen.HTTP3
	default:
		return nil, fmt.Errorf("--http %q: want 1.1, 2 or 3", f.proto)
	}

	// Pace.
	rateText := f.rate
	if f.set["concurrency"] || f.set["max-workers"] {
		if f.concurrency == 0 {
			return nil, errors.New("--concurrency 0: want at least 1 request in flight (leave it out for no cap)")
		}
		if !f.set["rate"] {
			rateText = "0" // only a concurrency: as fast as it allows
		}
	}
	rate, err := loadgen.ParseRate(rateText)
	if err != nil {
		return nil, fmt.Errorf("--rate: %w", err)
	}
	if rate.Freq == 0 && f.concurrency == 0 {
		return nil, errors.New("--rate 0 (as fast as possible) needs --concurrency N, the requests in flight")
	}
	for name, d := range map[string]time.Duration{"duration": f.duration, "timeout": f.timeout, "connect-timeout": f.connectTimeout} {
		if d < 0 {
			return nil, fmt.Errorf("--%s %v: want a duration of 0 or more", name, d)
		}
	}

	// Requests.
	header := http.Header{}
	for _, h := range f.headers {
		name, value, ok := strings.Cut(h, ":")
		name = strings.TrimSpace(name)
		if !ok || name == "" || strings.ContainsAny(name, " \t") {
			return nil, fmt.Errorf("-H %q: want 'Name: value'", h)
		}
		header.Add(name, strings.TrimSpace(value))
	}
	var body []byte
	switch {
	case f.set["body"] && f.bodyFile != "":
		return nil, errors.New("--body and --body-file: give one of them")
	case f.set["body"]:
		body = []byte(f.body)
	case f.bodyFile != "":
		if body, err = os.ReadFile(f.bodyFile); err != nil {
			return nil, fmt.Errorf("--body-file: %w", err)
		}
	}
	hasBody := f.set["body"] || f.bodyFile != ""
	switch {
	case f.targetsFile != "" && len(f.urls) > 0:
		return nil, fmt.Errorf("--targets and a URL (%s): give one of them", f.urls[0])
	case f.targetsFile != "" && f.method != "":
		return nil, errors.New("--targets and -X: the targets file names each request's method")
	case f.targetsFile != "":
		var in io.Reader = os.Stdin
		if f.targetsFile != "-" {
			file, err := os.Open(f.targetsFile)
			if err != nil {
				return nil, fmt.Errorf("--targets: %w", err)
			}
			defer file.Close()
			in = file
		}
		ts, err := loadgen.ReadTargets(in, body, header)
		if err != nil {
			return nil, fmt.Errorf("--targets %s: %w", f.targetsFile, err)
		}
		cfg.opts.Targets = ts
		cfg.settings.Targets = fmt.Sprintf("file %s (%d targets)", f.targetsFile, len(ts))
	case len(f.urls) == 0:
		return nil, errors.New("no URL: give one, or --targets FILE")
	case len(f.urls) > 1:
		return nil, fmt.Errorf("one URL, got %d: %s (for many requests, use --targets FILE)", len(f.urls), strings.Join(f.urls, " "))
	default:
		method := strings.ToUpper(f.method)
		if method == "" {
			method = http.MethodGet
			if hasBody {
				method = http.MethodPost
			}
		}
		cfg.opts.Targets = []vegeta.Target{{Method: method, URL: f.urls[0], Header: header, Body: body}}
		cfg.settings.Targets = method + " " + f.urls[0]
	}
	for _, t := range cfg.opts.Targets {
		if err := loadgen.CheckURL(f.proto, t.URL); err != nil {
			return nil, err
		}
	}

	for _, expr := range f.failOn {
		t, err := loadgen.ParseThreshold(expr)
		if err != nil {
			return nil, fmt.Errorf("--fail-on: %w", err)
		}
		cfg.thresholds = append(cfg.thresholds, t)
	}

	cfg.opts.Rate = rate
	cfg.opts.Duration = f.duration
	cfg.opts.Workers = f.concurrency
	cfg.client = loadgen.ClientOptions{Protocol: f.proto, Insecure: f.insecure, Timeout: f.timeout, ConnectTimeout: f.connectTimeout}
	cfg.settings.Protocol = f.proto
	cfg.settings.Rate = loadgen.PerSecond(rate)
	cfg.settings.Concurrency = f.concurrency
	cfg.settings.Duration = loadgen.Seconds(f.duration)
	return cfg, nil
}

// runLoad runs the attack, then writes the report, the plot and the
// summary, and returns the exit code.
func runLoad(ctx context.Context, cfg *loadConfig, stdout, stderr io.Writer) int {
	client, err := loadgen.NewClient(cfg.client)
	if err != nil {
		fmt.Fprintf(stderr, "godwit load: %v\n", err)
		return 2
	}
	defer client.Close()
	cfg.opts.Client = client.HTTP

	// The files are created before the run, so that a path that cannot
	// be written fails at once rather than after it.
	var outFile, plotFile *os.File
	for _, o := range []struct {
		flag, path string
		f          **os.File
	}{{"--output", cfg.output, &outFile}, {"--plot", cfg.plotFile, &plotFile}} {
		if o.path == "" || o.path == "-" {
			continue
		}
		f, err := os.Create(o.path)
		if err != nil {
			fmt.Fprintf(stderr, "godwit load: %s: %v\n", o.flag, err)
			return 2
		}
		defer f.Close()
		*o.f = f
	}

	rec := loadgen.NewRecorder()
	var pl *plot.Plot
	var plotErr error // the first error adding to pl
	if plotFile != nil {
		pl = loadgen.NewPlot("godwit load: " + cfg.settings.Targets)
	}

	start := time.Now()
	stopProgress := startLoadProgress(cfg, rec, client, start, stderr)
	err = loadgen.Run(ctx, cfg.opts, func(res *vegeta.Result) {
		rec.Add(res)
		if pl != nil && plotErr == nil {
			plotErr = pl.Add(res)
		}
	})
	stopProgress()
	if err != nil {
		fmt.Fprintf(stderr, "godwit load: %v\n", err)
		return 2
	}

	rep := rec.Report(cfg.settings)
	rep.Protocols = client.Protocols()
	passed := loadgen.CheckAll(rep, cfg.thresholds)
	code := 0
	if !passed {
		code = 1
	}

	summary := stdout
	if cfg.output == "-" {
		summary = stderr
		if err := rep.WriteJSON(stdout); err != nil {
			fmt.Fprintf(stderr, "godwit load: writing the report: %v\n", err)
			code = 1
		}
	} else if outFile != nil {
		if err := closeAfter(outFile, rep.WriteJSON(outFile)); err != nil {
			fmt.Fprintf(stderr, "godwit load: --output: %v\n", err)
			code = 1
		}
	}
	if pl != nil {
		if plotErr == nil {
			pl.Close()
			_, err := pl.WriteTo(plotFile)
			plotErr = closeAfter(plotFile, err)
		}
		if plotErr != nil {
			fmt.Fprintf(stderr, "godwit load: --plot: %v\n", plotErr)
			code = 1
		}
	}
	rep.WriteText(summary)
	if rep.Requests > 0 && rep.Responses == 0 {
		fmt.Fprintf(stderr, "godwit load: no request got a response\n")
		code = 1
	}
	if failed := rep.Failed(); len(failed) > 0 {
		exprs := make([]string, len(failed))
		for i, t := range failed {
			exprs[i] = fmt.Sprintf("%s (%s)", t.Expr, t.Value)
		}
		fmt.Fprintf(stderr, "godwit load: %d of %d thresholds failed: %s\n", len(failed), len(rep.Thresholds), strings.Join(exprs, ", "))
	}
	return code
}

// closeAfter closes f, written with err, and returns the first error.
func closeAfter(f *os.File, err error) error {
	if cerr := f.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("%s: %w", f.Name(), err)
	}
	return nil
}

// startLoadProgress writes progress lines to w as cfg.progress says
// until the returned function is called; that function returns once the
// writer has stopped, after clearing a live line.
func startLoadProgress(cfg *loadConfig, rec *loadgen.Recorder, client *loadgen.Client, start time.Time, w io.Writer) (stop func()) {
	if cfg.progress == "off" {
		return func() {}
	}
	fmt.Fprintf(w, "godwit load: %s\n", cfg.settings.Describe())
	live := cfg.progress == "live"
	every := loadPlainEvery
	if live {
		every = loadProgressEvery
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				if live {
					fmt.Fprint(w, "\r\x1b[K")
				}
				return
			case now := <-t.C:
				line := progressLine(now.Sub(start), client.Sent(), rec.Snapshot())
				if live {
					fmt.Fprint(w, "\r\x1b[K"+line)
				} else {
					fmt.Fprintln(w, line)
				}
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() { close(done) })
		wg.Wait()
	}
}

// progressLine is one progress report: elapsed, requests sent and their
// rate, in flight, p50 and p99 so far (estimates), replayed responses,
// errors. It stays near 80 columns for common values, so that a live line
// does not wrap.
func progressLine(elapsed time.Duration, sent uint64, p loadgen.Progress) string {
	rate := 0.0
	if s := elapsed.Seconds(); s > 0 {
		rate = float64(sent) / s
	}
	inflight := max(int64(sent)-int64(p.Requests), 0)
	errs := strconv.Itoa(p.Errors)
	if p.Errors > 0 {
		errs += fmt.Sprintf(" (%.1f%%)", 100*float64(p.Errors)/float64(p.Requests))
	}
	return fmt.Sprintf("%.1fs  sent %d  %.0f/s  in flight %d  p50 %s  p99 %s  replayed %d  errors %s",
		elapsed.Seconds(), sent, rate, inflight, shortMs(p.P50), shortMs(p.P99), p.Replayed, errs)
}

// shortMs formats d as milliseconds with two decimals, or "-" for 0.
func shortMs(d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return strconv.FormatFloat(float64(d)/1e6, 'f', 2, 64) + "ms"
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
