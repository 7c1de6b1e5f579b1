//go:build linux

package main

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
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
	bin := buildGodwit(t)
	for _, proto := range []string{"mux", "h2", "quic"} {
		t.Run(proto, func(t *testing.T) { fleetKill(t, bin, proto) })
	}
}

func fleetKill(t *testing.T, bin, proto string) {
	machines := map[string]string{} // id → address
	for _, id := range []string{"m-cdg", "m-nrt"} {
		m := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			io.WriteString(w, id)
		}))
		defer m.Close()
		machines[id] = m.Listener.Addr().String()
	}

	subnet := loopbackSubnet(t)
	specs := []fleetEdge{
		{"edge-iad", "iad", subnet + "11", ""},
		{"edge-cdg", "cdg", subnet + "12", "m-cdg"},
		{"edge-nrt", "nrt", subnet + "13", "m-nrt"},
	}
	cfgs := writeFleetConfigs(t, fleetConfig{
		edges:            specs,
		machines:         machines,
		backhaulProtocol: proto,
		extra: `# Loopback RTTs are all alike; these make the regions as far apart as
# their names say (cdg nearer to iad than nrt), for the order and the
# backhaul's delay alike.
[backhaul.simulated_rtt]
cdg-iad = "4ms"
iad-nrt = "12ms"
cdg-nrt = "16ms"
`,
	})

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

	waitForEdges(t, 30*time.Second, "edge-iad's /v1/machines showing m-cdg and m-nrt reachable", func() bool {
		return reachable(iad, "m-cdg") && reachable(iad, "m-nrt")
	}, edges)
	// Until gossip has measured the RTT to a region, the static estimate
	// orders it, which may put nrt first for a moment.
	waitForEdges(t, 30*time.Second, "edge-iad's RTTs to cdg and nrt measured", func() bool {
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
	waitForEdges(t, 10*time.Second, lazy(func() string { return "edge-iad sending to m-cdg; its last answer: " + last }), answersFrom("m-cdg"), edges)
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
	waitForEdges(t, 30*time.Second, "edge-iad's /v1/members showing edge-cdg dead", func() bool {
		return memberState(iad, "edge-cdg") == "dead"
	}, edges)
	t.Logf("edge-cdg dead at edge-iad %v after the kill", time.Since(kill).Round(10*time.Millisecond))

	// A restart with the same name and config rejoins.
	restart := time.Now()
	edges["edge-cdg"] = startChildEdge(t, bin, "edge-cdg", cfgs["edge-cdg"])
	waitForEdges(t, 30*time.Second, "edge-cdg alive again and m-cdg reachable at edge-iad", func() bool {
		return memberState(iad, "edge-cdg") == "alive" && reachable(iad, "m-cdg")
	}, edges)
	t.Logf("edge-cdg rejoined: m-cdg reachable at edge-iad %v after the restart", time.Since(restart).Round(10*time.Millisecond))
	if body, status, err := get("Fly-Force-Instance-Id", "m-cdg"); err != nil || status != 200 || body != "m-cdg" {
		t.Errorf("request for m-cdg at edge-iad after edge-cdg's restart: got %d %q (err %v), want 200 from m-cdg\n%s", status, body, err, logsOf(edges))
	}
	// And the nearer region wins again (the hold on edge-cdg from the
	// failed backhaul is over by now, or ends with this success).
	waitForEdges(t, 10*time.Second, lazy(func() string { return "requests at edge-iad going to m-cdg again; its last answer: " + last }), answersFrom("m-cdg"), edges)
}

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

// lazy is a description computed when it is printed.
type lazy func() string

func (l lazy) String() string { return l() }
