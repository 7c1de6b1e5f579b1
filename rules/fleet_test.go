package rules

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/goleak"

	"github.com/godwit/godwit/internal/edgetest"
	"github.com/godwit/godwit/proxy"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// webHost is the Host of the test fleet's app web.
const webHost = "web.test"

// fleet is two edges gossiping on loopback, as a real deployment has
// them: edge-iad owns machine m-iad, edge-nrt owns m-nrt, and app web
// (hard limit 1 per machine) runs on both. m-iad replays PUTs to region
// nrt, answers /fail with 500 and /slow after half a second; m-nrt
// answers everything.
type fleet struct {
	iad, nrt *edge
	client   *http.Client
}

// edge is one running proxy.Server.
type edge struct {
	name  string
	srv   *proxy.Server
	admin string // host:port of /metrics
	http  string // host:port of the client listener
}

// startFleet starts the fleet and waits until edge-iad routes to m-nrt;
// the test's cleanup stops it.
func startFleet(t *testing.T) *fleet {
	t.Helper()
	mIAD := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		switch {
		case r.Method == http.MethodPut:
			w.Header().Set("Fly-Replay", "region=nrt")
		case r.URL.Path == "/fail":
			http.Error(w, "failing on purpose", http.StatusInternalServerError)
		case r.URL.Path == "/slow":
			time.Sleep(500 * time.Millisecond)
			io.WriteString(w, "m-iad, slowly\n")
		default:
			io.WriteString(w, "m-iad\n")
		}
	}))
	t.Cleanup(mIAD.Close)
	mNRT := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "m-nrt\n")
	}))
	t.Cleanup(mNRT.Close)

	f := &fleet{client: &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}}
	t.Cleanup(f.client.CloseIdleConnections)
	f.nrt = startEdge(t, "edge-nrt", "nrt", "", machineTOML("m-nrt", "nrt", mNRT.Listener.Addr().String()))
	f.iad = startEdge(t, "edge-iad", "iad", f.nrt.srv.GossipAddr(), machineTOML("m-iad", "iad", mIAD.Listener.Addr().String()))
	edgetest.WaitReachable(t, f.iad.srv, "m-nrt", 20*time.Second)
	return f
}

func machineTOML(id, region, addr string) string {
	return fmt.Sprintf("\n[[machine]]\nid = %q\napp = \"web\"\nregion = %q\naddress = %q\n", id, region, addr)
}

// startEdge starts one edge joining join (a gossip address, or "").
func startEdge(t *testing.T, name, region, join, machines string) *edge {
	t.Helper()
	joinLine := ""
	if join != "" {
		joinLine = fmt.Sprintf("join = [%q]", join)
	}
	text := fmt.Sprintf(`
[node]
name   = %q
region = %q

[listen]
http  = "127.0.0.1:0"
admin = "127.0.0.1:0"

[log]
access = false

[proxy]
queue_timeout = "200ms"

[gossip]
bind = "127.0.0.1:0"
%s

[backhaul]
listen = "127.0.0.1:0"

[[app]]
name  = "web"
hosts = [%q]
  [app.http_service.concurrency]
  type       = "requests"
  soft_limit = 1
  hard_limit = 1
`, name, region, joinLine, webHost) + machines
	// The registry of `godwit run`: the node's metrics and the Go and
	// process collectors.
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	e := edgetest.Start(t, name, text, edgetest.Options{Registry: reg})
	return &edge{name: name, srv: e.Server, admin: e.Server.Addr("admin"), http: e.Server.Addr("http")}
}

// do sends one request for app web to edge e and returns its status.
func (f *fleet) do(t testing.TB, e *edge, method, path string, header http.Header) (int, error) {
	req, err := http.NewRequest(method, "http://"+e.http+path, strings.NewReader("body"))
	if err != nil {
		t.Fatal(err)
	}
	req.Host = webHost
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// exercise sends edge-iad the traffic that makes the request path's
// series exist: plain requests, replays through the backhaul to nrt,
// 500s, and requests that queue at m-iad's hard limit, one served and
// the others refused after proxy.queue_timeout (503 PL03).
func (f *fleet) exercise(t *testing.T) {
	t.Helper()
	for _, c := range []struct {
		method, path string
		n, want      int
	}{
		{http.MethodGet, "/", 5, http.StatusOK},
		{http.MethodPut, "/write", 3, http.StatusOK}, // replayed to m-nrt
		{http.MethodGet, "/fail", 2, http.StatusInternalServerError},
	} {
		for range c.n {
			got, err := f.do(t, f.iad, c.method, c.path, nil)
			if err != nil || got != c.want {
				t.Fatalf("%s %s at edge-iad: got %d, %v; want %d", c.method, c.path, got, err, c.want)
			}
		}
	}
	forced := http.Header{"Fly-Force-Instance-Id": {"m-iad"}}
	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[int]int{}
	for range 3 {
		wg.Go(func() {
			got, err := f.do(t, f.iad, http.MethodGet, "/slow", forced)
			if err != nil {
				t.Errorf("GET /slow at edge-iad: %v", err)
			}
			mu.Lock()
			statuses[got]++
			mu.Unlock()
		})
	}
	wg.Wait()
	if statuses[http.StatusOK] < 1 || statuses[http.StatusServiceUnavailable] < 1 {
		t.Fatalf("3 concurrent GET /slow on m-iad (hard limit 1, queue_timeout 200ms): got statuses %v, want at least one 200 and one 503", statuses)
	}
}

// scrape returns the text exposition of e's /metrics.
func (f *fleet) scrape(t testing.TB, e *edge) string {
	t.Helper()
	resp, err := f.client.Get("http://" + e.admin + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics of %s: %v", e.name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics of %s: got %d, %v", e.name, resp.StatusCode, err)
	}
	return string(b)
}
