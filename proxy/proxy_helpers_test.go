package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
	"go.uber.org/goleak"

	"github.com/godwit/godwit/config"
)

// TestMain fails the package if any goroutine outlives the tests: the
// proxy's listeners, pools, health checks and tunnels must all end when Run
// returns, and every test closes its machines and clients.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testRegion is the region of every test node.
const testRegion = "iad"

// checkPath is the health check path of test machines; requests to it are
// not counted as the machine's requests.
const checkPath = "/_check"

// eventually polls cond until it holds, failing the test with what when it
// does not within d.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: still not true after %v", what, d)
		}
		<-tick.C
	}
}

// testLogWriter sends the proxy's log lines to t.Log until the test ends
// (t.Log after the end panics, and a straggling goroutine may still log).
type testLogWriter struct {
	t    testing.TB
	mu   sync.Mutex
	done bool
}

func (w *testLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testLogWriter) stop() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}

// testProxy is a running proxy.Server on loopback listeners.
type testProxy struct {
	srv       *Server
	cfg       *config.Config
	reg       *prometheus.Registry
	httpAddr  string
	httpsAddr string
	adminAddr string

	cancel   context.CancelFunc
	done     chan error // Run's result
	stopOnce sync.Once
	runErr   error
}

// proxyConfig returns the TOML of a test node in testRegion with every
// listener on 127.0.0.1:0 and access logs off, followed by body (the
// [[app]], [[machine]] and [proxy] tables of the test).
func proxyConfig(body string) string {
	return fmt.Sprintf(`
[node]
name   = "edge-test"
region = %q

[listen]
http  = "127.0.0.1:0"
https = "127.0.0.1:0"
admin = "127.0.0.1:0"

[log]
access = false
`, testRegion) + body
}

// startProxy parses proxyConfig(body), starts the server and stops it when
// the test ends, failing the test if Run does not return nil.
func startProxy(t testing.TB, body string) *testProxy {
	t.Helper()
	cfg, err := config.Parse([]byte(proxyConfig(body)), t.Name()+".toml")
	if err != nil {
		t.Fatalf("config.Parse: got error %v, want a config", err)
	}
	return startProxyConfig(t, cfg)
}

func startProxyConfig(t testing.TB, cfg *config.Config) *testProxy {
	t.Helper()
	lw := &testLogWriter{t: t}
	log := slog.New(slog.NewTextHandler(lw, &slog.HandlerOptions{Level: slog.LevelInfo}))
	reg := prometheus.NewRegistry()
	srv, err := New(cfg, log, reg)
	if err != nil {
		t.Fatalf("New: got error %v, want a server", err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatalf("Listen: got error %v, want nil", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &testProxy{
		srv: srv, cfg: cfg, reg: reg,
		httpAddr: srv.Addr("http"), httpsAddr: srv.Addr("https"), adminAddr: srv.Addr("admin"),
		cancel: cancel, done: make(chan error, 1),
	}
	go func() { p.done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		if err := p.stop(t); err != nil {
			t.Errorf("Run: got error %v, want nil", err)
		}
		lw.stop()
	})
	return p
}

// stop cancels Run's context and waits for Run to return; it returns Run's
// result and may be called more than once.
func (p *testProxy) stop(t testing.TB) error {
	t.Helper()
	p.stopOnce.Do(func() {
		p.cancel()
		select {
		case p.runErr = <-p.done:
		case <-time.After(time.Minute):
			p.runErr = errors.New("Run did not return within a minute of its context ending")
		}
	})
	return p.runErr
}

// adminClient reaches admin listeners without keeping connections open.
var adminClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

// url returns the http listener's URL of path.
func (p *testProxy) url(path string) string { return "http://" + p.httpAddr + path }

// machineStatus returns the machine's entry in GET /v1/machines.
func (p *testProxy) machineStatus(t testing.TB, id string) MachineStatus {
	t.Helper()
	resp, err := adminClient.Get("http://" + p.adminAddr + "/v1/machines")
	if err != nil {
		t.Fatalf("GET /v1/machines: %v", err)
	}
	defer resp.Body.Close()
	var ms []MachineStatus
	if err := json.NewDecoder(resp.Body).Decode(&ms); err != nil {
		t.Fatalf("GET /v1/machines: decoding: %v", err)
	}
	for _, m := range ms {
		if m.ID == id {
			return m
		}
	}
	t.Fatalf("GET /v1/machines: machine %s missing from %+v", id, ms)
	return MachineStatus{}
}

// metrics returns the admin listener's /metrics text.
func (p *testProxy) metrics(t testing.TB) string {
	t.Helper()
	resp, err := adminClient.Get("http://" + p.adminAddr + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET /metrics: reading: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: got status %d, want 200", resp.StatusCode)
	}
	return string(b)
}

// newClient returns an HTTP/1.1 client of its own whose idle connections
// close when the test ends.
func newClient(t testing.TB) *http.Client {
	tr := &http.Transport{
		DisableCompression:  true,
		MaxIdleConnsPerHost: 200,
		TLSClientConfig:     &tls.Config{InsecureSkipVerify: true},
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{
		Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// newRequest builds a request to the proxy at url with the given Host.
func newRequest(t testing.TB, method, url, host string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatalf("NewRequest %s %s: %v", method, url, err)
	}
	req.Host = host
	return req
}

// result is a response read to its end.
type result struct {
	status int
	header http.Header
	body   string
	err    error
}

// do sends req with c and reads the whole response.
func do(c *http.Client, req *http.Request) result {
	resp, err := c.Do(req)
	if err != nil {
		return result{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return result{status: resp.StatusCode, header: resp.Header, body: string(b), err: err}
}

// get sends GET path with host through the proxy's http listener.
func (p *testProxy) get(t testing.TB, c *http.Client, host, path string) result {
	t.Helper()
	return do(c, newRequest(t, http.MethodGet, p.url(path), host, nil))
}

// wantProxyError checks that r is the proxy's error response with code.
func wantProxyError(t testing.TB, r result, code Code) {
	t.Helper()
	if r.err != nil {
		t.Fatalf("request: got error %v, want a %d response with %s %s", r.err, code.Status(), HeaderError, code)
	}
	if r.status != code.Status() || r.header.Get(HeaderError) != string(code) {
		t.Fatalf("response: got status %d, %s %q (body %q); want %d, %q",
			r.status, HeaderError, r.header.Get(HeaderError), r.body, code.Status(), code)
	}
	if n := strings.Count(r.body, "\n"); n != 1 || !strings.HasSuffix(r.body, "\n") || !strings.Contains(r.body, string(code)) {
		t.Fatalf("error body: got %q, want one line naming %s", r.body, code)
	}
}

// machine is a real HTTP backend on loopback. It answers every request
// with 200 and its id (in the body and the X-Machine header) unless handle
// is set, answers checkPath with 200 or 500 as healthy says, and counts the
// requests it gets (checks excluded), the connections it accepts and the
// most requests it had in flight at once.
type machine struct {
	id      string
	srv     *httptest.Server
	addr    string
	healthy atomic.Bool

	requests atomic.Int64
	checks   atomic.Int64
	accepts  atomic.Int64
	closes   atomic.Int64 // connections closed (or hijacked)
	inflight atomic.Int64
	peak     atomic.Int64

	mu   sync.Mutex
	last *http.Request // the last counted request, with its header
}

// startMachine starts a machine; handle may be nil. configure, if not nil,
// may change the http.Server before it starts.
func startMachine(t testing.TB, id string, handle http.HandlerFunc, configure func(*http.Server)) *machine {
	t.Helper()
	m := &machine{id: id}
	m.healthy.Store(true)
	m.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == checkPath {
			m.checks.Add(1)
			if !m.healthy.Load() {
				w.WriteHeader(http.StatusInternalServerError)
			}
			return
		}
		m.requests.Add(1)
		n := m.inflight.Add(1)
		defer m.inflight.Add(-1)
		for {
			p := m.peak.Load()
			if n <= p || m.peak.CompareAndSwap(p, n) {
				break
			}
		}
		m.mu.Lock()
		m.last = r.Clone(context.Background())
		m.mu.Unlock()
		w.Header().Set("X-Machine", id)
		if handle != nil {
			handle(w, r)
			return
		}
		io.WriteString(w, id)
	}))
	m.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			m.accepts.Add(1)
		case http.StateClosed, http.StateHijacked:
			m.closes.Add(1)
		}
	}
	m.srv.Config.ErrorLog = slog.NewLogLogger(slog.DiscardHandler, slog.LevelError)
	if configure != nil {
		configure(m.srv.Config)
	}
	m.srv.Start()
	m.addr = m.srv.Listener.Addr().String()
	t.Cleanup(m.srv.Close)
	return m
}

// lastRequest returns the last request the machine counted.
func (m *machine) lastRequest() *http.Request {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.last
}

// rawMachine is a TCP listener whose every connection is handled by serve,
// with n the connection's number from 1: for machines that misbehave.
type rawMachine struct {
	ln      net.Listener
	addr    string
	accepts atomic.Int64
	wg      sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

func startRawMachine(t testing.TB, serve func(n int64, c net.Conn)) *rawMachine {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	m := &rawMachine{ln: ln, addr: ln.Addr().String(), conns: make(map[net.Conn]struct{})}
	m.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n := m.accepts.Add(1)
			m.mu.Lock()
			m.conns[c] = struct{}{}
			m.mu.Unlock()
			m.wg.Go(func() {
				defer func() {
					c.Close()
					m.mu.Lock()
					delete(m.conns, c)
					m.mu.Unlock()
				}()
				serve(n, c)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		m.mu.Lock()
		for c := range m.conns {
			c.Close()
		}
		m.mu.Unlock()
		m.wg.Wait()
	})
	return m
}

// readRequest reads one request from br, discarding its body.
func readRequest(br *bufio.Reader) (*http.Request, error) {
	req, err := http.ReadRequest(br)
	if err != nil {
		return nil, err
	}
	_, err = io.Copy(io.Discard, req.Body)
	return req, err
}

// deadAddr returns a loopback address nothing listens on.
func deadAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// rawExchange writes raw to the proxy's http listener and reads one
// response, with a deadline.
// dialProxy opens a raw client connection to addr, closed when the test
// ends, with a 20 s deadline so a broken proxy fails the test, not hangs it.
func dialProxy(t testing.TB, addr string) net.Conn {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial proxy: %v", err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(20 * time.Second))
	return nc
}

func rawExchange(t testing.TB, addr, raw string) (*http.Response, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial proxy: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatalf("write request: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("read response: got error %v, want a response", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}
