package proxy

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/websocket"
)

// oneApp is the config of app "web" (host web.example.com) with extra
// lines in its [app.http_service] and one [[machine]] per address, with ids
// m1, m2, ... in region regions[i] (testRegion when regions is short).
func oneApp(service string, addrs []string, regions ...string) string {
	var b strings.Builder
	b.WriteString("[[app]]\nname = \"web\"\nhosts = [\"web.example.com\"]\n")
	b.WriteString("  [app.http_service]\n" + service + "\n")
	for i, a := range addrs {
		region := testRegion
		if i < len(regions) {
			region = regions[i]
		}
		fmt.Fprintf(&b, "[[machine]]\nid = \"m%d\"\napp = \"web\"\nregion = %q\naddress = %q\n", i+1, region, a)
	}
	return b.String()
}

const webHost = "web.example.com"

// gate blocks machine handlers until opened; open may be called many times.
type gate struct {
	ch   chan struct{}
	once sync.Once
}

func newGate() *gate  { return &gate{ch: make(chan struct{})} }
func (g *gate) open() { g.once.Do(func() { close(g.ch) }) }

// wait blocks until the gate opens or r's context ends.
func (g *gate) wait(r *http.Request) {
	select {
	case <-g.ch:
	case <-r.Context().Done():
	}
}

func TestRoutingByHost(t *testing.T) {
	web := startMachine(t, "web-1", nil, nil)
	api := startMachine(t, "api-1", nil, nil)
	p := startProxy(t, fmt.Sprintf(`
[[app]]
name  = "web"
hosts = ["web.example.com"]
[[app]]
name  = "api"
hosts = ["api.example.com"]
[[machine]]
id      = "web-1"
app     = "web"
address = %q
[[machine]]
id      = "api-1"
app     = "api"
address = %q
`, web.addr, api.addr))
	c := newClient(t)

	for _, tc := range []struct {
		name, host, want string
	}{
		{"exact host", "web.example.com", "web-1"},
		{"port and mixed case", "Web.EXAMPLE.com:8080", "web-1"},
		{"other app with port", "API.example.com:443", "api-1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := p.get(t, c, tc.host, "/")
			if r.err != nil || r.status != http.StatusOK || r.body != tc.want {
				t.Fatalf("GET Host %q: got %d %q (err %v), want 200 %q", tc.host, r.status, r.body, r.err, tc.want)
			}
		})
	}

	before := web.requests.Load() + api.requests.Load()
	r := p.get(t, c, "nope.example.com:8080", "/secret")
	wantProxyError(t, r, CodeUnknownHost)
	if r.status != http.StatusNotFound {
		t.Errorf("unknown host: got status %d, want 404", r.status)
	}
	if got := web.requests.Load() + api.requests.Load(); got != before {
		t.Errorf("machines' requests after an unknown host: got %d, want %d (the machines never see it)", got, before)
	}
	wantMetric(t, p, `godwit_proxy_errors_total{app="",code="PH01"}`, 1)
}

func TestHardLimit(t *testing.T) {
	const (
		clients = 100
		hard    = 5
	)
	g := newGate()
	defer g.open()
	slow := func(w http.ResponseWriter, r *http.Request) { g.wait(r); io.WriteString(w, "done") }
	m1 := startMachine(t, "m1", slow, nil)
	m2 := startMachine(t, "m2", slow, nil)
	p := startProxy(t, oneApp(fmt.Sprintf(`
    [app.http_service.concurrency]
    type       = "requests"
    soft_limit = %d
    hard_limit = %d
[proxy]
queue_timeout = "60s"
`, hard, hard), []string{m1.addr, m2.addr}))
	c := newClient(t)

	results := make(chan result, clients)
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() { results <- p.get(t, c, webHost, "/slow") })
	}
	app := p.srv.Table().App("web")
	eventually(t, 20*time.Second, "both machines at their hard limit with the rest queued", func() bool {
		return m1.inflight.Load() == hard && m2.inflight.Load() == hard && app.QueueLen() == clients-2*hard
	})
	if st := p.machineStatus(t, "m1"); st.Inflight != hard || st.Band != "at_hard" || st.Queued != clients-2*hard {
		t.Errorf("GET /v1/machines m1: got inflight %d band %s queued %d, want %d at_hard %d",
			st.Inflight, st.Band, st.Queued, hard, clients-2*hard)
	}
	g.open()
	wg.Wait()
	close(results)
	ok := 0
	for r := range results {
		if r.err != nil || r.status != http.StatusOK || r.body != "done" {
			t.Errorf("request: got %d %q (err %v), want 200 \"done\"", r.status, r.body, r.err)
			continue
		}
		ok++
	}
	if ok != clients {
		t.Errorf("successful requests: got %d, want %d", ok, clients)
	}
	for _, m := range []*machine{m1, m2} {
		if got := m.peak.Load(); got > hard {
			t.Errorf("machine %s: got up to %d requests at once, want at most the hard limit %d", m.id, got, hard)
		}
	}
	if got := m1.requests.Load() + m2.requests.Load(); got != clients {
		t.Errorf("requests the machines served: got %d, want %d", got, clients)
	}
}

func TestQueueRejections(t *testing.T) {
	for _, tc := range []struct {
		name   string
		proxy  string
		queued int // requests to park in the queue first
		code   Code
	}{
		{"queue timeout", "queue_timeout = \"200ms\"", 0, CodeQueueTimeout},
		{"queue full", "queue_timeout = \"60s\"\nmax_queue = 1", 1, CodeQueueFull},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newGate()
			defer g.open()
			m := startMachine(t, "m1", func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/slow" {
					g.wait(r)
				}
				io.WriteString(w, "done")
			}, nil)
			p := startProxy(t, oneApp(`
    [app.http_service.concurrency]
    type       = "requests"
    soft_limit = 1
    hard_limit = 1
`, []string{m.addr})+"[proxy]\n"+tc.proxy+"\n")
			c := newClient(t)
			app := p.srv.Table().App("web")

			held := make(chan result, 1+tc.queued)
			var wg sync.WaitGroup
			defer wg.Wait()
			defer g.open()
			wg.Go(func() { held <- p.get(t, c, webHost, "/slow") })
			eventually(t, 10*time.Second, "the machine's only slot taken", func() bool { return m.inflight.Load() == 1 })
			for range tc.queued {
				wg.Go(func() { held <- p.get(t, c, webHost, "/slow") })
			}
			eventually(t, 10*time.Second, fmt.Sprintf("%d requests queued", tc.queued), func() bool { return app.QueueLen() == tc.queued })

			start := time.Now()
			r := p.get(t, c, webHost, "/fast")
			took := time.Since(start)
			wantProxyError(t, r, tc.code)
			if r.header.Get("Retry-After") == "" {
				t.Errorf("%s: got no Retry-After, want one", tc.code)
			}
			if tc.code == CodeQueueTimeout && took < 200*time.Millisecond {
				t.Errorf("queue timeout: answered after %v, want at least the 200ms queue_timeout", took)
			}
			if tc.code == CodeQueueFull && took > 5*time.Second {
				t.Errorf("queue full: answered after %v, want at once", took)
			}

			g.open()
			wg.Wait()
			close(held)
			for r := range held {
				if r.err != nil || r.status != http.StatusOK {
					t.Errorf("held request: got %d (err %v), want 200", r.status, r.err)
				}
			}
			if got := m.peak.Load(); got > 1 {
				t.Errorf("machine: got %d requests at once, want at most 1", got)
			}
		})
	}
}

func TestNearestRegion(t *testing.T) {
	const interval = 50 * time.Millisecond
	local := startMachine(t, "m1", nil, nil)
	remote := startMachine(t, "m2", nil, nil)
	p := startProxy(t, oneApp(fmt.Sprintf(`
    [[app.http_service.checks]]
    interval = "%s"
    timeout  = "1s"
    path     = %q
`, interval, checkPath), []string{local.addr, remote.addr}, testRegion, "syd"))
	c := newClient(t)

	served := func() string {
		t.Helper()
		r := p.get(t, c, webHost, "/")
		if r.err != nil || r.status != http.StatusOK {
			t.Fatalf("GET: got %d %q (err %v), want 200", r.status, r.body, r.err)
		}
		return r.body
	}
	for i := range 20 {
		if got := served(); got != "m1" {
			t.Fatalf("request %d with both machines healthy: served by %s, want the local m1", i, got)
		}
	}

	local.healthy.Store(false)
	failedAt := time.Now()
	eventually(t, 5*time.Second, "traffic moved to the remote machine", func() bool { return served() == "m2" })
	moved := time.Since(failedAt)
	t.Logf("traffic left the failing region after %v (check interval %v)", moved, interval)
	// One interval until the next check, plus scheduling under -race.
	if moved > 20*interval {
		t.Errorf("traffic moved after %v, want within about one check interval (%v)", moved, interval)
	}
	if st := p.machineStatus(t, "m1"); st.Health != "failing" {
		t.Errorf("GET /v1/machines m1 after a failing check: got health %q, want \"failing\"", st.Health)
	}
	if st := p.machineStatus(t, "m2"); st.Health != "passing" {
		t.Errorf("GET /v1/machines m2: got health %q, want \"passing\"", st.Health)
	}
	for i := range 10 {
		if got := served(); got != "m2" {
			t.Fatalf("request %d with m1 failing: served by %s, want m2", i, got)
		}
	}

	local.healthy.Store(true)
	eventually(t, 5*time.Second, "traffic back on the local machine", func() bool { return served() == "m1" })
	if st := p.machineStatus(t, "m1"); st.Health != "passing" {
		t.Errorf("GET /v1/machines m1 after passing again: got health %q, want \"passing\"", st.Health)
	}
}

var requestIDPattern = regexp.MustCompile(`^[0-9A-HJKMNP-TV-Z]{26}-` + testRegion + `$`)

func TestForwardingHeaders(t *testing.T) {
	m := startMachine(t, "m1", nil, nil)
	p := startProxy(t, oneApp("", []string{m.addr}))
	_, port, _ := net.SplitHostPort(p.httpAddr)

	raw := "GET /path?q=1 HTTP/1.1\r\n" +
		"Host: web.example.com\r\n" +
		"X-Forwarded-For: 203.0.113.7\r\n" +
		"X-Forwarded-Proto: https\r\n" +
		"X-Forwarded-Port: 443\r\n" +
		"X-Forwarded-Ssl: on\r\n" +
		"Fly-Client-IP: 198.51.100.1\r\n" +
		"Fly-Region: syd\r\n" +
		"Fly-Request-Id: spoofed\r\n" +
		"Fly-Forwarded-Proto: https\r\n" +
		"fly-replay-src: instance=x;region=syd\r\n" +
		"fly-replay-failed: reason=timeout\r\n" +
		"Fly-Replay-Cache-Status: hit\r\n" +
		"Fly-Anything: spoofed\r\n" +
		"Connection: keep-alive, X-Hop-Secret\r\n" +
		"X-Hop-Secret: hop\r\n" +
		"Keep-Alive: timeout=5\r\n" +
		"Proxy-Authorization: Basic c2VjcmV0\r\n" +
		"Upgrade: foo/1\r\n" +
		"X-Custom: kept\r\n" +
		"\r\n"
	resp, body := rawExchange(t, p.httpAddr, raw)
	if resp.StatusCode != http.StatusOK || body != "m1" {
		t.Fatalf("GET: got %d %q, want 200 \"m1\"", resp.StatusCode, body)
	}
	r := m.lastRequest()
	if r == nil {
		t.Fatal("machine saw no request, want one")
	}

	id := resp.Header.Get("Fly-Request-Id")
	if !requestIDPattern.MatchString(id) {
		t.Errorf("response Fly-Request-Id: got %q, want <ULID>-%s", id, testRegion)
	}
	want := map[string]string{
		"Fly-Client-Ip":       "127.0.0.1",
		"Fly-Region":          testRegion,
		"Fly-Request-Id":      id,
		"Fly-Forwarded-Proto": "http",
		"Fly-Forwarded-Port":  port,
		"Fly-Forwarded-Ssl":   "off",
		"X-Forwarded-For":     "203.0.113.7, 127.0.0.1",
		"X-Forwarded-Proto":   "http",
		"X-Forwarded-Port":    port,
		"X-Forwarded-Ssl":     "off",
		"Via":                 "1.1 godwit",
		"X-Custom":            "kept",
	}
	for k, v := range want {
		if got := r.Header.Values(k); len(got) != 1 || got[0] != v {
			t.Errorf("machine saw %s %q, want exactly %q", k, got, v)
		}
	}
	for _, k := range []string{"Fly-Replay-Src", "Fly-Replay-Failed", "Fly-Replay-Cache-Status", "Fly-Anything", "X-Hop-Secret", "Keep-Alive", "Proxy-Authorization", "Upgrade"} {
		if got := r.Header.Values(k); len(got) > 0 {
			t.Errorf("machine saw %s %q, want it dropped", k, got)
		}
	}
	if got := r.Header.Get("Connection"); got != "" {
		t.Errorf("machine saw Connection %q, want none", got)
	}
	if r.Host != webHost || r.RequestURI != "/path?q=1" {
		t.Errorf("machine saw Host %q target %q, want %q %q", r.Host, r.RequestURI, webHost, "/path?q=1")
	}

	if got := resp.Header.Get("Via"); got != "1.1 godwit" {
		t.Errorf("response Via: got %q, want \"1.1 godwit\"", got)
	}
	st := resp.Header.Get("Server-Timing")
	for _, phase := range []string{"route;dur=", "queue;dur=", "replay;dur=", "upstream;dur="} {
		if !strings.Contains(st, phase) {
			t.Errorf("response Server-Timing: got %q, want a %q phase", st, phase)
		}
	}
}

// TestHTTPSForwarding checks the forwarding headers of a request over listen.https.
func TestHTTPSForwarding(t *testing.T) {
	m := startMachine(t, "m1", nil, nil)
	p := startProxy(t, oneApp("", []string{m.addr}))
	_, port, _ := net.SplitHostPort(p.httpsAddr)
	c := newClient(t)
	r := do(c, newRequest(t, http.MethodGet, "https://"+p.httpsAddr+"/", webHost, nil))
	if r.err != nil || r.status != http.StatusOK {
		t.Fatalf("GET over TLS: got %d (err %v), want 200", r.status, r.err)
	}
	seen := m.lastRequest().Header
	for k, v := range map[string]string{
		"Fly-Forwarded-Proto": "https", "Fly-Forwarded-Port": port, "Fly-Forwarded-Ssl": "on",
		"X-Forwarded-Proto": "https", "X-Forwarded-Port": port, "X-Forwarded-Ssl": "on",
	} {
		if got := seen.Get(k); got != v {
			t.Errorf("machine saw %s %q over TLS, want %q", k, got, v)
		}
	}
}

// startEchoTunnel opens a WebSocket through a new proxy to a machine that
// echoes; ended closes when the machine's handler returns.
func startEchoTunnel(t *testing.T) (*testProxy, *websocket.Conn, <-chan struct{}) {
	t.Helper()
	ended := make(chan struct{})
	echo := websocket.Handler(func(ws *websocket.Conn) {
		defer close(ended)
		io.Copy(ws, ws)
	})
	m := startMachine(t, "m1", echo.ServeHTTP, nil)
	p := startProxy(t, oneApp("", []string{m.addr}))

	cfg, err := websocket.NewConfig("ws://"+webHost+"/echo", "http://"+webHost)
	if err != nil {
		t.Fatal(err)
	}
	nc := dialProxy(t, p.httpAddr)
	ws, err := websocket.NewClient(cfg, nc)
	if err != nil {
		t.Fatalf("websocket handshake through the proxy: got %v, want 101", err)
	}
	return p, ws, ended
}

func TestWebSocket(t *testing.T) {
	p, ws, ended := startEchoTunnel(t)
	for i := range 5 {
		msg := fmt.Sprintf("message %d %s", i, strings.Repeat("x", i*1000))
		if err := websocket.Message.Send(ws, msg); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
		var got string
		if err := websocket.Message.Receive(ws, &got); err != nil {
			t.Fatalf("receive %d: %v", i, err)
		}
		if got != msg {
			t.Fatalf("echo %d: got %d bytes, want %q back", i, len(got), msg[:12])
		}
	}
	if n := p.srv.handler.tunnels.count(); n != 1 {
		t.Errorf("tunnels open: got %d, want 1", n)
	}
	ws.Close()
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("machine's websocket handler still running 10s after the client closed, want it ended")
	}
	eventually(t, 10*time.Second, "tunnel closed", func() bool { return p.srv.handler.tunnels.count() == 0 })
}

func TestHTTP2(t *testing.T) {
	m := startMachine(t, "m1", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %d", r.Proto, len(b))
	}, nil)
	p := startProxy(t, oneApp("", []string{m.addr}))

	h2c := &http.Transport{Protocols: new(http.Protocols)}
	h2c.Protocols.SetUnencryptedHTTP2(true)
	h2 := &http.Transport{Protocols: new(http.Protocols), TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	h2.Protocols.SetHTTP2(true)
	t.Cleanup(h2c.CloseIdleConnections)
	t.Cleanup(h2.CloseIdleConnections)

	for _, tc := range []struct {
		name  string
		tr    *http.Transport
		url   string
		proto string
	}{
		{"h2c prior knowledge", h2c, "http://" + p.httpAddr + "/h2", "http"},
		{"TLS with ALPN h2", h2, "https://" + p.httpsAddr + "/h2", "https"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &http.Client{Transport: tc.tr}
			for _, body := range []string{"", "hello over h2"} {
				method := http.MethodGet
				var rb io.Reader
				if body != "" {
					method, rb = http.MethodPost, strings.NewReader(body)
				}
				r := do(c, newRequest(t, method, tc.url, webHost, rb))
				if r.err != nil || r.status != http.StatusOK {
					t.Fatalf("%s: got %d %q (err %v), want 200", method, r.status, r.body, r.err)
				}
				if want := fmt.Sprintf("HTTP/1.1 %d", len(body)); r.body != want {
					t.Errorf("%s: machine answered %q, want %q (HTTP/1.1 upstream, body intact)", method, r.body, want)
				}
				if got := r.header.Get("Via"); got != "2 godwit" {
					t.Errorf("%s: response Via %q, want \"2 godwit\"", method, got)
				}
				if got := m.lastRequest().Header.Get("Via"); got != "2 godwit" {
					t.Errorf("%s: machine saw Via %q, want \"2 godwit\"", method, got)
				}
				if got := m.lastRequest().Header.Get("X-Forwarded-Proto"); got != tc.proto {
					t.Errorf("%s: machine saw X-Forwarded-Proto %q, want %q", method, got, tc.proto)
				}
			}
		})
	}
}

func TestConnectRetry(t *testing.T) {
	t.Run("one dead machine", func(t *testing.T) {
		live := startMachine(t, "m2", nil, nil)
		p := startProxy(t, oneApp("", []string{deadAddr(t), live.addr}))
		c := newClient(t)
		// Both machines are in one region and equally loaded, so each pick
		// draws m1 half the time: within 50 requests it has been tried.
		for i := 0; i < 50 && p.machineStatus(t, "m1").Health == "passing"; i++ {
			r := p.get(t, c, webHost, "/")
			if r.err != nil || r.status != http.StatusOK || r.body != "m2" {
				t.Fatalf("request %d: got %d %q (err %v), want 200 from m2", i, r.status, r.body, r.err)
			}
		}
		if st := p.machineStatus(t, "m1"); st.Health != "failing" {
			t.Fatalf("GET /v1/machines m1 (dead): got health %q, want \"failing\"", st.Health)
		}
		for i := range 10 {
			if r := p.get(t, c, webHost, "/"); r.err != nil || r.status != http.StatusOK {
				t.Fatalf("request %d with m1 failing: got %d (err %v), want 200", i, r.status, r.err)
			}
		}
		if !strings.Contains(p.metrics(t), `godwit_upstream_connect_failures_total{app="web",region="iad"}`) {
			t.Error("metrics: no godwit_upstream_connect_failures_total for the dead machine")
		}
	})
	t.Run("only dead machines", func(t *testing.T) {
		p := startProxy(t, oneApp("", []string{deadAddr(t), deadAddr(t)}))
		c := newClient(t)
		wantProxyError(t, p.get(t, c, webHost, "/"), CodeRetriesFailed)
		for _, id := range []string{"m1", "m2"} {
			if st := p.machineStatus(t, id); st.Health != "failing" {
				t.Errorf("GET /v1/machines %s: got health %q, want \"failing\"", id, st.Health)
			}
		}
		// Now that both are known to fail, the proxy does not dial them.
		wantProxyError(t, p.get(t, c, webHost, "/"), CodeNoMachine)
	})
}

func TestUpstreamKeepAlive(t *testing.T) {
	t.Run("reuse", func(t *testing.T) {
		m := startMachine(t, "m1", nil, nil)
		p := startProxy(t, oneApp("", []string{m.addr}))
		c := newClient(t)
		const n = 200
		for i := range n {
			method := http.MethodGet
			var body io.Reader
			if i%2 == 1 {
				method, body = http.MethodPost, strings.NewReader("some body")
			}
			if r := do(c, newRequest(t, method, p.url("/"), webHost, body)); r.err != nil || r.status != http.StatusOK {
				t.Fatalf("request %d: got %d (err %v), want 200", i, r.status, r.err)
			}
		}
		if got := m.accepts.Load(); got != 1 {
			t.Errorf("upstream connections for %d sequential requests: got %d, want 1", n, got)
		}
		if got := m.requests.Load(); got != n {
			t.Errorf("machine requests: got %d, want %d", got, n)
		}
	})
	t.Run("machine closes idle connections", func(t *testing.T) {
		m := startMachine(t, "m1", nil, func(s *http.Server) { s.IdleTimeout = time.Millisecond })
		p := startProxy(t, oneApp("", []string{m.addr}))
		c := newClient(t)
		const n = 300
		for i := range n {
			r := p.get(t, c, webHost, "/")
			if r.err != nil || r.status != http.StatusOK {
				t.Fatalf("request %d: got %d %q (err %v), want 200", i, r.status, r.body, r.err)
			}
			if i%2 == 0 {
				// Every other request finds its pooled connection closed by
				// the machine; the others may race with the close.
				eventually(t, 5*time.Second, "machine closed its idle connections", func() bool {
					return m.closes.Load() == m.accepts.Load()
				})
			}
		}
		t.Logf("%d requests over %d upstream connections", n, m.accepts.Load())
		if st := p.machineStatus(t, "m1"); st.Health != "passing" {
			t.Errorf("machine health after its idle closes: got %q, want \"passing\"", st.Health)
		}
	})
}

func TestShutdownDrains(t *testing.T) {
	const size = 1 << 20
	g := newGate()
	defer g.open()
	m := startMachine(t, "m1", func(w http.ResponseWriter, r *http.Request) {
		g.wait(r)
		w.Header().Set("Content-Length", fmt.Sprint(size))
		w.Write(make([]byte, size))
	}, nil)
	p := startProxy(t, oneApp("", []string{m.addr}))
	c := newClient(t)

	res := make(chan result, 1)
	go func() { res <- p.get(t, c, webHost, "/slow") }()
	eventually(t, 10*time.Second, "request in flight on the machine", func() bool { return m.inflight.Load() == 1 })

	p.cancel()
	eventually(t, 10*time.Second, "listener closed to new connections", func() bool {
		nc, err := net.Dial("tcp", p.httpAddr)
		if err != nil {
			return true
		}
		nc.Close()
		return false
	})
	select {
	case err := <-p.done:
		t.Fatalf("Run returned %v with a request in flight, want it to wait for the request", err)
	default:
	}

	g.open()
	r := <-res
	if r.err != nil || r.status != http.StatusOK || len(r.body) != size {
		t.Fatalf("in-flight request across shutdown: got %d, %d bytes (err %v), want 200 with %d bytes", r.status, len(r.body), r.err, size)
	}
	if err := p.stop(t); err != nil {
		t.Fatalf("Run after a clean drain: got %v, want nil", err)
	}
	for _, name := range []string{"http", "https", "admin"} {
		addr := p.srv.Addr(name)
		if nc, err := net.Dial("tcp", addr); err == nil {
			nc.Close()
			t.Errorf("dial %s listener %s after Run returned: connected, want refused", name, addr)
		}
	}
}

func TestMetrics(t *testing.T) {
	g := newGate()
	defer g.open()
	m := startMachine(t, "m1", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			g.wait(r)
		}
		if r.URL.Path == "/missing" {
			w.WriteHeader(http.StatusNotFound)
		}
	}, nil)
	p := startProxy(t, oneApp(fmt.Sprintf(`
    [app.http_service.concurrency]
    type       = "requests"
    soft_limit = 1
    hard_limit = 1
    [[app.http_service.checks]]
    interval = "50ms"
    timeout  = "1s"
    path     = %q
[proxy]
queue_timeout = "100ms"
`, checkPath), []string{m.addr}))
	c := newClient(t)
	for range 3 {
		p.get(t, c, webHost, "/")
	}
	p.get(t, c, webHost, "/missing")

	held := make(chan result, 1)
	go func() { held <- p.get(t, c, webHost, "/slow") }()
	eventually(t, 10*time.Second, "slot held", func() bool { return m.inflight.Load() == 1 })
	wantProxyError(t, p.get(t, c, webHost, "/"), CodeQueueTimeout)
	eventually(t, 10*time.Second, "a health check ran", func() bool { return m.checks.Load() > 0 })

	text := p.metrics(t)
	for _, want := range []string{
		`godwit_requests_total{app="web",code="2xx",region="iad"} 3`,
		`godwit_requests_total{app="web",code="4xx",region="iad"} 1`,
		`godwit_requests_total{app="web",code="5xx",region=""} 1`,
		`godwit_request_duration_seconds_count{app="web",region="iad"} 4`,
		`godwit_machine_inflight{app="web",machine="m1",region="iad"} 1`,
		`godwit_concurrency_rejections_total{app="web",reason="queue_timeout"} 1`,
		`godwit_queue_wait_seconds_count{app="web"} 1`,
		`godwit_health_checks_total{app="web",result="pass",type="http"}`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics: missing %q", want)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", grepLines(text, "godwit_"))
	}
	g.open()
	if r := <-held; r.status != http.StatusOK {
		t.Errorf("held request: got %d (err %v), want 200", r.status, r.err)
	}
}

// grepLines returns the lines of s that contain sub and are not comments.
func grepLines(s, sub string) string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		if l := sc.Text(); strings.Contains(l, sub) && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestShutdownClosesTunnels: a tunnel open at shutdown is closed, both
// sides see the end, and no handler of the proxy outlives Run.
func TestShutdownClosesTunnels(t *testing.T) {
	p, ws, ended := startEchoTunnel(t)
	if err := websocket.Message.Send(ws, "ping"); err != nil {
		t.Fatalf("send: %v", err)
	}
	var got string
	if err := websocket.Message.Receive(ws, &got); err != nil || got != "ping" {
		t.Fatalf("echo: got %q (err %v), want \"ping\"", got, err)
	}

	if err := p.stop(t); err != nil {
		t.Fatalf("Run with an open tunnel: got %v, want nil", err)
	}
	noHandlersLeft(t)
	if err := websocket.Message.Receive(ws, &got); err == nil {
		t.Errorf("client after shutdown: received %q, want the tunnel closed", got)
	}
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("machine's websocket handler still running 10s after shutdown, want it ended")
	}
}

// noHandlersLeft fails the test unless every proxy handler is gone soon
// after Run returned: a tunnel's handler tells Run it is done as its last
// act, so it may still be unwinding for an instant, but no longer.
func noHandlersLeft(t *testing.T) {
	t.Helper()
	eventually(t, 2*time.Second, "no proxy handler running after Run returned", func() bool { return proxyHandlerStacks() == "" })
}

// proxyHandlerStacks returns the stacks of goroutines running the proxy's
// request handler.
func proxyHandlerStacks() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "godwit/proxy.(*Handler).serve") {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}

// TestShutdownStubbornTunnel: a machine that keeps its end of a tunnel open
// after the client's end closed does not keep Run from returning.
func TestShutdownStubbornTunnel(t *testing.T) {
	testDone := make(chan struct{})
	defer close(testDone)
	m := startRawMachine(t, func(_ int64, c net.Conn) {
		readRequest(bufio.NewReader(c))
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x-stubborn\r\nConnection: Upgrade\r\n\r\n")
		io.Copy(io.Discard, c)
		<-testDone // ignore the end of the stream; keep the socket open
	})
	p := startProxy(t, oneApp("", []string{m.addr}))

	nc := dialProxy(t, p.httpAddr)
	io.WriteString(nc, "GET /t HTTP/1.1\r\nHost: web.example.com\r\nConnection: Upgrade\r\nUpgrade: x-stubborn\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade through the proxy: got %v (err %v), want 101", resp, err)
	}

	stopped := make(chan error, 1)
	go func() { stopped <- p.stop(t) }()
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatalf("Run: got %v, want nil", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run still running 20s after its context ended, with a tunnel the machine keeps open")
	}
	noHandlersLeft(t)
}

// TestClientGoneMidResponse: when the client goes away while the machine
// is still answering (a long poll, a stream), the machine sees its request
// end and the concurrency slot comes back.
func TestClientGoneMidResponse(t *testing.T) {
	machineSawEnd := make(chan struct{})
	m := startMachine(t, "m1", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/poll" {
			return
		}
		io.WriteString(w, "waiting for events\n")
		http.NewResponseController(w).Flush()
		select {
		case <-r.Context().Done():
			close(machineSawEnd)
		case <-time.After(30 * time.Second):
		}
	}, nil)
	p := startProxy(t, oneApp(`
    [app.http_service.concurrency]
    type       = "requests"
    soft_limit = 1
    hard_limit = 1
`, []string{m.addr}))

	nc := dialProxy(t, p.httpAddr)
	io.WriteString(nc, "GET /poll HTTP/1.1\r\nHost: web.example.com\r\n\r\n")
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /poll: got %v (err %v), want 200", resp, err)
	}
	if line, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil || line != "waiting for events\n" {
		t.Fatalf("first line: got %q (err %v), want the machine's first line", line, err)
	}
	nc.Close()

	select {
	case <-machineSawEnd:
	case <-time.After(10 * time.Second):
		t.Fatal("machine's request still open 10s after the client went away, want it ended")
	}
	eventually(t, 10*time.Second, "the machine's slot released", func() bool { return p.machineStatus(t, "m1").Inflight == 0 })
	if r := p.get(t, newClient(t), webHost, "/next"); r.err != nil || r.status != http.StatusOK {
		t.Fatalf("next request: got %d (err %v), want 200", r.status, r.err)
	}
}

// TestResponseShapes: responses without a body, informational ones and an
// absolute-form request target pass through, on one upstream connection.
func TestResponseShapes(t *testing.T) {
	m := startMachine(t, "m1", func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/head":
			w.Header().Set("Content-Length", "1234")
		case "/204":
			w.WriteHeader(http.StatusNoContent)
		case "/304":
			w.WriteHeader(http.StatusNotModified)
		case "/hints":
			w.Header().Set("Link", "</style.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			io.WriteString(w, "final")
		default:
			io.WriteString(w, r.RequestURI)
		}
	}, nil)
	p := startProxy(t, oneApp("", []string{m.addr}))

	nc := dialProxy(t, p.httpAddr)
	br := bufio.NewReader(nc)
	for _, tc := range []struct {
		method, target string
		status         int
		body           string
		header         string // "Name: value" the response must have
	}{
		{"HEAD", "/head", 200, "", "Content-Length: 1234"},
		{"GET", "/204", 204, "", ""},
		{"GET", "/304", 304, "", ""},
		{"GET", "/hints", 200, "final", "Link: </style.css>; rel=preload"},
		{"GET", "http://web.example.com/abs?x=1", 200, "/abs?x=1", ""},
		{"GET", "/after", 200, "/after", ""},
	} {
		fmt.Fprintf(nc, "%s %s HTTP/1.1\r\nHost: web.example.com\r\n\r\n", tc.method, tc.target)
		resp, err := http.ReadResponse(br, &http.Request{Method: tc.method})
		if err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.target, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != tc.status || string(b) != tc.body {
			t.Errorf("%s %s: got %d %q (err %v), want %d %q", tc.method, tc.target, resp.StatusCode, b, err, tc.status, tc.body)
		}
		if k, v, ok := strings.Cut(tc.header, ": "); ok {
			got := resp.Header.Get(k)
			if k == "Content-Length" {
				got = fmt.Sprint(resp.ContentLength)
			}
			if got != v {
				t.Errorf("%s %s: got %s %q, want %q", tc.method, tc.target, k, got, v)
			}
		}
	}
	if got := m.accepts.Load(); got != 1 {
		t.Errorf("upstream connections: got %d, want 1", got)
	}
}
