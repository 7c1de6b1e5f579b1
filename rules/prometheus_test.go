package rules

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestPrometheusScrape runs a real Prometheus server (Debian's
// prometheus package) on loopback, with the rules loaded, scraping both
// edges of the test fleet every second while it serves traffic, and
// reads the series back through the HTTP API: the request counter, the
// gossip members gauge, and a recording rule's output; every rule must
// evaluate without error.
func TestPrometheusScrape(t *testing.T) {
	bin := needPrometheus(t)
	f := startFleet(t)
	f.exercise(t)

	// Steady traffic, so that rates are not zero.
	steadyTraffic(t, 50*time.Millisecond, func() { f.do(t, f.iad, http.MethodGet, "/", nil) })

	prom := startPrometheus(t, bin, f.iad.admin, f.nrt.admin)
	prom.waitTargetsUp(t, 30*time.Second)

	// The request counter, by the labels of the contract.
	prom.poll(t, 30*time.Second, "godwit_requests_total of app web", func() error {
		res, err := prom.query(`godwit_requests_total{app="web", instance="` + f.iad.admin + `"}`)
		if err != nil {
			return err
		}
		codes := map[string]float64{}
		for _, s := range res {
			codes[s.Metric["code"]] += s.value()
			if s.Metric["job"] != "godwit" || s.Metric["region"] == "" && s.Metric["code"] == "2xx" {
				return fmt.Errorf("series %v: want job godwit and a machine region", s.Metric)
			}
		}
		if codes["2xx"] < 8 || codes["5xx"] < 3 {
			return fmt.Errorf("requests by code class %v; want at least 8 2xx (5 GET, 3 replayed PUT) and 3 5xx (2 /fail, a PL03)", codes)
		}
		t.Logf("godwit_requests_total at edge-iad by code class: %v", codes)
		return nil
	})

	// Each edge sees both alive.
	prom.poll(t, 30*time.Second, "godwit_gossip_members", func() error {
		res, err := prom.query(`godwit_gossip_members{state="alive"}`)
		if err != nil {
			return err
		}
		if len(res) != 2 {
			return fmt.Errorf("%d series, want one per edge: %+v", len(res), res)
		}
		for _, s := range res {
			if s.value() != 2 {
				return fmt.Errorf("%s sees %v alive members, want 2", s.Metric["instance"], s.value())
			}
		}
		return nil
	})

	// A recording rule's output: web's request rate, from the steady
	// traffic (20 requests a second, but over a 5-minute window of which
	// only seconds have samples).
	prom.poll(t, 30*time.Second, "app:godwit_requests:rate5m of app web", func() error {
		res, err := prom.query(`app:godwit_requests:rate5m{app="web"}`)
		if err != nil {
			return err
		}
		if len(res) != 1 || res[0].value() <= 0 {
			return fmt.Errorf("got %+v, want one positive rate", res)
		}
		t.Logf("app:godwit_requests:rate5m{app=\"web\"} = %.2f/s", res[0].value())
		return nil
	})

	prom.waitRulesHealthy(t, 30*time.Second)
}

// needPrometheus returns the path of the prometheus binary, skipping
// the test when it is not installed or with -short.
func needPrometheus(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Skip("prometheus not installed (Debian: apt-get install prometheus); skipping the scrape by a real Prometheus")
	}
	if testing.Short() {
		t.Skip("runs a Prometheus server for several seconds")
	}
	return bin
}

// steadyTraffic calls send every period until the test ends, so that
// rates are not zero.
func steadyTraffic(t *testing.T, period time.Duration, send func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(period)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				send()
			}
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
}

// promServer is a running Prometheus server.
type promServer struct {
	base    string // http://127.0.0.1:port
	log     string // its log file
	targets []string
	client  *http.Client
	exited  chan struct{}
}

// startPrometheus runs Prometheus (bin) on a free loopback port with a
// temporary storage directory and the rules of rulesFile, scraping
// targets (host:port, path /metrics) every second as job godwit and
// evaluating the rules every second; the test's cleanup stops it
// (SIGTERM, then SIGKILL after 10 s).
func startPrometheus(t *testing.T, bin string, targets ...string) *promServer {
	t.Helper()
	rules, err := filepath.Abs(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	quoted := make([]string, len(targets))
	for i, tg := range targets {
		quoted[i] = strconv.Quote(tg)
	}
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - %q
scrape_configs:
  - job_name: godwit
    static_configs:
      - targets: [%s]
`, rules, strings.Join(quoted, ", "))
	cfgFile := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freeLoopbackPort(t)
	logFile := filepath.Join(dir, "prometheus.log")
	logOut, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin,
		"--config.file="+cfgFile,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr,
		"--log.level=info",
	)
	cmd.Stdout, cmd.Stderr = logOut, logOut
	if err := cmd.Start(); err != nil {
		logOut.Close()
		t.Fatalf("start %s: %v", bin, err)
	}
	p := &promServer{base: "http://" + addr, log: logFile, targets: targets, exited: make(chan struct{}),
		client: &http.Client{Transport: &http.Transport{}, Timeout: 5 * time.Second}}
	waitErr := make(chan error, 1)
	go func() {
		waitErr <- cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.client.CloseIdleConnections()
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			t.Errorf("prometheus did not stop within 10 s of SIGTERM; killing it")
			cmd.Process.Kill()
			<-p.exited
		}
		logOut.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logFile)
			t.Logf("prometheus log:\n%s", b)
		}
	})
	p.poll(t, 30*time.Second, "prometheus ready", func() error {
		resp, err := p.client.Get(p.base + "/-/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/-/ready: %s", resp.Status)
		}
		return nil
	})
	t.Logf("prometheus on %s, scraping %v", addr, targets)
	return p
}

// waitTargetsUp waits until Prometheus has scraped each of its targets,
// and every one is up.
func (p *promServer) waitTargetsUp(t *testing.T, d time.Duration) {
	t.Helper()
	p.poll(t, d, fmt.Sprintf("%d targets scraped and up", len(p.targets)), func() error {
		var targets struct {
			ActiveTargets []struct {
				ScrapeURL, Health, LastError string
			}
		}
		if err := p.api("/api/v1/targets", nil, &targets); err != nil {
			return err
		}
		if len(targets.ActiveTargets) != len(p.targets) {
			return fmt.Errorf("%d active targets, want %d", len(targets.ActiveTargets), len(p.targets))
		}
		for _, tg := range targets.ActiveTargets {
			if tg.Health != "up" {
				return fmt.Errorf("target %s: health %q (%s)", tg.ScrapeURL, tg.Health, tg.LastError)
			}
		}
		return nil
	})
}

// waitRulesHealthy waits until Prometheus has evaluated every rule of
// rulesFile at least once, and fails the test for each that evaluated
// with an error.
func (p *promServer) waitRulesHealthy(t *testing.T, d time.Duration) {
	t.Helper()
	want := len(readRules(t))
	p.poll(t, d, "every rule evaluated", func() error {
		var rules struct {
			Groups []struct {
				Name  string
				Rules []struct{ Name, Health, LastError string }
			}
		}
		if err := p.api("/api/v1/rules", nil, &rules); err != nil {
			return err
		}
		n := 0
		var unhealthy []string
		for _, g := range rules.Groups {
			for _, r := range g.Rules {
				n++
				switch r.Health {
				case "ok":
				case "unknown":
					return fmt.Errorf("rule %s of %s not evaluated yet", r.Name, g.Name)
				default:
					unhealthy = append(unhealthy, fmt.Sprintf("rule %s of %s: health %q: %s", r.Name, g.Name, r.Health, r.LastError))
				}
			}
		}
		if n != want {
			return fmt.Errorf("Prometheus loaded %d rules, want %d", n, want)
		}
		for _, u := range unhealthy {
			t.Error(u)
		}
		t.Logf("%d rules evaluated, %d unhealthy", n, len(unhealthy))
		return nil
	})
}

// freeLoopbackPort returns a 127.0.0.1 address whose port was free a
// moment ago.
func freeLoopbackPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// poll calls check until it returns nil, failing the test with its last
// error when that does not happen within d or when Prometheus exits.
func (p *promServer) poll(t *testing.T, d time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := check()
		if err == nil {
			return
		}
		select {
		case <-p.exited:
			t.Fatalf("%s: prometheus exited (log: %s); last: %v", what, p.log, err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v; last: %v", what, d, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// api GETs path with params and decodes the data of the answer into v.
func (p *promServer) api(path string, params url.Values, v any) error {
	u := p.base + path
	if params != nil {
		u += "?" + params.Encode()
	}
	resp, err := p.client.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var body struct {
		Status, Error string
		Data          json.RawMessage
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return fmt.Errorf("GET %s: %s: %w", path, resp.Status, err)
	}
	if body.Status != "success" {
		return fmt.Errorf("GET %s: %s: %s", path, resp.Status, body.Error)
	}
	return json.Unmarshal(body.Data, v)
}

// sample is one series of an instant query's vector.
type sample struct {
	Metric map[string]string
	Value  [2]any // [unix time, "value"]
}

func (s sample) value() float64 {
	str, _ := s.Value[1].(string)
	v, err := strconv.ParseFloat(str, 64)
	if err != nil {
		return -1
	}
	return v
}

// query runs an instant query and returns its vector.
func (p *promServer) query(q string) ([]sample, error) {
	var data struct {
		ResultType string
		Result     []sample
	}
	if err := p.api("/api/v1/query", url.Values{"query": {q}}, &data); err != nil {
		return nil, err
	}
	if data.ResultType != "vector" {
		return nil, errors.New("result type " + data.ResultType + ", want vector")
	}
	return data.Result, nil
}
