package proxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/net/websocket"
)

func TestNodeConnLimit(t *testing.T) {
	tests := []struct {
		name       string
		configured int
		nofile     uint64
		limit      int64
		safe       int64
	}{
		{"configured wins", 3, 20000, 3, 9488},
		{"configured above what the files allow", 50000, 20000, 50000, 9488},
		{"derived: 20000 files", 0, 20000, 9488, 9488},
		{"derived: systemd's 524288", 0, 524288, 261632, 261632},
		{"derived: the old 1024 keeps a quarter back", 0, 1024, 384, 384},
		{"derived: tiny limit still allows one", 0, 2, 1, 1},
		{"derived: unlimited is capped", 0, ^uint64(0), maxDerivedConnLimit, maxDerivedConnLimit},
		{"unknown file limit: the default", 0, 0, fallbackNodeConnLimit, 0},
		{"unknown file limit, configured", 7, 0, 7, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			limit, safe := nodeConnLimit(tc.configured, tc.nofile)
			if limit != tc.limit || safe != tc.safe {
				t.Errorf("nodeConnLimit(%d, %d): got limit %d, safe %d; want %d, %d", tc.configured, tc.nofile, limit, safe, tc.limit, tc.safe)
			}
		})
	}
}

// newTestLimiter is a limiter of the http and https listeners whose
// refusals log as JSON into the returned buffer.
func newTestLimiter(node, perApp int64) (*connLimiter, *bytes.Buffer, *prometheus.CounterVec) {
	refusals := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "refusals"}, []string{"scope", "app"})
	buf := new(bytes.Buffer)
	log := slog.New(slog.NewJSONHandler(buf, nil))
	return newConnLimiter(node, perApp, keyMaxConnections, []string{"http", "https"}, refusals, log), buf, refusals
}

func counterValue(t *testing.T, c prometheus.Collector) float64 {
	t.Helper()
	return testutil.ToFloat64(c)
}

func TestConnLimiterSlots(t *testing.T) {
	l, _, refusals := newTestLimiter(3, 2)
	var slots []*connSlot
	for i := range 3 {
		s := l.acquire([]string{"http", "https"}[i%2])
		if s == nil {
			t.Fatalf("acquire %d: got nil, want a slot (limit 3)", i+1)
		}
		slots = append(slots, s)
	}
	if s := l.acquire("http"); s != nil {
		t.Fatal("acquire 4: got a slot, want nil at the node's limit 3")
	}
	if got := counterValue(t, refusals.WithLabelValues(scopeNode, "")); got != 1 {
		t.Errorf("node refusals: got %v, want 1", got)
	}
	if got, want := l.listeners["http"].Load(), int64(2); got != want {
		t.Errorf("http connections: got %d, want %d", got, want)
	}

	// Per app: a connection counts once per app, however many requests.
	for range 3 {
		if !slots[0].admitApp("a") || !slots[0].admitApp("b") {
			t.Fatal("connection 1: refused, want admitted to a and b")
		}
	}
	if !slots[1].admitApp("a") {
		t.Fatal("connection 2: refused for a, want admitted (second of 2)")
	}
	if slots[2].admitApp("a") {
		t.Fatal("connection 3: admitted to a, want refused (a is at 2)")
	}
	if !slots[2].admitApp("b") {
		t.Fatal("connection 3: refused for b, want admitted (b has 1)")
	}
	if !slots[0].admitApp("a") {
		t.Fatal("connection 1 again: refused for a, want admitted: it holds a slot")
	}
	if got := counterValue(t, refusals.WithLabelValues(scopeApp, "a")); got != 1 {
		t.Errorf("refusals of app a: got %v, want 1", got)
	}
	if a, b := l.appConnsOf("a").n.Load(), l.appConnsOf("b").n.Load(); a != 2 || b != 2 {
		t.Errorf("app connections: got a %d, b %d; want 2, 2", a, b)
	}

	// Release gives everything back, once.
	slots[0].release()
	slots[0].release()
	if a, b, total := l.appConnsOf("a").n.Load(), l.appConnsOf("b").n.Load(), l.total.Load(); a != 1 || b != 1 || total != 2 {
		t.Errorf("after releasing connection 1 twice: got a %d, b %d, node %d; want 1, 1, 2", a, b, total)
	}
	if !slots[0].admitApp("a") {
		t.Error("a released connection: refused, want admitted without counting")
	}
	if got := l.appConnsOf("a").n.Load(); got != 1 {
		t.Errorf("app a after a released connection's request: got %d, want 1", got)
	}
	if !slots[2].admitApp("a") {
		t.Error("connection 3: refused for a after a slot freed, want admitted")
	}

	// Lower limits hold back new connections only.
	l.setLimits(1, 1)
	if s := l.acquire("https"); s != nil {
		t.Error("acquire with 2 open and the limit lowered to 1: got a slot, want nil")
	}
	for _, s := range slots[1:] {
		s.release()
	}
	if total, a, b := l.total.Load(), l.appConnsOf("a").n.Load(), l.appConnsOf("b").n.Load(); total != 0 || a != 0 || b != 0 {
		t.Errorf("after every release: got node %d, a %d, b %d; want 0", total, a, b)
	}
	for name, n := range l.listeners {
		if n.Load() != 0 {
			t.Errorf("listener %s: got %d connections, want 0", name, n.Load())
		}
	}
}

// TestConnLimiterConcurrent checks the counts under contention: never
// over a limit, and back to zero once every connection is released.
func TestConnLimiterConcurrent(t *testing.T) {
	const node, perApp = 8, 3
	l, _, _ := newTestLimiter(node, perApp)
	var peakNode, peakApp atomic.Int64
	raise := func(p *atomic.Int64, v int64) {
		for {
			o := p.Load()
			if v <= o || p.CompareAndSwap(o, v) {
				return
			}
		}
	}
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := range 500 {
				s := l.acquire("http")
				if s == nil {
					continue
				}
				raise(&peakNode, l.total.Load())
				app := []string{"a", "b"}[(g+i)%2]
				if s.admitApp(app) {
					raise(&peakApp, l.appConnsOf(app).n.Load())
				}
				if i%3 == 0 {
					go s.release() // another goroutine closes it, as net/http may
					s.release()
				} else {
					s.release()
				}
			}
		})
	}
	wg.Wait()
	eventually(t, 5*time.Second, "every release done", func() bool { return l.total.Load() == 0 })
	if p := peakNode.Load(); p > node {
		t.Errorf("node connections peaked at %d, want at most %d", p, node)
	}
	if p := peakApp.Load(); p > perApp {
		t.Errorf("app connections peaked at %d, want at most %d", p, perApp)
	}
	if a, b, h := l.appConnsOf("a").n.Load(), l.appConnsOf("b").n.Load(), l.listeners["http"].Load(); a != 0 || b != 0 || h != 0 {
		t.Errorf("after every release: got a %d, b %d, http %d; want 0", a, b, h)
	}
}

func TestConnLimiterLogsOncePerBurst(t *testing.T) {
	l, buf, _ := newTestLimiter(1, 1)
	now := time.Unix(1_700_000_000, 0)
	l.now = func() time.Time { return now }
	held := l.acquire("http")
	defer held.release()
	held.admitApp("a")
	other := l.acquire("http") // over the limit: nil
	if other != nil {
		t.Fatal("acquire over the limit: got a slot, want nil")
	}
	step := func(d time.Duration, n int) {
		for range n {
			now = now.Add(d)
			l.acquire("http")
		}
	}
	step(time.Second, 4) // the same burst: not logged
	step(burstGap, 1)    // a gap of burstGap: a new burst, logged
	step(burstGap/2, 12) // 60s of refusals 5s apart: logged once more, at the minute

	// Room on the node, none for app a: a new connection's request for a
	// is refused and logged, a burst of its own.
	l.setLimits(2, 1)
	s := l.acquire("https")
	defer s.release()
	if s.admitApp("a") {
		t.Fatal("admitApp over the app's limit: got true, want false")
	}

	type line struct {
		Msg     string
		Key     string
		Limit   int64
		Refused int64
		App     string
	}
	var lines []line
	for _, raw := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var ln line
		if err := json.Unmarshal([]byte(raw), &ln); err != nil {
			t.Fatalf("log line %q: %v", raw, err)
		}
		lines = append(lines, ln)
	}
	want := []line{
		{Key: keyMaxConnections, Limit: 1, Refused: 1},
		{Key: keyMaxConnections, Limit: 1, Refused: 5},
		{Key: keyMaxConnections, Limit: 1, Refused: 12},
		{Key: keyMaxConnectionsPerApp, Limit: 1, Refused: 1, App: "a"},
	}
	if len(lines) != len(want) {
		t.Fatalf("got %d log lines %+v, want %d", len(lines), lines, len(want))
	}
	for i, w := range want {
		g := lines[i]
		if g.Key != w.Key || g.Limit != w.Limit || g.Refused != w.Refused || g.App != w.App || !strings.Contains(g.Msg, "limit") {
			t.Errorf("log line %d: got %+v, want key %s, limit %d, refused %d, app %q", i, g, w.Key, w.Limit, w.Refused, w.App)
		}
	}
}

func TestSkipRequestHead(t *testing.T) {
	tests := []struct {
		name, in, rest string
	}{
		{"request", "GET / HTTP/1.1\r\nHost: a\r\n\r\nbody", "body"},
		{"bare LF", "GET / HTTP/1.1\nHost: a\n\nbody", "body"},
		{"empty lines first", "\r\n\r\nGET / HTTP/1.1\r\n\r\nbody", "body"},
		{"no end", "GET / HTTP/1.1\r\nHost: a\r\n", ""},
		{"a line over 4 KiB: gives up", "GET /" + strings.Repeat("x", 5000) + " HTTP/1.1\r\n\r\nbody", strings.Repeat("x", 5000-4096+5) + " HTTP/1.1\r\n\r\nbody"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// One byte a read: bufio then reads no further than the
			// line it looks for, so what is left is what it did not need.
			r := &oneByteReader{s: tc.in}
			skipRequestHead(r)
			if got := tc.in[r.i:]; got != tc.rest {
				t.Errorf("left %q unread, want %q", got, tc.rest)
			}
		})
	}
}

type oneByteReader struct {
	s string
	i int
}

func (r *oneByteReader) Read(p []byte) (int, error) {
	if r.i >= len(r.s) {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	p[0] = r.s[r.i]
	r.i++
	return 1, nil
}

// metricValue returns the value of series (name and labels as /metrics
// prints them, labels sorted) in text, or -1 when it is absent.
func metricValue(text, series string) float64 {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return -1
			}
			return f
		}
	}
	return -1
}

// wantMetric checks a series of p's /metrics, polling until it has the
// value: counts are updated when the proxy sees a connection close.
func wantMetric(t *testing.T, p *testProxy, series string, want float64) {
	t.Helper()
	var got float64
	eventually(t, 10*time.Second, fmt.Sprintf("%s = %v", series, want), func() bool {
		got = metricValue(p.metrics(t), series)
		return got == want
	})
}

// rawConn is a client connection to the proxy with its reader.
type rawConn struct {
	net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	nc := dialProxy(t, addr)
	return &rawConn{nc, bufio.NewReader(nc)}
}

// rawResult is a response read from a rawConn.
type rawResult struct {
	result
	close bool // it said Connection: close
}

// get sends GET / for host and reads the response.
func (c *rawConn) get(t *testing.T, host string) rawResult {
	t.Helper()
	if _, err := fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", host); err != nil {
		return rawResult{result: result{err: err}}
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return rawResult{result: result{err: err}}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return rawResult{result{status: resp.StatusCode, header: resp.Header, body: string(b), err: err}, resp.Close}
}

// wantOKFrom checks that r is a 200 from machine id.
func wantOKFrom(t *testing.T, what string, r rawResult, id string) {
	t.Helper()
	if r.err != nil || r.status != http.StatusOK || r.body != id {
		t.Fatalf("%s: got %d %q (err %v), want 200 from %s", what, r.status, r.body, r.err, id)
	}
}

// wantConnRefused checks that r is the proxy's code, announcing the
// connection's close, and that br's connection then closes.
func wantConnRefused(t *testing.T, r rawResult, code Code, br *bufio.Reader) {
	t.Helper()
	wantProxyError(t, r.result, code)
	if !r.close {
		t.Error("response: no Connection: close, want it")
	}
	if r.header.Get("Retry-After") != "1" {
		t.Errorf("Retry-After: got %q, want 1", r.header.Get("Retry-After"))
	}
	wantClosed(t, br)
}

const (
	hostA = "a.example.com"
	hostB = "b.example.com"
)

// twoApps is the config of apps a and b, one machine each.
func twoApps(a, b *machine) string {
	return fmt.Sprintf(`
[[app]]
name  = "a"
hosts = [%q]
[[app]]
name  = "b"
hosts = [%q]
[[machine]]
id      = "a1"
app     = "a"
address = %q
[[machine]]
id      = "b1"
app     = "b"
address = %q
`, hostA, hostB, a.addr, b.addr)
}

func TestMaxConnections(t *testing.T) {
	a := startMachine(t, "a1", nil, nil)
	b := startMachine(t, "b1", nil, nil)
	p := startProxy(t, "[proxy]\nmax_connections = 3\n"+twoApps(a, b))

	conns := make([]*rawConn, 3)
	for i := range conns {
		conns[i] = dialRaw(t, p.httpAddr)
		wantOKFrom(t, fmt.Sprintf("connection %d", i+1), conns[i].get(t, hostA), "a1")
	}
	text := p.metrics(t)
	for series, want := range map[string]float64{
		`godwit_client_connections{listener="http"}`:  3,
		`godwit_client_connections{listener="https"}`: 0,
		`godwit_connection_limit{scope="node"}`:       3,
		`godwit_connection_limit{scope="app"}`:        0,
	} {
		if got := metricValue(text, series); got != want {
			t.Errorf("%s: got %v, want %v", series, got, want)
		}
	}

	// The fourth connection is answered, not dropped nor left waiting.
	fourth := dialRaw(t, p.httpAddr)
	wantConnRefused(t, fourth.get(t, hostA), CodeNodeConnLimit, fourth.br)
	wantMetric(t, p, `godwit_connection_rejections_total{app="",scope="node"}`, 1)

	// Over TLS, the same answer after the handshake, by HTTP/1.1 even to
	// a client that offers HTTP/2.
	tc, err := tls.Dial("tcp", p.httpsAddr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2", "http/1.1"}})
	if err != nil {
		t.Fatalf("TLS dial over the limit: got %v, want a handshake and a 503", err)
	}
	t.Cleanup(func() { tc.Close() })
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if got := tc.ConnectionState().NegotiatedProtocol; got != "http/1.1" {
		t.Errorf("ALPN over the limit: got %q, want http/1.1", got)
	}
	tls4 := &rawConn{tc, bufio.NewReader(tc)}
	wantConnRefused(t, tls4.get(t, hostA), CodeNodeConnLimit, tls4.br)
	// A client that speaks only HTTP/2 cannot be told: it is closed.
	if c, err := tls.Dial("tcp", p.httpsAddr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}}); err == nil {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Error("HTTP/2-only client over the limit: read data, want the connection closed")
		}
		c.Close()
	}
	wantMetric(t, p, `godwit_connection_rejections_total{app="",scope="node"}`, 3)

	// The three connections within the limit keep working.
	for i, c := range conns {
		wantOKFrom(t, fmt.Sprintf("connection %d after the refusals", i+1), c.get(t, hostB), "b1")
	}
	wantMetric(t, p, `godwit_client_connections{listener="http"}`, 3)
	wantMetric(t, p, `godwit_client_connections{listener="https"}`, 0)

	// Closing one frees its slot.
	conns[0].Close()
	wantMetric(t, p, `godwit_client_connections{listener="http"}`, 2)
	fifth := dialRaw(t, p.httpAddr)
	wantOKFrom(t, "a new connection after one closed", fifth.get(t, hostA), "a1")
	// And the https listener shares the node's limit.
	fifth.Close()
	wantMetric(t, p, `godwit_client_connections{listener="http"}`, 2)
	hc := newClient(t)
	if r := do(hc, newRequest(t, http.MethodGet, "https://"+p.httpsAddr+"/", hostA, nil)); r.err != nil || r.status != http.StatusOK {
		t.Fatalf("https within the limit: got %d (err %v), want 200", r.status, r.err)
	}
	wantMetric(t, p, `godwit_client_connections{listener="https"}`, 1)
	wantMetric(t, p, `godwit_connection_rejections_total{app="",scope="node"}`, 3)
}

func TestMaxConnectionsPerApp(t *testing.T) {
	a := startMachine(t, "a1", nil, nil)
	b := startMachine(t, "b1", nil, nil)
	p := startProxy(t, "[proxy]\nmax_connections_per_app = 2\n"+twoApps(a, b))

	c1, c2 := dialRaw(t, p.httpAddr), dialRaw(t, p.httpAddr)
	wantOKFrom(t, "connection 1 to a", c1.get(t, hostA), "a1")
	wantOKFrom(t, "connection 2 to a", c2.get(t, hostA), "a1")
	wantMetric(t, p, `godwit_app_client_connections{app="a"}`, 2)

	c3 := dialRaw(t, p.httpAddr)
	wantConnRefused(t, c3.get(t, hostA), CodeAppConnLimit, c3.br)
	wantMetric(t, p, `godwit_connection_rejections_total{app="a",scope="app"}`, 1)

	// App b still works on a new connection, and the connections that
	// hold a's slots are never refused.
	c4 := dialRaw(t, p.httpAddr)
	wantOKFrom(t, "a new connection to b", c4.get(t, hostB), "b1")
	for i := range 3 {
		wantOKFrom(t, fmt.Sprintf("connection 1 to a again (%d)", i), c1.get(t, hostA), "a1")
	}
	wantOKFrom(t, "connection 1 to b", c1.get(t, hostB), "b1")
	wantMetric(t, p, `godwit_app_client_connections{app="b"}`, 2)
	wantMetric(t, p, `godwit_app_client_connections{app="a"}`, 2)
	if got := metricValue(p.metrics(t), `godwit_connection_limit{scope="app"}`); got != 2 {
		t.Errorf("godwit_connection_limit{scope=\"app\"}: got %v, want 2", got)
	}

	// A connection that made requests to a and closed releases its slot.
	c2.Close()
	wantMetric(t, p, `godwit_app_client_connections{app="a"}`, 1)
	c5 := dialRaw(t, p.httpAddr)
	wantOKFrom(t, "a new connection to a after one closed", c5.get(t, hostA), "a1")

	// One HTTP/2 connection counts once for each app it carries.
	c1.Close()
	c4.Close()
	wantMetric(t, p, `godwit_app_client_connections{app="a"}`, 1)
	wantMetric(t, p, `godwit_app_client_connections{app="b"}`, 0)
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	h2 := &http.Client{Transport: tr}
	for i := range 4 {
		host, id := hostA, "a1"
		if i%2 == 1 {
			host, id = hostB, "b1"
		}
		r := do(h2, newRequest(t, http.MethodGet, "https://"+p.httpsAddr+"/", host, nil))
		if r.err != nil || r.status != http.StatusOK || r.body != id || !strings.HasPrefix(r.header.Get("Via"), "2 ") {
			t.Fatalf("HTTP/2 request %d to %s: got %d %q (err %v), want 200 from %s", i, host, r.status, r.body, r.err, id)
		}
	}
	wantMetric(t, p, `godwit_client_connections{listener="https"}`, 1)
	wantMetric(t, p, `godwit_app_client_connections{app="a"}`, 2)
	wantMetric(t, p, `godwit_app_client_connections{app="b"}`, 1)

	// a is full again: an HTTP/2 request on a new connection is refused
	// and its connection sent away (GOAWAY).
	tr2 := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true}
	t.Cleanup(tr2.CloseIdleConnections)
	r := do(&http.Client{Transport: tr2}, newRequest(t, http.MethodGet, "https://"+p.httpsAddr+"/", hostA, nil))
	wantProxyError(t, r, CodeAppConnLimit)
	if r.header.Get("Connection") != "" {
		t.Errorf("HTTP/2 response: got Connection %q, want none (it is not an HTTP/2 header)", r.header.Get("Connection"))
	}
	wantMetric(t, p, `godwit_client_connections{listener="https"}`, 1)
	wantMetric(t, p, `godwit_connection_rejections_total{app="a",scope="app"}`, 2)

	tr.CloseIdleConnections()
	c5.Close()
	wantMetric(t, p, `godwit_client_connections{listener="https"}`, 0)
	wantMetric(t, p, `godwit_app_client_connections{app="a"}`, 0)
	wantMetric(t, p, `godwit_app_client_connections{app="b"}`, 0)
}

// TestConnLimitUpgradeReleases: a hijacked connection (a WebSocket
// tunnel) keeps its slots while the tunnel is open and gives them back
// when it closes.
func TestConnLimitUpgradeReleases(t *testing.T) {
	echo := websocket.Handler(func(ws *websocket.Conn) { io.Copy(ws, ws) })
	m := startMachine(t, "m1", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") == "" {
			io.WriteString(w, "m1")
			return
		}
		echo.ServeHTTP(w, r)
	}, nil)
	p := startProxy(t, "[proxy]\nmax_connections = 2\nmax_connections_per_app = 1\n"+oneApp("", []string{m.addr}))

	cfg, err := websocket.NewConfig("ws://"+webHost+"/echo", "http://"+webHost)
	if err != nil {
		t.Fatal(err)
	}
	ws, err := websocket.NewClient(cfg, dialProxy(t, p.httpAddr))
	if err != nil {
		t.Fatalf("websocket handshake through the proxy: got %v, want 101", err)
	}
	if err := websocket.Message.Send(ws, "ping"); err != nil {
		t.Fatal(err)
	}
	var got string
	if err := websocket.Message.Receive(ws, &got); err != nil || got != "ping" {
		t.Fatalf("echo: got %q (err %v), want ping", got, err)
	}
	wantMetric(t, p, `godwit_client_connections{listener="http"}`, 1)
	wantMetric(t, p, `godwit_app_client_connections{app="web"}`, 1)

	// The tunnel holds web's only slot.
	c := dialRaw(t, p.httpAddr)
	wantConnRefused(t, c.get(t, webHost), CodeAppConnLimit, c.br)

	ws.Close()
	wantMetric(t, p, `godwit_client_connections{listener="http"}`, 0)
	wantMetric(t, p, `godwit_app_client_connections{app="web"}`, 0)
	c = dialRaw(t, p.httpAddr)
	wantOKFrom(t, "a new connection once the tunnel closed", c.get(t, webHost), "m1")
}

// TestConnLimitReleasedOnEveryPath: each way a client connection ends
// gives its slots back exactly once, so the counts come back to zero,
// never below.
func TestConnLimitReleasedOnEveryPath(t *testing.T) {
	m := startMachine(t, "m1", nil, nil)
	p := startProxy(t, "[proxy]\nmax_connections = 100\nidle_timeout = \"300ms\"\n"+oneApp("", []string{m.addr}))
	lim := p.srv.conns

	// The client closes.
	c := dialRaw(t, p.httpAddr)
	wantOKFrom(t, "a request", c.get(t, webHost), "m1")
	c.Close()
	// The proxy closes an idle connection.
	c = dialRaw(t, p.httpAddr)
	wantOKFrom(t, "a request", c.get(t, webHost), "m1")
	wantClosed(t, c.br)
	// The proxy refuses a smuggling attempt and closes.
	c = dialRaw(t, p.httpAddr)
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: "+webHost+"\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
	wantRefused(t, c.br)
	wantClosed(t, c.br)
	// An unknown host on a connection that then closes.
	c = dialRaw(t, p.httpAddr)
	wantProxyError(t, c.get(t, "nobody.example.com").result, CodeUnknownHost)
	c.Close()
	// A failed TLS handshake (plain HTTP to the https listener).
	c = dialRaw(t, p.httpsAddr)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: "+webHost+"\r\n\r\n")
	io.Copy(io.Discard, c.br)
	// A TLS client that goes away in the middle of its handshake.
	c = dialRaw(t, p.httpsAddr)
	io.WriteString(c, "\x16\x03\x01\x00")
	c.Close()
	// A connection that never sends anything, closed by the client.
	c = dialRaw(t, p.httpAddr)
	c.Close()
	// An HTTP/2 connection.
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true}
	if r := do(&http.Client{Transport: tr}, newRequest(t, http.MethodGet, "https://"+p.httpsAddr+"/", webHost, nil)); r.status != http.StatusOK {
		t.Fatalf("HTTP/2 request: got %d (err %v), want 200", r.status, r.err)
	}
	tr.CloseIdleConnections()

	eventually(t, 10*time.Second, "every connection released", func() bool {
		return lim.total.Load() == 0 && lim.appConnsOf("web").n.Load() == 0 &&
			lim.listeners["http"].Load() == 0 && lim.listeners["https"].Load() == 0
	})
	// Nothing released twice: a new connection counts as one.
	c = dialRaw(t, p.httpAddr)
	wantOKFrom(t, "a request at the end", c.get(t, webHost), "m1")
	if total, app := lim.total.Load(), lim.appConnsOf("web").n.Load(); total != 1 || app != 1 {
		t.Errorf("one connection open: got node %d, app %d; want 1, 1", total, app)
	}
}

// TestConnLimitDefaults: without the keys, the node's limit comes from the
// open-file limit and apps have none.
func TestConnLimitDefaults(t *testing.T) {
	m := startMachine(t, "m1", nil, nil)
	p := startProxy(t, oneApp("", []string{m.addr}))
	want, _ := nodeConnLimit(0, openFileLimit())
	text := p.metrics(t)
	if got := metricValue(text, `godwit_connection_limit{scope="node"}`); got != float64(want) {
		t.Errorf("node limit: got %v, want %d", got, want)
	}
	if got := metricValue(text, `godwit_connection_limit{scope="app"}`); got != 0 {
		t.Errorf("app limit: got %v, want 0 (none)", got)
	}
	c := dialRaw(t, p.httpAddr)
	wantOKFrom(t, "a request", c.get(t, webHost), "m1")
	if got := metricValue(p.metrics(t), `godwit_app_client_connections{app="web"}`); got != 1 {
		t.Errorf("app connections without a cap: got %v, want 1 (still counted)", got)
	}
}

// TestConnRefusalsBounded: refusals answered at once are bounded; one
// more connection over the limit is closed unanswered, and a shutdown
// ends the refusals under way without waiting for their timeout.
func TestConnRefusalsBounded(t *testing.T) {
	m := startMachine(t, "m1", nil, nil)
	p := startProxy(t, "[proxy]\nmax_connections = 1\n"+oneApp("", []string{m.addr}))
	held := dialRaw(t, p.httpAddr)
	wantOKFrom(t, "the connection within the limit", held.get(t, webHost), "m1")

	// Silent clients: each refusal waits for a request head.
	for range maxRefusing {
		dialRaw(t, p.httpAddr)
	}
	wantMetric(t, p, `godwit_connection_rejections_total{app="",scope="node"}`, maxRefusing)
	eventually(t, 10*time.Second, "every refusal under way", func() bool { return p.srv.conns.refusing.Load() == maxRefusing })

	extra := dialRaw(t, p.httpAddr)
	start := time.Now()
	if n, err := extra.br.Read(make([]byte, 1)); err == nil || n != 0 {
		t.Errorf("a connection past %d refusals under way: read %d bytes (err %v), want it closed unanswered", maxRefusing, n, err)
	}
	if d := time.Since(start); d >= refuseTimeout {
		t.Errorf("a connection past %d refusals under way: closed after %v, want at once", maxRefusing, d)
	}
	wantMetric(t, p, `godwit_connection_rejections_total{app="",scope="node"}`, maxRefusing+1)
	wantOKFrom(t, "the connection within the limit, still", held.get(t, webHost), "m1")

	start = time.Now()
	if err := p.stop(t); err != nil {
		t.Fatalf("Run: got error %v, want nil", err)
	}
	if d := time.Since(start); d >= refuseTimeout {
		t.Errorf("shutdown took %v with refusals under way, want them ended at once (refuseTimeout %v)", d, refuseTimeout)
	}
	if n := p.srv.conns.refusing.Load(); n != 0 {
		t.Errorf("refusals under way after shutdown: got %d, want 0", n)
	}
}
