package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/godwit/godwit/config"
)

// reloadBody is a test config with app "web" served by the given machines
// (id → address), each with driver none.
func reloadBody(softLimit int, machines ...[2]string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `
[[app]]
name  = "web"
hosts = [%q]
[app.http_service.concurrency]
type       = "requests"
soft_limit = %d
`, webHost, softLimit)
	for _, m := range machines {
		fmt.Fprintf(&b, `
[[machine]]
id      = %q
app     = "web"
address = %q
`, m[0], m[1])
	}
	return b.String()
}

// waitRunning waits until p's Run serves (its admin API answers): Reload
// refuses a node that is not running yet.
func waitRunning(t *testing.T, p *testProxy) {
	t.Helper()
	eventually(t, 10*time.Second, "the node running (admin /healthz answering)", func() bool {
		resp, err := adminClient.Get("http://" + p.adminAddr + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
}

func parseTestConfig(t *testing.T, body string) *config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte(proxyConfig(body)), t.Name()+".toml")
	if err != nil {
		t.Fatalf("config.Parse: %v", err)
	}
	return cfg
}

// TestReloadUnderLoad: while clients send requests without pause on
// kept-alive connections, the config is reloaded again and again: a
// machine is added, the limits change, the first machine is removed. No
// request fails, the clients' connections live on, and the traffic
// follows the machines of the config in force.
func TestReloadUnderLoad(t *testing.T) {
	m1 := startMachine(t, "m1", nil, nil)
	m2 := startMachine(t, "m2", nil, nil)
	p := startProxy(t, reloadBody(20, [2]string{"m1", m1.addr}))
	waitRunning(t, p)

	ctx, stop := context.WithCancel(context.Background())
	var sent, failed atomic.Int64
	var firstErr atomic.Value
	c := newClient(t)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for ctx.Err() == nil {
				r := p.get(t, c, webHost, "/")
				sent.Add(1)
				if r.err != nil || r.status != 200 {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("%d %q %v", r.status, r.body, r.err))
				}
			}
		})
	}
	waitSent := func(n int64) {
		t.Helper()
		target := sent.Load() + n
		eventually(t, 10*time.Second, fmt.Sprintf("%d more requests sent", n), func() bool { return sent.Load() >= target })
	}
	reload := func(body string) *ReloadReport {
		t.Helper()
		rep, err := p.srv.Reload(parseTestConfig(t, body))
		if err != nil {
			t.Fatalf("Reload: %v", err)
		}
		return rep
	}
	accepts := m1.accepts.Load() + m2.accepts.Load()

	waitSent(200)
	rep := reload(reloadBody(20, [2]string{"m1", m1.addr}, [2]string{"m2", m2.addr}))
	if len(rep.Added) != 1 || rep.Added[0] != "m2" {
		t.Errorf("report: added %v, want [m2]", rep.Added)
	}
	eventually(t, 10*time.Second, "m2 gets requests", func() bool { return m2.requests.Load() > 0 })
	for i := range 10 { // limits change back and forth
		reload(reloadBody(1+i%2*50, [2]string{"m1", m1.addr}, [2]string{"m2", m2.addr}))
		waitSent(20)
	}
	old := p.srv.table.Machine("m1")
	rep = reload(reloadBody(20, [2]string{"m2", m2.addr}))
	if len(rep.Removed) != 1 || rep.Removed[0] != "m1" {
		t.Errorf("report: removed %v, want [m1]", rep.Removed)
	}
	// Requests that picked m1 before the reload finish there.
	eventually(t, 5*time.Second, "requests picked for m1 before its removal answered", func() bool { return old.Inflight() == 0 })
	after := m1.requests.Load()
	waitSent(200)
	stop()
	wg.Wait()

	if n := failed.Load(); n > 0 {
		t.Errorf("%d of %d requests failed during the reloads; first: %v", n, sent.Load(), firstErr.Load())
	}
	if n := m1.requests.Load() - after; n > 0 {
		t.Errorf("m1 got %d requests after it was removed", n)
	}
	// The clients' 4 connections to the proxy were never dropped: the
	// transport would have dialed again. Upstream, m2's pool was new.
	if got := m1.accepts.Load() + m2.accepts.Load() - accepts; got > 16 {
		t.Errorf("machines accepted %d connections during the run; the pools were rebuilt", got)
	}
	t.Logf("%d requests, %d failed", sent.Load(), failed.Load())
}

// TestReloadKeepsIdleConnection: a client's idle keep-alive connection to
// the proxy survives a reload and serves the next request.
func TestReloadKeepsIdleConnection(t *testing.T) {
	m1 := startMachine(t, "m1", nil, nil)
	p := startProxy(t, reloadBody(20, [2]string{"m1", m1.addr}))
	conn, err := net.Dial("tcp", p.httpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	get := func() string {
		t.Helper()
		fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", webHost)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("on the kept-alive connection: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return fmt.Sprint(resp.StatusCode, " ", string(b))
	}
	if got := get(); got != "200 m1" {
		t.Fatalf("before the reload: %q", got)
	}
	m2 := startMachine(t, "m2", nil, nil)
	if _, err := p.srv.Reload(parseTestConfig(t, reloadBody(20, [2]string{"m2", m2.addr}))); err != nil {
		t.Fatal(err)
	}
	if got := get(); got != "200 m2" {
		t.Errorf("after the reload, same connection: %q, want 200 m2", got)
	}
}

// TestReloadRefused: POST /v1/reload with a config file that has an error
// answers 400 naming the line; the old config keeps serving. Fixed, the
// file is applied. A node without a config source says reload is not
// available.
func TestReloadRefused(t *testing.T) {
	m1 := startMachine(t, "m1", nil, nil)
	m2 := startMachine(t, "m2", nil, nil)
	p := startProxy(t, reloadBody(20, [2]string{"m1", m1.addr}))
	post := func() (int, string) {
		t.Helper()
		resp, err := adminClient.Post("http://"+p.adminAddr+"/v1/reload", "", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := post(); code != http.StatusBadRequest || !strings.Contains(body, "no config file") {
		t.Errorf("reload without a config source: %d %s, want 400 saying there is no config file", code, body)
	}

	path := filepath.Join(t.TempDir(), "godwit.toml")
	p.srv.SetConfigSource(func() (*config.Config, error) { return config.Load(path) })
	bad := proxyConfig(reloadBody(20, [2]string{"m2", m2.addr})) + "\n[proxy]\nconect_timeout = \"1s\"\n"
	line := strings.Count(bad, "\n") // the typo's line
	os.WriteFile(path, []byte(bad), 0o644)
	code, body := post()
	if code != http.StatusBadRequest || !strings.Contains(body, fmt.Sprintf(":%d", line)) || !strings.Contains(body, "conect_timeout") {
		t.Errorf("reload with a typo on line %d: %d %s, want 400 naming the key and its line", line, code, body)
	}
	c := newClient(t)
	if r := p.get(t, c, webHost, "/"); r.status != 200 || r.body != "m1" {
		t.Errorf("after the refused reload: %d %q, want m1 still serving", r.status, r.body)
	}

	os.WriteFile(path, []byte(proxyConfig(reloadBody(20, [2]string{"m2", m2.addr}))), 0o644)
	if code, body := post(); code != 200 || !strings.Contains(body, `"removed"`) {
		t.Fatalf("reload of the fixed file: %d %s, want 200 with the report", code, body)
	}
	if r := p.get(t, c, webHost, "/"); r.status != 200 || r.body != "m2" {
		t.Errorf("after the reload: %d %q, want m2", r.status, r.body)
	}
}

// TestReloadRestartOnly: a reload that changes a listener keeps it (it
// takes effect at a restart) and says so in the report.
func TestReloadRestartOnly(t *testing.T) {
	m1 := startMachine(t, "m1", nil, nil)
	p := startProxy(t, reloadBody(20, [2]string{"m1", m1.addr}))
	waitRunning(t, p)
	next := parseTestConfig(t, reloadBody(20, [2]string{"m1", m1.addr}))
	next.Listen.HTTP = "127.0.0.1:1"
	rep, err := p.srv.Reload(next)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(rep.Restart) != "[listen]" {
		t.Errorf("report: restart %v, want [listen]", rep.Restart)
	}
	if r := p.get(t, newClient(t), webHost, "/"); r.status != 200 {
		t.Errorf("after the reload: %d, want the old listener serving", r.status)
	}
}

// TestReloadRemovesRunningMachine: a machine godwit runs as a process,
// removed from the config while a request is in flight on it, is drained
// (the request is answered) and stopped; the machine added in its place
// is started and serves.
func TestReloadRemovesRunningMachine(t *testing.T) {
	bin := buildTestApp(t)
	addr1, addr2 := deadAddr(t), deadAddr(t)
	body := func(id, addr string) string {
		return fmt.Sprintf(`
[[app]]
name  = "web"
hosts = [%q]
[[machine]]
id      = %q
app     = "web"
address = %q
state   = "started"
[machine.driver]
kind    = "exec"
command = [%q]
`, webHost, id, addr, bin)
	}
	p := startProxy(t, body("m1", addr1))
	eventually(t, 10*time.Second, "m1 started at boot", func() bool { return p.machineStatus(t, "m1").State == "started" })
	c := newClient(t)
	held := make(chan result, 1)
	go func() { held <- p.get(t, c, webHost, "/hold") }()
	m := p.srv.table.Machine("m1")
	eventually(t, 5*time.Second, "a request in flight on m1", func() bool { return m.Inflight() == 1 })

	reloaded := make(chan error, 1)
	go func() {
		_, err := p.srv.Reload(parseTestConfig(t, body("m2", addr2)))
		reloaded <- err
	}()
	eventually(t, 5*time.Second, "m1 draining", func() bool { return m.State().String() == "stopping" })
	releaseHeld(t, addr1, 1)
	if r := <-held; r.status != 200 {
		t.Errorf("request in flight on the removed machine: %d %q, want its answer", r.status, r.body)
	}
	if err := <-reloaded; err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if conn, err := net.DialTimeout("tcp", addr1, time.Second); err == nil {
		conn.Close()
		t.Errorf("m1's process still listens after its removal")
	}
	if r := p.get(t, c, webHost, "/"); r.status != 200 || !strings.Contains(r.body, "m2") {
		t.Errorf("after the reload: %d %q, want m2's answer", r.status, r.body)
	}
}

// TestAdminToken: with admin.token_file, mutating admin calls need the
// bearer token; reads (metrics, machines) stay open for scrapers.
func TestAdminToken(t *testing.T) {
	m1 := startMachine(t, "m1", nil, nil)
	tokenFile := filepath.Join(t.TempDir(), "admin.token")
	os.WriteFile(tokenFile, []byte("s3cret\n"), 0o600)
	p := startProxy(t, fmt.Sprintf("[admin]\ntoken_file = %q\n", tokenFile)+reloadBody(20, [2]string{"m1", m1.addr}))
	call := func(method, path, token string) int {
		t.Helper()
		req, _ := http.NewRequest(method, "http://"+p.adminAddr+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := adminClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, tc := range []struct {
		method, path, token string
		want                int
	}{
		{"POST", "/v1/reload", "", http.StatusUnauthorized},
		{"POST", "/v1/reload", "wrong", http.StatusUnauthorized},
		{"POST", "/v1/apps/web/machines/m1/stop", "", http.StatusUnauthorized},
		{"GET", "/debug/pprof/", "", http.StatusUnauthorized},
		{"POST", "/v1/reload", "s3cret", http.StatusBadRequest}, // authorized; no config file to read
		{"GET", "/metrics", "", http.StatusOK},
		{"GET", "/v1/machines", "", http.StatusOK},
		{"GET", "/healthz", "", http.StatusOK},
	} {
		if got := call(tc.method, tc.path, tc.token); got != tc.want {
			t.Errorf("%s %s with token %q: %d, want %d", tc.method, tc.path, tc.token, got, tc.want)
		}
	}
}

// TestReloadCertificates: a reload that adds a certificate for a host
// serves it on the next handshake; one whose new certificate file is
// missing is refused, and the certificates in service stay.
func TestReloadCertificates(t *testing.T) {
	m1 := startMachine(t, "m1", nil, nil)
	dir := t.TempDir()
	def := writeCert(t, dir, "default", "default", time.Now().Add(time.Hour), "other.test")
	web := writeCert(t, dir, "web", "web", time.Now().Add(time.Hour), webHost)
	body := reloadBody(20, [2]string{"m1", m1.addr})
	p := startProxy(t, tlsTOML(&def, "0s")+body)
	waitRunning(t, p)
	if cn := servedCN(t, p.httpsAddr, webHost); cn != "default" {
		t.Fatalf("before the reload, %s got %q, want the default certificate", webHost, cn)
	}
	rep, err := p.srv.Reload(parseTestConfig(t, tlsTOML(&def, "0s", certEntry{files: web})+body))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Certificates != "replaced" {
		t.Errorf("report: certificates %q, want replaced", rep.Certificates)
	}
	if cn := servedCN(t, p.httpsAddr, webHost); cn != "web" {
		t.Errorf("after the reload, %s got %q, want its own certificate", webHost, cn)
	}
	missing := certFiles{filepath.Join(dir, "gone.pem"), filepath.Join(dir, "gone.key")}
	_, err = p.srv.Reload(parseTestConfig(t, tlsTOML(&def, "0s", certEntry{files: missing})+body))
	if err == nil || !strings.Contains(err.Error(), "gone.pem") {
		t.Errorf("reload naming a missing certificate: %v, want refused naming gone.pem", err)
	}
	if cn := servedCN(t, p.httpsAddr, webHost); cn != "web" {
		t.Errorf("after the refused reload, %s got %q, want the certificate in service (web)", webHost, cn)
	}
}
