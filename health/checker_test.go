package health

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/godwit/godwit/config"
)

// waitFor bounds everything a test waits for. Nothing sleeps: tests wait on
// channels, and this deadline only turns a hang into a failure.
const waitFor = 5 * time.Second

// never is an interval or grace period no test outlives: a check with it
// runs at most once, so a result proves it came from the first attempt.
const never = time.Hour

var errConnect = errors.New("dial tcp: connection refused")

// event is one call of the ReportFunc.
type event struct {
	id      string
	passing bool
	reason  string
}

// harness is a Checker whose reports go to a channel, with its own
// registry and a logger writing to the test's output.
type harness struct {
	t      *testing.T
	c      *Checker
	reg    *prometheus.Registry
	events chan event
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	h := &harness{t: t, reg: prometheus.NewPedanticRegistry(), events: make(chan event, 1<<14)}
	logger := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	h.c = NewChecker(logger, h.reg, func(id string, passing bool, reason string) {
		select {
		case h.events <- event{id, passing, reason}:
		default: // never block the Checker; a test that loses a report times out
		}
	})
	return h
}

// run runs the Checker in a goroutine and returns a function that stops it
// and waits for Run to return; the test's cleanup calls it too.
func (h *harness) run() (stop func()) {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.c.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					h.t.Errorf("Run() = %v; want nil", err)
				}
			case <-time.After(waitFor):
				h.t.Errorf("Run did not return within %v of its context's end", waitFor)
			}
		})
	}
	h.t.Cleanup(stop)
	return stop
}

// start sets targets and runs the Checker until the test ends.
func (h *harness) start(targets ...Target) {
	h.t.Helper()
	h.c.Set(targets)
	h.run()
}

// next returns the next report, failing the test if none comes in time.
func (h *harness) next() event {
	h.t.Helper()
	select {
	case e := <-h.events:
		return e
	case <-time.After(waitFor):
		h.t.Fatalf("no report within %v", waitFor)
		return event{}
	}
}

// expect waits for the next report and checks its machine and state.
func (h *harness) expect(id string, passing bool) event {
	h.t.Helper()
	e := h.next()
	if e.id != id || e.passing != passing {
		h.t.Fatalf("report (%q, passing=%v, %q); want (%q, passing=%v)", e.id, e.passing, e.reason, id, passing)
	}
	return e
}

// expectQuiet checks that no report is pending now.
func (h *harness) expectQuiet() {
	h.t.Helper()
	select {
	case e := <-h.events:
		h.t.Fatalf("unexpected report (%q, passing=%v, %q)", e.id, e.passing, e.reason)
	default:
	}
}

// count is the value of godwit_health_checks_total for the labels.
func (h *harness) count(app, typ, result string) float64 {
	return testutil.ToFloat64(h.c.metrics.checks.WithLabelValues(app, typ, result))
}

// runOf is the run checking machine id now (nil if none).
func (h *harness) runOf(id string) *run {
	m := (*h.c.machines.Load())[id]
	if m == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.run
}

// hit is one request a backend received.
type hit struct {
	method, host, path, query string
	header                    http.Header
	at                        time.Time
}

// hits records the requests of a backend; a handler records a request
// before it answers.
type hits chan hit

func newHits() hits { return make(hits, 1<<10) }

func (hs hits) record(r *http.Request) {
	select {
	case hs <- hit{r.Method, r.Host, r.URL.Path, r.URL.RawQuery, r.Header.Clone(), time.Now()}:
	default:
	}
}

func (hs hits) wait(t *testing.T) hit {
	t.Helper()
	select {
	case h := <-hs:
		return h
	case <-time.After(waitFor):
		t.Fatalf("backend got no request within %v", waitFor)
		return hit{}
	}
}

// backend is a loopback HTTP server answering every request with the
// status it holds.
type backend struct {
	srv    *httptest.Server
	status atomic.Int32
	hits   hits
}

func newBackend(t *testing.T, status int) *backend {
	t.Helper()
	b := &backend{hits: newHits()}
	b.status.Store(int32(status))
	b.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.hits.record(r)
		w.WriteHeader(int(b.status.Load()))
	}))
	t.Cleanup(b.srv.Close)
	return b
}

func (b *backend) addr() string { return b.srv.Listener.Addr().String() }

// newServer starts a loopback HTTP server with handler h. release is closed
// before the server, so handlers that block on it let Close finish.
func newServer(t *testing.T, h func(w http.ResponseWriter, r *http.Request, release <-chan struct{})) (addr string) {
	t.Helper()
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h(w, r, release) }))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	return srv.Listener.Addr().String()
}

// listenTCP accepts and closes connections on ln until the test ends,
// signalling each accept.
func listenTCP(t *testing.T, ln net.Listener) (accepts <-chan struct{}) {
	t.Helper()
	ch := make(chan struct{}, 1<<10)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			conn.Close()
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	return ch
}

func listen(t *testing.T, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("net.Listen(%q) = %v", addr, err)
	}
	return ln
}

// deadAddr is a loopback address nothing listens on: connecting to it is
// refused.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln := listen(t, "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func wait(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(waitFor):
		t.Fatalf("%s did not happen within %v", what, waitFor)
	}
}

func target(id, addr string, checks ...config.Check) Target {
	return Target{MachineID: id, App: "web", Addr: addr, Checks: checks, Started: time.Now()}
}

func tcpTarget(id, addr string, checks ...config.Check) Target {
	return Target{MachineID: id, App: "web", Addr: addr, TCPChecks: checks, Started: time.Now()}
}

func check(path string, interval time.Duration) config.Check {
	return config.Check{Path: path, Interval: interval, Timeout: time.Second}
}

func TestHTTPCheckFails(t *testing.T) {
	tests := map[string]struct {
		handler func(w http.ResponseWriter, r *http.Request, release <-chan struct{})
		timeout time.Duration
		reason  string // in the failing report's reason
	}{
		"500": {
			handler: func(w http.ResponseWriter, r *http.Request, _ <-chan struct{}) {
				w.WriteHeader(http.StatusInternalServerError)
			},
			reason: "status 500",
		},
		"404": {
			handler: func(w http.ResponseWriter, r *http.Request, _ <-chan struct{}) {
				http.NotFound(w, r)
			},
			reason: "status 404",
		},
		// /healthz redirects to /ok, which answers 200: following the redirect
		// would pass.
		"301 not followed": {
			handler: func(w http.ResponseWriter, r *http.Request, _ <-chan struct{}) {
				if r.URL.Path == "/ok" {
					return
				}
				http.Redirect(w, r, "/ok", http.StatusMovedPermanently)
			},
			reason: "status 301 Moved Permanently, want 2xx (redirects are not followed)",
		},
		"hang until timeout": {
			handler: func(w http.ResponseWriter, r *http.Request, release <-chan struct{}) {
				select {
				case <-r.Context().Done():
				case <-release:
				}
			},
			timeout: 100 * time.Millisecond,
			reason:  "(timeout 100ms)",
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			addr := newServer(t, tt.handler)
			h := newHarness(t)
			chk := check("/healthz", never) // a report can only come from the first attempt
			if tt.timeout > 0 {
				chk.Timeout = tt.timeout
			}
			h.start(target("m1", addr, chk))

			e := h.expect("m1", false)
			if !strings.Contains(e.reason, tt.reason) {
				t.Errorf("reason = %q; want it to contain %q", e.reason, tt.reason)
			}
			if h.c.Passing("m1") {
				t.Errorf("Passing(m1) = true after a failing report; want false")
			}
			if got := h.count("web", "http", "fail"); got != 1 {
				t.Errorf("checks_total{web,http,fail} = %v; want 1", got)
			}
		})
	}
}

func TestHTTPCheckRecovers(t *testing.T) {
	b := newBackend(t, http.StatusInternalServerError)
	h := newHarness(t)
	h.start(target("m1", b.addr(), check("/", 50*time.Millisecond)))

	h.expect("m1", false)
	if got := h.count("web", "http", "fail"); got < 1 {
		t.Errorf("checks_total{web,http,fail} = %v; want >= 1", got)
	}
	b.status.Store(http.StatusOK)
	e := h.expect("m1", true)
	if !h.c.Passing("m1") {
		t.Errorf("Passing(m1) = false after a passing report; want true")
	}
	if want := "passed"; !strings.Contains(e.reason, want) {
		t.Errorf("reason = %q; want it to contain %q", e.reason, want)
	}
	if got := h.count("web", "http", "pass"); got < 1 {
		t.Errorf("checks_total{web,http,pass} = %v; want >= 1", got)
	}
	if n, err := testutil.GatherAndCount(h.reg, "godwit_health_checks_total"); err != nil || n < 2 {
		t.Errorf("GatherAndCount(godwit_health_checks_total) = %d, %v; want >= 2 series on the given registry", n, err)
	}
}

func TestHTTPCheckPassesOn2xx(t *testing.T) {
	for _, status := range []int{http.StatusOK, http.StatusNoContent} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			b := newBackend(t, status)
			h := newHarness(t)
			h.start(target("m1", b.addr(), check("/", 20*time.Millisecond)))

			b.hits.wait(t)
			b.hits.wait(t) // the second attempt starts after the first was recorded
			h.expectQuiet()
			if !h.c.Passing("m1") {
				t.Errorf("Passing(m1) = false; want true")
			}
			if got := h.count("web", "http", "pass"); got < 1 {
				t.Errorf("checks_total{web,http,pass} = %v; want >= 1", got)
			}
		})
	}
}

// A machine passes only while all of its checks pass.
func TestAllChecksMustPass(t *testing.T) {
	good, bad := newBackend(t, http.StatusOK), newBackend(t, http.StatusServiceUnavailable)
	mux := http.NewServeMux()
	mux.Handle("/good", good.srv.Config.Handler)
	mux.Handle("/bad", bad.srv.Config.Handler)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)

	h := newHarness(t)
	h.start(target("m1", srv.Listener.Addr().String(),
		check("/good", 20*time.Millisecond), check("/bad", 20*time.Millisecond)))

	h.expect("m1", false)
	for range 3 { // passing attempts of /good alone change nothing
		good.hits.wait(t)
	}
	h.expectQuiet()
	bad.status.Store(http.StatusOK)
	h.expect("m1", true)
}

func TestHTTPCheckRequest(t *testing.T) {
	tests := map[string]struct {
		check config.Check
		want  hit // method, host, path, query and the headers named in it
	}{
		"defaults": {
			check: config.Check{},
			want:  hit{method: "GET", path: "/", header: http.Header{"User-Agent": {userAgent}}},
		},
		"method path and headers": {
			check: config.Check{
				Method: "head",
				Path:   "/healthz?deep=1",
				Headers: map[string]string{
					"Host":              "app.example.com",
					"X-Forwarded-Proto": "https",
					"user-agent":        "probe/1",
				},
			},
			want: hit{method: "HEAD", host: "app.example.com", path: "/healthz", query: "deep=1",
				header: http.Header{"X-Forwarded-Proto": {"https"}, "User-Agent": {"probe/1"}}},
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			b := newBackend(t, http.StatusOK)
			h := newHarness(t)
			tt.check.Interval, tt.check.Timeout = never, time.Second
			h.start(target("m1", b.addr(), tt.check))

			got := b.hits.wait(t)
			want := tt.want
			if want.host == "" {
				want.host = b.addr()
			}
			if got.method != want.method || got.host != want.host || got.path != want.path || got.query != want.query {
				t.Errorf("request = %s Host=%s %s?%s; want %s Host=%s %s?%s",
					got.method, got.host, got.path, got.query, want.method, want.host, want.path, want.query)
			}
			for k := range want.header {
				if g, w := got.header.Get(k), want.header.Get(k); g != w {
					t.Errorf("header %s = %q; want %q", k, g, w)
				}
			}
			if g := got.header.Values("Host"); len(g) != 0 {
				t.Errorf("Host sent as a header field %q; want it only as the request's host", g)
			}
		})
	}
}

func TestHTTPSCheck(t *testing.T) {
	// Load the system roots now, outside every deadline: with -race and a
	// large SSL_CERT_DIR the first verification can take seconds.
	if _, err := x509.SystemCertPool(); err != nil {
		t.Logf("x509.SystemCertPool() = %v", err)
	}
	tests := map[string]struct {
		check      config.Check
		fail       string // in the failing report's reason; "" means passing
		serverName string // SNI the server must see; "" means any
	}{
		"skip verify passes": {
			check: config.Check{Protocol: "https", TLSSkipVerify: true},
		},
		"unverified certificate fails": {
			check: config.Check{Protocol: "https"},
			fail:  "certificate",
		},
		"server name is sent": {
			check:      config.Check{Protocol: "https", TLSSkipVerify: true, TLSServerName: "m1.web.internal"},
			serverName: "m1.web.internal",
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			hs := newHits()
			sni := make(chan string, 16)
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				hs.record(r)
			}))
			srv.Config.ErrorLog = log.New(io.Discard, "", 0) // handshake errors are the point of a case
			srv.TLS = &tls.Config{GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
				select {
				case sni <- hello.ServerName:
				default:
				}
				return nil, nil
			}}
			srv.StartTLS()
			t.Cleanup(srv.Close)

			h := newHarness(t)
			tt.check.Interval, tt.check.Timeout = 20*time.Millisecond, time.Second
			h.start(target("m1", srv.Listener.Addr().String(), tt.check))

			if tt.fail != "" {
				e := h.expect("m1", false)
				if !strings.Contains(e.reason, tt.fail) {
					t.Errorf("reason = %q; want it to contain %q", e.reason, tt.fail)
				}
				return
			}
			hs.wait(t)
			hs.wait(t)
			h.expectQuiet()
			if !h.c.Passing("m1") {
				t.Errorf("Passing(m1) = false; want true")
			}
			if tt.serverName != "" {
				if got := <-sni; got != tt.serverName {
					t.Errorf("TLS server name = %q; want %q", got, tt.serverName)
				}
			}
		})
	}
}

func TestTCPCheck(t *testing.T) {
	t.Run("open port passes", func(t *testing.T) {
		ln := listen(t, "127.0.0.1:0")
		accepts := listenTCP(t, ln)
		h := newHarness(t)
		h.start(tcpTarget("m1", ln.Addr().String(), config.Check{Interval: 20 * time.Millisecond, Timeout: time.Second}))

		wait(t, accepts, "first connection")
		wait(t, accepts, "second connection") // dialled after the first was recorded
		h.expectQuiet()
		if !h.c.Passing("m1") {
			t.Errorf("Passing(m1) = false; want true")
		}
		if got := h.count("web", "tcp", "pass"); got < 1 {
			t.Errorf("checks_total{web,tcp,pass} = %v; want >= 1", got)
		}
	})
	t.Run("closed port fails", func(t *testing.T) {
		h := newHarness(t)
		h.start(tcpTarget("m1", deadAddr(t), config.Check{Interval: never, Timeout: time.Second}))

		e := h.expect("m1", false)
		if want := "refused"; !strings.Contains(e.reason, want) {
			t.Errorf("reason = %q; want it to contain %q", e.reason, want)
		}
		if got := h.count("web", "tcp", "fail"); got != 1 {
			t.Errorf("checks_total{web,tcp,fail} = %v; want 1", got)
		}
	})
}

func TestGracePeriod(t *testing.T) {
	tests := map[string]struct {
		grace     time.Duration
		started   time.Duration // Target.Started relative to now; 0 means the zero time
		wantAfter time.Duration // earliest first check, relative to Started
	}{
		"delays the first check":      {grace: 200 * time.Millisecond, started: -time.Nanosecond, wantAfter: 200 * time.Millisecond},
		"counts from Started":         {grace: never, started: -2 * never}, // long over: checked at once
		"zero Started means long ago": {grace: never},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			b := newBackend(t, http.StatusOK)
			h := newHarness(t)
			tg := target("m1", b.addr(), config.Check{GracePeriod: tt.grace, Interval: never, Timeout: time.Second})
			tg.Started = time.Time{}
			if tt.started != 0 {
				tg.Started = time.Now().Add(tt.started)
			}
			h.start(tg)

			got := b.hits.wait(t) // a grace period still running would outlast waitFor
			if tt.wantAfter > 0 {
				if d := got.at.Sub(tg.Started); d < tt.wantAfter {
					t.Errorf("first check %v after Started; want >= %v", d, tt.wantAfter)
				}
			}
		})
	}
}

func TestMarkFailing(t *testing.T) {
	t.Run("fails at once and a passing check restores", func(t *testing.T) {
		// Every request waits for the test to answer it, so no check
		// result lands between the test's steps.
		hs, answers := newHits(), make(chan int)
		addr := newServer(t, func(w http.ResponseWriter, r *http.Request, release <-chan struct{}) {
			hs.record(r)
			select {
			case status := <-answers:
				w.WriteHeader(status)
			case <-release:
			}
		})
		h := newHarness(t)
		h.start(target("m1", addr, config.Check{Interval: 10 * time.Millisecond, Timeout: never}))
		hs.wait(t)
		answers <- http.StatusOK
		hs.wait(t) // the first attempt has been recorded; the second waits

		h.c.MarkFailing("m1", errConnect)
		if h.c.Passing("m1") {
			t.Errorf("Passing(m1) = true right after MarkFailing; want false")
		}
		select { // report runs in MarkFailing's goroutine, before it returns
		case e := <-h.events:
			if e.id != "m1" || e.passing || !strings.Contains(e.reason, errConnect.Error()) {
				t.Errorf("report (%q, passing=%v, %q); want (m1, passing=false, ...%s...)", e.id, e.passing, e.reason, errConnect)
			}
		default:
			t.Fatalf("MarkFailing returned before reporting")
		}
		h.c.MarkFailing("m1", errConnect) // already failing: no second report
		h.expectQuiet()

		answers <- http.StatusOK
		h.expect("m1", true)
	})
	t.Run("stays failing while checks fail", func(t *testing.T) {
		b := newBackend(t, http.StatusInternalServerError)
		h := newHarness(t)
		h.start(target("m1", b.addr(), check("/", 20*time.Millisecond)))
		h.expect("m1", false)

		h.c.MarkFailing("m1", nil)
		h.expectQuiet()
		b.status.Store(http.StatusOK)
		h.expect("m1", true)
	})
	t.Run("before Run", func(t *testing.T) {
		b := newBackend(t, http.StatusOK)
		h := newHarness(t)
		h.c.Set([]Target{target("m1", b.addr(), check("/", never))})
		h.c.MarkFailing("m1", errConnect)
		h.expect("m1", false)

		h.run()
		h.expect("m1", true)
	})
	t.Run("unknown machine is ignored", func(t *testing.T) {
		h := newHarness(t)
		h.start()
		h.c.MarkFailing("nope", errConnect)
		h.expectQuiet()
		if h.c.Passing("nope") {
			t.Errorf("Passing(nope) = true for an unknown machine; want false")
		}
	})
}

// A machine without checks is probed with TCP connects after MarkFailing
// until one succeeds.
func TestMarkFailingWithoutChecks(t *testing.T) {
	addr := deadAddr(t)
	h := newHarness(t)
	h.c.probeInterval = 10 * time.Millisecond
	dials := make(chan error, 1<<10)
	dial := h.c.dial
	h.c.dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := dial(ctx, network, addr)
		select {
		case dials <- err:
		default:
		}
		return conn, err
	}
	h.start(Target{MachineID: "m1", App: "web", Addr: addr, Started: time.Now()})

	h.c.MarkFailing("m1", errConnect)
	h.expect("m1", false)
	for i := range 2 {
		select {
		case err := <-dials:
			if err == nil {
				t.Fatalf("probe %d to a closed port connected", i)
			}
		case <-time.After(waitFor):
			t.Fatalf("no probe %d within %v", i, waitFor)
		}
	}
	h.expectQuiet()
	if h.c.Passing("m1") {
		t.Errorf("Passing(m1) = true while probes fail; want false")
	}

	listenTCP(t, listen(t, addr)) // the machine is back
	e := h.expect("m1", true)
	if want := "tcp " + addr + " passed"; e.reason != want {
		t.Errorf("reason = %q; want %q", e.reason, want)
	}
	if got := h.count("web", "tcp", "pass"); got != 1 {
		t.Errorf("checks_total{web,tcp,pass} = %v; want 1", got)
	}
}

func TestSet(t *testing.T) {
	// a: hangs until its request is cancelled, and says so.
	aStarted, aCancelled := make(chan struct{}, 8), make(chan struct{}, 8)
	aAddr := newServer(t, func(w http.ResponseWriter, r *http.Request, release <-chan struct{}) {
		aStarted <- struct{}{}
		select {
		case <-r.Context().Done():
			aCancelled <- struct{}{}
		case <-release:
		}
	})
	// b: 200 on /ok, 500 elsewhere.
	bAddr := newServer(t, func(w http.ResponseWriter, r *http.Request, _ <-chan struct{}) {
		if r.URL.Path != "/ok" {
			w.WriteHeader(http.StatusInternalServerError)
		}
	})
	c := newBackend(t, http.StatusInternalServerError)

	ta := target("a", aAddr, config.Check{Interval: never, Timeout: never})
	tb := target("b", bAddr, check("/", never))
	tc := target("c", c.addr(), check("/", never))

	h := newHarness(t)
	if h.c.Passing("a") { // before Set: unknown
		t.Errorf("Passing(a) = true before Set; want false")
	}
	h.c.Set([]Target{ta, tb})
	if !h.c.Passing("a") || !h.c.Passing("b") {
		t.Errorf("Passing(a), Passing(b) = %v, %v after Set; want true, true (optimistic)", h.c.Passing("a"), h.c.Passing("b"))
	}
	h.run()
	wait(t, aStarted, "check of a")
	h.expect("b", false)
	runB := h.runOf("b")

	// Remove a, keep b, add c. Set returns once a's check has stopped.
	set := make(chan struct{})
	go func() {
		h.c.Set([]Target{tb, tc})
		close(set)
	}()
	wait(t, set, "Set removing a hanging target")
	wait(t, aCancelled, "cancellation of a's check")
	if h.c.Passing("a") {
		t.Errorf("Passing(a) = true after its removal; want false")
	}
	if got := h.runOf("b"); got != runB {
		t.Errorf("run of unchanged b replaced by Set; want it kept with its schedule")
	}
	if h.c.Passing("b") {
		t.Errorf("Passing(b) = true after Set; want unchanged b still failing")
	}
	h.expect("c", false) // c is new: checked at once; a and b report nothing

	// Change b's check: it restarts, b stays failing until the new check
	// passes; c is removed.
	tb2 := tb
	tb2.Checks = []config.Check{check("/ok", never)}
	h.c.Set([]Target{tb2})
	e := h.expect("b", true) // no report at all had the change reset b to passing

	if want := "/ok passed"; !strings.Contains(e.reason, want) {
		t.Errorf("reason = %q; want it to contain %q", e.reason, want)
	}
	if h.c.Passing("c") {
		t.Errorf("Passing(c) = true after its removal; want false")
	}
	if got := len(*h.c.machines.Load()); got != 1 {
		t.Errorf("machines after Set([b]) = %d; want 1", got)
	}
}

func TestRun(t *testing.T) {
	t.Run("second call fails at once", func(t *testing.T) {
		h := newHarness(t)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		errs := make(chan error, 2)
		for range 2 {
			go func() { errs <- h.c.Run(ctx) }()
		}
		select { // one of the two calls returns before ctx ends
		case err := <-errs:
			if err == nil {
				t.Errorf("second Run() = nil; want an error")
			}
		case <-time.After(waitFor):
			t.Fatalf("neither of two Run calls returned within %v", waitFor)
		}
		cancel()
		if err := <-errs; err != nil {
			t.Errorf("first Run() = %v after its context ended; want nil", err)
		}
		if err := h.c.Run(ctx); err == nil {
			t.Errorf("Run() after Run returned = nil; want an error")
		}
	})
	t.Run("stops a check in flight and records nothing", func(t *testing.T) {
		started := make(chan struct{}, 8)
		addr := newServer(t, func(w http.ResponseWriter, r *http.Request, release <-chan struct{}) {
			started <- struct{}{}
			select {
			case <-r.Context().Done():
			case <-release:
			}
		})
		h := newHarness(t)
		h.c.Set([]Target{target("m1", addr, config.Check{Interval: never, Timeout: never})})
		stop := h.run()
		wait(t, started, "check")
		stop() // fails the test unless Run returns within waitFor
		h.expectQuiet()
		if got := h.count("web", "http", "fail"); got != 0 {
			t.Errorf("checks_total{web,http,fail} = %v after a cancelled attempt; want 0", got)
		}
	})
	t.Run("Set after Run returned starts nothing", func(t *testing.T) {
		b := newBackend(t, http.StatusOK)
		h := newHarness(t)
		h.run()()
		h.c.Set([]Target{target("m1", b.addr(), check("/", 10*time.Millisecond))})
		if !h.c.Passing("m1") {
			t.Errorf("Passing(m1) = false; want true")
		}
		if r := h.runOf("m1"); r != nil {
			t.Errorf("run of m1 started after Run returned; want none") // goleak would also catch it
		}
	})
}

// Two Checkers may share a registry; they share the counter.
func TestMetricsSharedRegistry(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	a := NewChecker(nil, reg, nil)
	b := NewChecker(nil, reg, nil)
	a.metrics.checks.WithLabelValues("web", "tcp", "pass").Inc()
	if got := testutil.ToFloat64(b.metrics.checks.WithLabelValues("web", "tcp", "pass")); got != 1 {
		t.Errorf("second Checker's count = %v; want 1 (shared)", got)
	}
	if n, err := testutil.GatherAndCount(reg, "godwit_health_checks_total"); err != nil || n != 1 {
		t.Errorf("GatherAndCount = %d, %v; want 1, nil", n, err)
	}
}

// Set, MarkFailing and Passing may run concurrently with the checks (run
// with -race); one machine's reports alternate, starting with failing.
func TestConcurrentUse(t *testing.T) {
	b := newBackend(t, http.StatusOK)
	h := newHarness(t)
	h.c.probeInterval = 5 * time.Millisecond
	one := []Target{
		target("m1", b.addr(), check("/", 5*time.Millisecond)),
		target("m2", b.addr(), check("/", 5*time.Millisecond)),
	}
	two := []Target{
		target("m2", b.addr(), check("/other", 5*time.Millisecond)),
		{MachineID: "m3", App: "web", Addr: b.addr()}, // no checks: probed after MarkFailing
	}
	h.c.Set(one)
	stop := h.run()

	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range 100 {
			if i%2 == 0 {
				h.c.Set(two)
			} else {
				h.c.Set(one)
			}
		}
	})
	for range 2 {
		wg.Go(func() {
			for range 1000 {
				h.c.MarkFailing("m2", errConnect)
				h.c.MarkFailing("m3", errConnect)
			}
		})
	}
	wg.Go(func() {
		for range 1000 {
			h.c.Passing("m1")
			h.c.Passing("m2")
		}
	})
	wg.Wait()
	stop()

	want := false
	for {
		select {
		case e := <-h.events:
			if e.id != "m2" {
				continue
			}
			if e.passing != want {
				t.Fatalf("m2 reported passing=%v twice in a row (%q)", e.passing, e.reason)
			}
			want = !want
		default:
			return
		}
	}
}

// TestNotRunningSkipped: while a target's Running says the machine does
// not run (stopped on purpose), its checks are not made, recorded or
// reported; once it runs, they are.
func TestNotRunningSkipped(t *testing.T) {
	var hitCount atomic.Int64
	addr := newServer(t, func(w http.ResponseWriter, r *http.Request, _ <-chan struct{}) {
		hitCount.Add(1)
		w.WriteHeader(http.StatusInternalServerError)
	})
	h := newHarness(t)
	var running atomic.Bool
	var asked atomic.Int64
	tg := target("m1", addr, check("/healthz", 5*time.Millisecond))
	tg.Running = func() bool { asked.Add(1); return running.Load() }
	h.start(tg)
	deadline := time.Now().Add(waitFor)
	for asked.Load() < 3 { // three check times have passed
		if time.Now().After(deadline) {
			t.Fatal("Running was not asked at the check times")
		}
		time.Sleep(time.Millisecond) // poll interval
	}
	if n := hitCount.Load(); n != 0 {
		t.Errorf("a stopped machine got %d check requests, want none", n)
	}
	if got := h.count("web", "http", "fail"); got != 0 {
		t.Errorf("checks_total{web,http,fail} = %v while stopped; want 0", got)
	}
	running.Store(true)
	h.expect("m1", false) // now checked, and failing
}
