package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/godwit/godwit/bench/internal/child"
	"github.com/godwit/godwit/bench/internal/summary"
)

// loadResult is one load run: wrk's figures, or the Go loop's.
type loadResult struct {
	RPS      float64 `json:"rps"`
	Requests int64   `json:"requests"`
	P50      float64 `json:"p50_ms"`
	P99      float64 `json:"p99_ms"`
	Errors   int64   `json:"errors"` // socket errors + non-2xx
}

// runLoad sends GET url with Host host over conns keep-alive connections
// for d, pinned to cfg.loadCPU: wrk, or the bench's own Go loop.
func runLoad(ctx context.Context, cfg *config, url, host string, conns int, d time.Duration) (loadResult, string, error) {
	if cfg.load == "wrk" {
		return runWrk(ctx, cfg, url, host, conns, d)
	}
	return runGoLoad(ctx, cfg, url, host, conns, d)
}

func runWrk(ctx context.Context, cfg *config, url, host string, conns int, d time.Duration) (loadResult, string, error) {
	secs := max(int(d.Round(time.Second)/time.Second), 1)
	// --timeout 10s: a stalled request shows in the latency instead of
	// vanishing as an error.
	cmd := child.Command(cfg.loadCPU, "wrk", "-t1", "-c"+strconv.Itoa(conns), "-d"+strconv.Itoa(secs)+"s", "--latency", "--timeout", "10s", "-H", "Host: "+host, url)
	out, err := runChild(ctx, cmd, d+30*time.Second)
	if err != nil {
		return loadResult{}, out, fmt.Errorf("wrk: %w: %s", err, out)
	}
	r, err := parseWrk(out)
	return r, out, err
}

var (
	reRPS   = regexp.MustCompile(`(?m)^Requests/sec:\s+([0-9.]+)`)
	reReqs  = regexp.MustCompile(`(?m)^\s*([0-9]+) requests in `)
	reP50   = regexp.MustCompile(`(?m)^\s+50%\s+([0-9.]+)(us|ms|s|m)\s*$`)
	reP99   = regexp.MustCompile(`(?m)^\s+99%\s+([0-9.]+)(us|ms|s|m)\s*$`)
	reSock  = regexp.MustCompile(`Socket errors: connect ([0-9]+), read ([0-9]+), write ([0-9]+), timeout ([0-9]+)`)
	reNon2x = regexp.MustCompile(`Non-2xx or 3xx responses: ([0-9]+)`)
)

func parseWrk(out string) (loadResult, error) {
	var r loadResult
	m := reRPS.FindStringSubmatch(out)
	n := reReqs.FindStringSubmatch(out)
	p50 := reP50.FindStringSubmatch(out)
	p99 := reP99.FindStringSubmatch(out)
	if m == nil || n == nil || p50 == nil || p99 == nil {
		return r, fmt.Errorf("cannot parse wrk output:\n%s", out)
	}
	r.RPS, _ = strconv.ParseFloat(m[1], 64)
	r.Requests, _ = strconv.ParseInt(n[1], 10, 64)
	r.P50 = toMs(p50[1], p50[2])
	r.P99 = toMs(p99[1], p99[2])
	if s := reSock.FindStringSubmatch(out); s != nil {
		for _, v := range s[1:] {
			x, _ := strconv.ParseInt(v, 10, 64)
			r.Errors += x
		}
	}
	if s := reNon2x.FindStringSubmatch(out); s != nil {
		x, _ := strconv.ParseInt(s[1], 10, 64)
		r.Errors += x
	}
	if r.Requests == 0 {
		return r, fmt.Errorf("wrk completed no request:\n%s", out)
	}
	return r, nil
}

func toMs(v, unit string) float64 {
	f, _ := strconv.ParseFloat(v, 64)
	switch unit {
	case "us":
		return f / 1000
	case "s":
		return f * 1000
	case "m":
		return f * 60000
	}
	return f
}

// runChild runs cmd (tracked, so that an exit kills it) with its combined
// output, ending it at ctx's end or after timeout.
func runChild(ctx context.Context, cmd *exec.Cmd, timeout time.Duration) (string, error) {
	var buf strings.Builder
	var mu sync.Mutex
	w := writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return buf.Write(p) })
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		return "", err
	}
	child.Track(cmd)
	defer child.Untrack(cmd)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		cmd.Process.Kill()
		<-done
		err = ctx.Err()
	case <-time.After(timeout):
		cmd.Process.Kill()
		<-done
		err = fmt.Errorf("did not finish within %v", timeout)
	}
	mu.Lock()
	defer mu.Unlock()
	return buf.String(), err
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// runGoLoad runs the bench binary itself in its load mode (-internal-load),
// pinned like wrk would be, and reads its JSON result.
func runGoLoad(ctx context.Context, cfg *config, url, host string, conns int, d time.Duration) (loadResult, string, error) {
	self, err := os.Executable()
	if err != nil {
		return loadResult{}, "", err
	}
	cmd := child.Command(cfg.loadCPU, self, "-internal-load", "-url", url, "-host", host, "-c", strconv.Itoa(conns), "-d", d.String())
	out, err := runChild(ctx, cmd, d+30*time.Second)
	if err != nil {
		return loadResult{}, out, fmt.Errorf("go load: %w: %s", err, out)
	}
	var r loadResult
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if json.Unmarshal(sc.Bytes(), &r) == nil && r.Requests > 0 {
			return r, out, nil
		}
	}
	return r, out, fmt.Errorf("go load: no result in its output:\n%s", out)
}

// internalLoad is the load mode: conns goroutines, each with its own
// keep-alive connection, send GET url for d; the result goes to stdout as
// JSON. Latencies are kept whole (a few million float32 at most).
func internalLoad(args []string) {
	fs := flag.NewFlagSet("internal-load", flag.ExitOnError)
	url := fs.String("url", "", "")
	host := fs.String("host", "", "")
	conns := fs.Int("c", 1, "")
	d := fs.Duration("d", time.Second, "")
	fs.Parse(args)
	tr := &http.Transport{MaxIdleConnsPerHost: *conns, MaxConnsPerHost: *conns, DisableCompression: true}
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		lat    []float64
		errs   int64
		start  = time.Now()
		finish = start.Add(*d)
	)
	for range *conns {
		wg.Go(func() {
			var mine []float64
			var bad int64
			req, _ := http.NewRequest("GET", *url, nil)
			req.Host = *host
			for time.Now().Before(finish) {
				t := time.Now()
				resp, err := client.Do(req)
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode >= 400 {
						bad++
					}
				} else {
					bad++
				}
				mine = append(mine, float64(time.Since(t))/float64(time.Millisecond))
			}
			mu.Lock()
			lat = append(lat, mine...)
			errs += bad
			mu.Unlock()
		})
	}
	wg.Wait()
	el := time.Since(start).Seconds()
	r := loadResult{RPS: float64(len(lat)) / el, Requests: int64(len(lat)), P50: summary.Quantile(lat, 0.5), P99: summary.Quantile(lat, 0.99), Errors: errs}
	json.NewEncoder(os.Stdout).Encode(r)
}
