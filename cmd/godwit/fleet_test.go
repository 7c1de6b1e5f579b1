//go:build linux

package main

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestFleetKill runs a fleet of three edges as child processes on loopback
// and SIGKILLs one: edge-iad accepts requests and owns nothing, edge-cdg
// owns m-cdg, edge-nrt owns m-nrt. edge-iad sends to m-cdg (cdg is nearer
// to iad than nrt). Once edge-cdg is killed, requests at edge-iad must go
// on, answered by m-nrt within 2 s, none hanging; gossip must declare
// edge-cdg dead within 30 s; and edge-cdg restarted with the same config
// rejoins and its machine is routable again. Once per backhaul protocol.
func TestFleetKill(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs a fleet of child processes")
	}
	bin := filepath.Join(t.TempDir(), "godwit")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, proto := range []string{"mux", "h2", "quic"} {
		t.Run(proto, func(t *testing.T) { fleetKill(t, bin, proto) })
	}
}

func fleetKill(t *testing.T, bin, proto string) {
	machines := map[string]*httptest.Server{}
	for _, id := range []string{"m-cdg", "m-nrt"} {
		m := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			io.WriteString(w, id)
		}))
		defer m.Close()
		machines[id] = m
	}

	// Each edge gets an address of its own in a random 127.x.y.0/24, so
	// that gossip and the backhaul can use fixed ports (a restarted edge
	// comes back at the same address, as in production) without meeting
	// another run of this test or anything else on the machine.
	subnet := fmt.Sprintf("127.%d.%d.", 1+randN(t, 254), 1+randN(t, 254))
	type spec struct{ name, region, ip, machine string }
	specs := []spec{
		{"edge-iad", "iad", subnet + "11", ""},
		{"edge-cdg", "cdg", subnet + "12", "m-cdg"},
		{"edge-nrt", "nrt", subnet + "13", "m-nrt"},
	}
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "gossip.key")
	key := make([]byte, 32)
	rand.Read(key)
	if err := os.WriteFile(keyFile, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgs := map[string]string{}
	for _, s := range specs {
		var join []string
		for _, o := range specs {
			if o.name != s.name {
				join = append(join, fmt.Sprintf("%q", o.ip+":7946"))
			}
		}
		cfg := fmt.Sprintf(`
[node]
name   = %q
region = %q

[listen]
http  = "%[3]s:0"
admin = "%[3]s:0"

[log]
format = "json"
access = false

[gossip]
bind = "%[3]s:7946"
join = [%[4]s]
secret_key_file = %[5]q

[backhaul]
listen = "%[3]s:4433"
protocol = %[6]q

# Loopback RTTs are all alike; these make the regions as far apart as
# their names say (cdg nearer to iad than nrt), for the order and the
# backhaul's delay alike.
[backhaul.simulated_rtt]
cdg-iad = "4ms"
iad-nrt = "12ms"
cdg-nrt = "16ms"

[[app]]
name  = "web"
hosts = ["web.test"]
`, s.name, s.region, s.ip, strings.Join(join, ", "), keyFile, proto)
		if s.machine != "" {
			cfg += fmt.Sprintf("\n[[machine]]\nid = %q\napp = \"web\"\naddress = %q\n", s.machine, machines[s.machine].Listener.Addr().String())
		}
		cfgs[s.name] = filepath.Join(dir, s.name+".toml")
		if err := os.WriteFile(cfgs[s.name], []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	edges := map[string]*childEdge{}
	for _, s := range specs {
		edges[s.name] = startChildEdge(t, bin, s.name, cfgs[s.name])
	}
	iad := edges["edge-iad"]
	client := &http.Client{Timeout: 5 * time.Second}
	get := func(header, value string) (string, int, error) {
		req, _ := http.NewRequest("GET", "http://"+iad.http+"/", nil)
		req.Host = "web.test"
		if header != "" {
			req.Header.Set(header, value)
		}
		resp, err := client.Do(req)
		if err != nil {
			return "", 0, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return strings.TrimSpace(string(b)), resp.StatusCode, err
	}
	reachable := func(e *childEdge, id string) bool {
		var ms []struct {
			ID        string `json:"id"`
			Owner     string `json:"owner"`
			Reachable bool   `json:"reachable"`
		}
		if adminJSON(e, "/v1/machines", &ms) != nil {
			return false
		}
		for _, m := range ms {
			if m.ID == id {
				return m.Reachable && m.Owner != ""
			}
		}
		return false
	}
	memberState := func(e *childEdge, name string) string {
		var ms []struct{ Name, State string }
		if adminJSON(e, "/v1/members", &ms) != nil {
			return "?"
		}
		for _, m := range ms {
			if m.Name == name {
				return m.State
			}
		}
		return "absent"
	}

	waitFor(t, 30*time.Second, "edge-iad's /v1/machines showing m-cdg and m-nrt reachable", func() bool {
		return reachable(iad, "m-cdg") && reachable(iad, "m-nrt")
	}, edges)
	// Until gossip has measured the RTT to a region, the static estimate
	// orders it, which may put nrt first for a moment.
	waitFor(t, 30*time.Second, "edge-iad's RTTs to cdg and nrt measured", func() bool {
		return measured(iad, "cdg") && measured(iad, "nrt")
	}, edges)
	// The routing table takes the estimates on the fleet's next tick
	// (100 ms).
	var last string // edge-iad's last answer, for failure messages
	answersFrom := func(id string) func() bool {
		return func() bool {
			body, status, err := get("", "")
			last = fmt.Sprintf("%d %q (err %v)", status, body, err)
			return err == nil && status == 200 && body == id
		}
	}
	settled := time.Now()
	waitFor(t, 10*time.Second, lazy(func() string { return "edge-iad sending to m-cdg; its last answer: " + last }), answersFrom("m-cdg"), edges)
	t.Logf("edge-iad sent to m-cdg %v after its RTT estimates were there", time.Since(settled).Round(time.Millisecond))
	for i := 0; i < 10; i++ {
		body, status, err := get("", "")
		if err != nil || status != 200 || body != "m-cdg" {
			t.Fatalf("request %d at edge-iad before the kill: got %d %q (err %v), want 200 from m-cdg, the nearer region; edge-iad's estimates:\n%s\n%s", i, status, body, err, rtts(iad), logsOf(edges))
		}
	}

	// SIGKILL edge-cdg while requests arrive at edge-iad every 20 ms, each
	// on its own goroutine so that one hanging request delays no other.
	type result struct {
		sent, took time.Duration // sent: since the kill (negative before)
		status     int
		body       string
		err        error
	}
	var (
		mu      sync.Mutex
		results []result
		wg      sync.WaitGroup
	)
	start := time.Now() // sent is since start until the kill is known
	send := func(at time.Time) {
		defer wg.Done()
		body, status, err := get("", "")
		took := time.Since(at)
		mu.Lock()
		results = append(results, result{sent: at.Sub(start), took: took, status: status, body: body, err: err})
		mu.Unlock()
	}
	const (
		before    = 200 * time.Millisecond // requests in flight at the kill too
		after     = 3 * time.Second
		rerouteBy = 2 * time.Second
	)
	kill := start.Add(before)
	tick := time.NewTicker(20 * time.Millisecond)
	killed := false
	for now := range tick.C {
		if !killed && !now.Before(kill) {
			kill = time.Now()
			edges["edge-cdg"].kill(t)
			killed = true
		}
		if now.Sub(kill) > after {
			break
		}
		wg.Add(1)
		go send(now)
	}
	tick.Stop()
	wg.Wait()
	for i := range results {
		results[i].sent -= kill.Sub(start)
	}
	sort.Slice(results, func(i, j int) bool { return results[i].sent < results[j].sent })

	firstNRT := time.Duration(-1)
	var failed []string
	var slowest time.Duration
	for _, r := range results {
		slowest = max(slowest, r.took)
		if r.err != nil || r.status != 200 {
			failed = append(failed, fmt.Sprintf("sent %+v: %d %q err=%v after %v", r.sent.Round(time.Millisecond), r.status, r.body, r.err, r.took.Round(time.Millisecond)))
			continue
		}
		if r.body == "m-nrt" {
			if done := r.sent + r.took; firstNRT < 0 || done < firstNRT {
				firstNRT = done
			}
		}
	}
	t.Logf("%d requests from %v before to %v after the kill; slowest %v; first answer from m-nrt %v after the kill; %d failed",
		len(results), before, after, slowest.Round(time.Millisecond), firstNRT.Round(time.Millisecond), len(failed))
	if len(failed) > 0 {
		// Requests on a dead QUIC connection fail once its idle timeout
		// passes: allowed until the reroute, as long as none hangs.
		t.Logf("  first failed: %s", failed[0])
		t.Logf("  last failed:  %s", failed[len(failed)-1])
	}
	for _, r := range results {
		if r.took >= client.Timeout || (r.err != nil && strings.Contains(r.err.Error(), "Timeout")) {
			t.Errorf("a request sent %v after the kill hung: %v, err %v (bound %v)", r.sent.Round(time.Millisecond), r.took.Round(time.Millisecond), r.err, client.Timeout)
		}
	}
	switch {
	case firstNRT < 0:
		t.Errorf("no request was answered by m-nrt within %v of the kill", after)
	case firstNRT > rerouteBy:
		t.Errorf("first answer from m-nrt %v after the kill, want within %v", firstNRT.Round(time.Millisecond), rerouteBy)
	}
	for _, r := range results {
		if r.sent >= rerouteBy && (r.err != nil || r.status != 200 || r.body != "m-nrt") {
			t.Errorf("request sent %v after the kill: %d %q (err %v), want 200 from m-nrt", r.sent.Round(time.Millisecond), r.status, r.body, r.err)
		}
	}

	// Gossip's failure detector is slower (memberlist: ~10 s).
	waitFor(t, 30*time.Second, "edge-iad's /v1/members showing edge-cdg dead", func() bool {
		return memberState(iad, "edge-cdg") == "dead"
	}, edges)
	t.Logf("edge-cdg dead at edge-iad %v after the kill", time.Since(kill).Round(10*time.Millisecond))

	// A restart with the same name and config rejoins.
	restart := time.Now()
	edges["edge-cdg"] = startChildEdge(t, bin, "edge-cdg", cfgs["edge-cdg"])
	waitFor(t, 30*time.Second, "edge-cdg alive again and m-cdg reachable at edge-iad", func() bool {
		return memberState(iad, "edge-cdg") == "alive" && reachable(iad, "m-cdg")
	}, edges)
	t.Logf("edge-cdg rejoined: m-cdg reachable at edge-iad %v after the restart", time.Since(restart).Round(10*time.Millisecond))
	if body, status, err := get("Fly-Force-Instance-Id", "m-cdg"); err != nil || status != 200 || body != "m-cdg" {
		t.Errorf("request for m-cdg at edge-iad after edge-cdg's restart: got %d %q (err %v), want 200 from m-cdg\n%s", status, body, err, logsOf(edges))
	}
	// And the nearer region wins again (the hold on edge-cdg from the
	// failed backhaul is over by now, or ends with this success).
	waitFor(t, 10*time.Second, lazy(func() string { return "requests at edge-iad going to m-cdg again; its last answer: " + last }), answersFrom("m-cdg"), edges)
}

// childEdge is `godwit run` as a child process. Its JSON log is kept for
// failure messages; the bound addresses are read from it.
type childEdge struct {
	name        string
	cmd         *exec.Cmd
	log         *syncBuffer
	done        chan struct{} // closed once the process exited
	http, admin string
	gossip      string
	backhaul    string
}

// startChildEdge starts `bin run --config cfg` and waits until the edge
// serves and has joined its fleet (its "godwit edge running" and "fleet
// joined" log lines). The process is killed when the test ends.
func startChildEdge(t *testing.T, bin, name, cfg string) *childEdge {
	t.Helper()
	e := &childEdge{name: name, log: &syncBuffer{}, done: make(chan struct{})}
	e.cmd = exec.Command(bin, "run", "--config", cfg)
	// Killed with the test process too, should it die first.
	e.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := e.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	e.cmd.Stdout = e.log
	if err := e.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.cmd.Process.Kill()
		<-e.done
	})
	type addrs struct{ http, admin, gossip, backhaul string }
	running, joined := make(chan addrs, 1), make(chan addrs, 1)
	go func() {
		defer close(e.done)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			e.log.Write(append(sc.Bytes(), '\n'))
			var rec map[string]any
			if json.Unmarshal(sc.Bytes(), &rec) != nil {
				continue
			}
			switch rec["msg"] {
			case "godwit edge running":
				running <- addrs{http: fmt.Sprint(rec["http"]), admin: fmt.Sprint(rec["admin"])}
			case "fleet joined":
				joined <- addrs{gossip: fmt.Sprint(rec["gossip"]), backhaul: fmt.Sprint(rec["backhaul"])}
			}
		}
		io.Copy(io.Discard, stderr)
		e.cmd.Wait()
	}()
	timeout := time.After(30 * time.Second)
	for e.http == "" || e.gossip == "" {
		select {
		case a := <-running:
			e.http, e.admin = a.http, a.admin
		case a := <-joined:
			e.gossip, e.backhaul = a.gossip, a.backhaul
		case <-e.done:
			t.Fatalf("%s exited before it was up:\n%s", name, e.log)
		case <-timeout:
			t.Fatalf("%s: no \"godwit edge running\" and \"fleet joined\" log lines within 30s:\n%s", name, e.log)
		}
	}
	return e
}

// kill SIGKILLs the edge and waits until it is gone.
func (e *childEdge) kill(t *testing.T) {
	t.Helper()
	if err := e.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("kill %s: %v", e.name, err)
	}
	<-e.done
}

var adminClient = &http.Client{Timeout: 2 * time.Second}

// rtts returns e's godwit_backhaul_rtt_seconds lines.
func rtts(e *childEdge) string {
	resp, err := adminClient.Get("http://" + e.admin + "/metrics")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "godwit_backhaul_rtt_seconds{") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// measured reports whether e has a measured RTT to region (its
// godwit_backhaul_rtt_seconds series).
func measured(e *childEdge, region string) bool {
	resp, err := adminClient.Get("http://" + e.admin + "/metrics")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return strings.Contains(string(b), `godwit_backhaul_rtt_seconds{region="`+region+`"}`)
}

// adminJSON decodes GET path of e's admin API into v.
func adminJSON(e *childEdge, path string, v any) error {
	resp, err := adminClient.Get("http://" + e.admin + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("%s: %s", path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// waitFor polls cond every 50 ms until it holds, failing the test with the
// edges' logs after timeout.
func waitFor(t *testing.T, timeout time.Duration, what any, cond func() bool, edges map[string]*childEdge) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %v\n%s", timeout, what, logsOf(edges))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// lazy is a description computed when it is printed.
type lazy func() string

func (l lazy) String() string { return l() }

// logsOf returns the last lines of each edge's log.
func logsOf(edges map[string]*childEdge) string {
	var names []string
	for n := range edges {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		lines := strings.Split(strings.TrimSpace(edges[n].log.String()), "\n")
		if len(lines) > 40 {
			lines = lines[len(lines)-40:]
		}
		fmt.Fprintf(&b, "--- %s (last %d log lines)\n%s\n", n, len(lines), strings.Join(lines, "\n"))
	}
	return b.String()
}

func randN(t *testing.T, n int64) int {
	v, err := rand.Int(rand.Reader, big.NewInt(n))
	if err != nil {
		t.Fatal(err)
	}
	return int(v.Int64())
}
