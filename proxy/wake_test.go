package proxy

import (
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// buildTestApp builds autostart's test machine (it listens on $PORT after
// -listen-delay, answers its pid on GET /pid).
func buildTestApp(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "testapp")
	if out, err := exec.Command("go", "build", "-o", bin, "../autostart/internal/testapp").CombinedOutput(); err != nil {
		t.Fatalf("go build testapp: %v\n%s", err, out)
	}
	return bin
}

// releaseHeld waits until the test machine at addr holds n GET /hold
// requests, then releases them (POST /release lets go only of those
// already held).
func releaseHeld(t *testing.T, addr string, n int) {
	t.Helper()
	eventually(t, 10*time.Second, fmt.Sprintf("%d requests held at %s", n, addr), func() bool {
		resp, err := http.Get("http://" + addr + "/held")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.TrimSpace(string(b)) == fmt.Sprint(n)
	})
	resp, err := http.Post("http://"+addr+"/release", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
}

// wakeConfig is an app "web" with one stopped machine m1 that godwit runs
// as a process (the exec driver) with args.
func wakeConfig(addr, extraApp string, args ...string) string {
	return fmt.Sprintf(`
[autostart]
wake_timeout = "5s"

[[app]]
name  = "web"
hosts = [%q]
%s
[[machine]]
id      = "m1"
app     = "web"
address = %q
state   = "stopped"
[machine.driver]
kind    = "exec"
command = [%s]
`, webHost, extraApp, addr, quoteAll(args))
}

func quoteAll(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = fmt.Sprintf("%q", a)
	}
	return strings.Join(q, ", ")
}

// TestWakeOnDemand: 200 concurrent requests for an app whose only machine
// is stopped all get the machine's answer; it was started once (every
// answer names the same process), and the answers say they waited.
func TestWakeOnDemand(t *testing.T) {
	bin := buildTestApp(t)
	addr := deadAddr(t)
	p := startProxy(t, wakeConfig(addr, "", bin, "-listen-delay", "300ms"))
	if st := p.machineStatus(t, "m1"); st.State != "stopped" {
		t.Fatalf("before any request: m1 is %q, want stopped", st.State)
	}
	const n = 200
	c := newClient(t)
	var wg sync.WaitGroup
	results := make([]result, n)
	for i := range n {
		wg.Go(func() { results[i] = p.get(t, c, webHost, "/pid") })
	}
	wg.Wait()
	pids := map[string]int{}
	woke := 0
	for _, r := range results {
		if r.status != 200 {
			t.Fatalf("a request got %d %q, want the machine's answer", r.status, r.body)
		}
		pids[r.body]++
		if r.header.Get(hdrWoke) != "" && strings.Contains(r.header.Get("Server-Timing"), "wake;dur=") {
			woke++
		}
	}
	if len(pids) != 1 {
		t.Errorf("answers came from %d processes (%v), want one start", len(pids), pids)
	}
	if woke == 0 {
		t.Errorf("no answer says it waited for the wake (%s header, Server-Timing wake)", hdrWoke)
	}
	if st := p.machineStatus(t, "m1"); st.State != "started" {
		t.Errorf("after the wake: m1 is %q, want started", st.State)
	}
	// A request now does not wait.
	if r := p.get(t, c, webHost, "/pid"); r.status != 200 || r.header.Get(hdrWoke) != "" {
		t.Errorf("request to the started machine: %d, %s %q; want 200 without waiting", r.status, hdrWoke, r.header.Get(hdrWoke))
	}
}

// TestWakeBroken: a machine that never listens, or exits at once, fails
// the waiting requests with PM03/PM01 within the wake timeout, is marked
// failed, and the next request fails at once (backoff) instead of starting
// it again.
func TestWakeBroken(t *testing.T) {
	bin := buildTestApp(t)
	for _, tc := range []struct {
		name string
		args []string
		code Code
	}{
		{"never listens", []string{bin, "-listen-delay", "1h"}, CodeWakeTimeout},
		{"exits at once", []string{bin, "-listen-delay", "1h", "-exit-after", "1ms"}, CodeWakeFailed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := deadAddr(t)
			p := startProxy(t, strings.Replace(wakeConfig(addr, "", tc.args...), `wake_timeout = "5s"`, `wake_timeout = "700ms"`, 1))
			c := newClient(t)
			start := time.Now()
			wantProxyError(t, p.get(t, c, webHost, "/"), tc.code)
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("failed wake answered after %v, want within the wake timeout", d)
			}
			st := p.machineStatus(t, "m1")
			if st.State != "failed" || st.LastFailure == "" {
				t.Errorf("m1 after the failed wake: state %q, last failure %q; want failed with a reason", st.State, st.LastFailure)
			}
			start = time.Now()
			r := p.get(t, c, webHost, "/")
			if r.status != http.StatusServiceUnavailable || time.Since(start) > time.Second {
				t.Errorf("request during the backoff: %d after %v, want 503 at once", r.status, time.Since(start))
			}
		})
	}
}

// TestAdminMachineOps: POST start, stop and suspend through the admin API.
func TestAdminMachineOps(t *testing.T) {
	bin := buildTestApp(t)
	addr := deadAddr(t)
	p := startProxy(t, wakeConfig(addr, "", bin))
	post := func(op string) (int, string) {
		resp, err := http.Post("http://"+p.adminAddr+"/v1/apps/web/machines/m1/"+op, "", nil)
		if err != nil {
			t.Fatalf("POST %s: %v", op, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, step := range []struct{ op, state string }{{"start", "started"}, {"suspend", "suspended"}, {"start", "started"}, {"stop", "stopped"}} {
		if code, body := post(step.op); code != 200 || !strings.Contains(body, `"state": "`+step.state+`"`) {
			t.Fatalf("POST %s: %d %s, want 200 and state %s", step.op, code, body, step.state)
		}
	}
	if code, _ := post("reboot"); code != http.StatusNotFound {
		t.Errorf("POST reboot: %d, want 404", code)
	}
	resp, err := http.Post("http://"+p.adminAddr+"/v1/apps/other/machines/m1/start", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("start of m1 under the wrong app: %d, want 404", resp.StatusCode)
	}
}

// TestAutostop: an exec machine configured started is started at boot; with
// auto_stop_machines and no load, the autostop loop stops it (a lone
// machine with no load, Fly's rule); the next request wakes it again.
func TestAutostop(t *testing.T) {
	bin := buildTestApp(t)
	addr := deadAddr(t)
	cfg := wakeConfig(addr, "[app.http_service]\nauto_stop_machines = \"stop\"\n", bin)
	cfg = strings.Replace(cfg, `state   = "stopped"`, `state   = "started"`, 1)
	cfg = strings.Replace(cfg, `wake_timeout = "5s"`, "wake_timeout = \"5s\"\nstop_interval = \"200ms\"", 1)
	p := startProxy(t, cfg)
	eventually(t, 10*time.Second, "m1 started at boot", func() bool { return p.machineStatus(t, "m1").State == "started" })
	eventually(t, 10*time.Second, "m1 stopped by autostop", func() bool { return p.machineStatus(t, "m1").State == "stopped" })
	c := newClient(t)
	if r := p.get(t, c, webHost, "/pid"); r.status != 200 || r.header.Get(hdrWoke) == "" {
		t.Errorf("request after the autostop: %d %q (%s %q), want the machine's answer after a wake", r.status, r.body, hdrWoke, r.header.Get(hdrWoke))
	}
}

// TestWakeResume: requests for an app whose machine is suspended resume
// it: the same process answers (its memory kept), after a wake.
func TestWakeResume(t *testing.T) {
	bin := buildTestApp(t)
	addr := deadAddr(t)
	p := startProxy(t, strings.Replace(wakeConfig(addr, "", bin), `state   = "stopped"`, `state   = "started"`, 1))
	c := newClient(t)
	eventually(t, 10*time.Second, "m1 started at boot", func() bool { return p.machineStatus(t, "m1").State == "started" })
	before := p.get(t, c, webHost, "/pid")
	if before.status != 200 {
		t.Fatalf("before the suspend: %d %q", before.status, before.body)
	}
	resp, err := adminClient.Post("http://"+p.adminAddr+"/v1/apps/web/machines/m1/suspend", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if st := p.machineStatus(t, "m1").State; resp.StatusCode != 200 || st != "suspended" {
		t.Fatalf("admin suspend: %d, state %q; want 200 and suspended", resp.StatusCode, st)
	}
	var wg sync.WaitGroup
	results := make([]result, 20)
	for i := range results {
		wg.Go(func() { results[i] = p.get(t, c, webHost, "/pid") })
	}
	wg.Wait()
	woke := 0
	for _, r := range results {
		if r.status != 200 || r.body != before.body {
			t.Fatalf("request while suspended: %d %q, want 200 from the same process %q", r.status, r.body, before.body)
		}
		if r.header.Get(hdrWoke) != "" {
			woke++
		}
	}
	if woke == 0 {
		t.Errorf("no answer says it waited for the resume (%s)", hdrWoke)
	}
}

// TestMachineGoneDropsIdle: once a machine's process has ended (stopped
// through the admin API, or killed outside godwit), the proxy holds no
// idle connection to it: each would fail the first requests after the
// next start (the wake bench's 50 waiters each hit one and reconnected).
// A suspend keeps them: the process and its sockets live on.
func TestMachineGoneDropsIdle(t *testing.T) {
	bin := buildTestApp(t)
	addr := deadAddr(t)
	p := startProxy(t, wakeConfig(addr, "", bin))
	h := p.srv.handler
	idle := func() int {
		m := p.srv.table.Machine("m1")
		if u, ok := h.pools.Load(m); ok {
			return u.(*upstream).idleCount()
		}
		return 0
	}
	c := newClient(t)
	fill := func() string {
		t.Helper()
		var wg sync.WaitGroup
		results := make([]result, 8)
		for i := range results {
			wg.Go(func() { results[i] = p.get(t, c, webHost, "/pid") })
		}
		wg.Wait()
		for _, r := range results {
			if r.status != 200 {
				t.Fatalf("request: %d %q, want the machine's answer", r.status, r.body)
			}
		}
		eventually(t, 5*time.Second, "idle connections to m1 pooled", func() bool { return idle() > 0 })
		return results[0].body
	}
	admin := func(op, want string) {
		t.Helper()
		resp, err := adminClient.Post("http://"+p.adminAddr+"/v1/apps/web/machines/m1/"+op, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if st := p.machineStatus(t, "m1").State; resp.StatusCode != 200 || st != want {
			t.Fatalf("admin %s: %d, state %q; want 200 and %s", op, resp.StatusCode, st, want)
		}
	}

	fill()
	admin("suspend", "suspended")
	if n := idle(); n == 0 {
		t.Errorf("after a suspend: no idle connection kept, want them kept (the process lives)")
	}
	admin("start", "started")
	fill()
	admin("stop", "stopped")
	eventually(t, 5*time.Second, "no idle connection to the stopped m1", func() bool { return idle() == 0 })

	pid := fill() // woken by the requests
	n, err := strconv.Atoi(strings.TrimSpace(pid))
	if err != nil {
		t.Fatalf("GET /pid answered %q", pid)
	}
	if err := syscall.Kill(n, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "m1 stopped after its process was killed", func() bool { return p.machineStatus(t, "m1").State == "stopped" })
	eventually(t, 5*time.Second, "no idle connection to the killed m1", func() bool { return idle() == 0 })
}

// TestAutostartOnSoftLimit: with the only started machine at its soft
// limit (out of the below-soft band), a stopped machine of the app is started (Fly's rule), while the
// requests that pushed it over are served by the running one, without
// waiting for the start.
func TestAutostartOnSoftLimit(t *testing.T) {
	bin := buildTestApp(t)
	addr1, addr2 := deadAddr(t), deadAddr(t)
	p := startProxy(t, fmt.Sprintf(`
[[app]]
name  = "web"
hosts = [%q]
[app.http_service.concurrency]
type       = "requests"
soft_limit = 2
hard_limit = 10

[[machine]]
id      = "m1"
app     = "web"
address = %q
state   = "started"
[machine.driver]
kind    = "exec"
command = [%q]

[[machine]]
id      = "m2"
app     = "web"
address = %q
state   = "stopped"
[machine.driver]
kind    = "exec"
command = [%q]
`, webHost, addr1, bin, addr2, bin))
	eventually(t, 10*time.Second, "m1 started at boot", func() bool { return p.machineStatus(t, "m1").State == "started" })
	c := newClient(t)
	pid1 := p.get(t, c, webHost, "/pid")
	if pid1.status != 200 {
		t.Fatalf("GET /pid: %d %q", pid1.status, pid1.body)
	}
	if st := p.machineStatus(t, "m2").State; st != "stopped" {
		t.Fatalf("m2 with m1 under its soft limit: %q, want stopped", st)
	}

	// Two requests held in flight on m1: it is at its soft limit of 2.
	held := make(chan result, 2)
	for range 2 {
		go func() { held <- p.get(t, c, webHost, "/hold") }()
	}
	eventually(t, 10*time.Second, "m2 started with m1 at its soft limit", func() bool { return p.machineStatus(t, "m2").State == "started" })
	select {
	case r := <-held:
		t.Fatalf("a held request was answered (%d %q) before its release", r.status, r.body)
	default:
	}
	releaseHeld(t, addr1, 2)
	for range 2 {
		r := <-held
		if r.status != 200 || r.body != pid1.body || r.header.Get(hdrWoke) != "" {
			t.Errorf("held request: %d %q (%s %q), want 200 from m1 (%q) without a wake", r.status, r.body, hdrWoke, r.header.Get(hdrWoke), pid1.body)
		}
	}
}

// TestStopDrainsInFlight: a machine stopped through the admin API while
// requests are in flight is cordoned, and stops only once they have been
// answered: none is lost.
func TestStopDrainsInFlight(t *testing.T) {
	bin := buildTestApp(t)
	addr := deadAddr(t)
	p := startProxy(t, strings.Replace(wakeConfig(addr, "", bin), `state   = "stopped"`, `state   = "started"`, 1))
	eventually(t, 10*time.Second, "m1 started at boot", func() bool { return p.machineStatus(t, "m1").State == "started" })
	c := newClient(t)
	const n = 5
	held := make(chan result, n)
	for range n {
		go func() { held <- p.get(t, c, webHost, "/hold") }()
	}
	m := p.srv.table.Machine("m1")
	eventually(t, 5*time.Second, "5 requests in flight on m1", func() bool { return m.Inflight() == n })
	stopped := make(chan int, 1)
	go func() {
		resp, err := adminClient.Post("http://"+p.adminAddr+"/v1/apps/web/machines/m1/stop", "", nil)
		if err != nil {
			stopped <- 0
			return
		}
		resp.Body.Close()
		stopped <- resp.StatusCode
	}()
	eventually(t, 5*time.Second, "m1 stopping (cordoned, draining)", func() bool { return p.machineStatus(t, "m1").State == "stopping" })
	select {
	case code := <-stopped:
		t.Fatalf("stop returned %d with %d requests still in flight", code, n)
	default:
	}
	releaseHeld(t, addr, n)
	for range n {
		if r := <-held; r.status != 200 {
			t.Errorf("request in flight during the stop: %d %q, want the machine's answer", r.status, r.body)
		}
	}
	if code := <-stopped; code != 200 {
		t.Errorf("admin stop: %d, want 200", code)
	}
	if st := p.machineStatus(t, "m1").State; st != "stopped" {
		t.Errorf("after the drain: m1 is %q, want stopped", st)
	}
}
