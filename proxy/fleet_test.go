package proxy

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/godwit/godwit/config"
)

// edgeConfig is the TOML of one edge of a test fleet: gossip and backhaul
// (protocol proto, or the default when "") on loopback with free ports,
// joining join (a gossip address, or ""), serving app web, and owning the
// given [[machine]] tables.
func edgeConfig(proto, name, region, join, extra string) string {
	joinLine, protoLine := "", ""
	if join != "" {
		joinLine = fmt.Sprintf("join = [%q]\n", join)
	}
	if proto != "" {
		protoLine = fmt.Sprintf("protocol = %q\n", proto)
	}
	return fmt.Sprintf(`
[node]
name   = %q
region = %q

[listen]
http  = "127.0.0.1:0"
admin = "127.0.0.1:0"

[log]
access = false

[gossip]
bind = "127.0.0.1:0"
%s
[backhaul]
listen = "127.0.0.1:0"
%s
[[app]]
name  = "web"
hosts = ["web.example.com"]
`, name, region, joinLine, protoLine) + extra
}

// ownedMachine is a [[machine]] table of app web.
func ownedMachine(id, region, addr string) string {
	return fmt.Sprintf("[[machine]]\nid = %q\napp = \"web\"\nregion = %q\naddress = %q\n", id, region, addr)
}

// startEdge starts one edge of a test fleet and waits until it has joined.
func startEdge(t testing.TB, name, region, join, extra string) *testProxy {
	t.Helper()
	return startEdgeProto(t, "", name, region, join, extra)
}

// startEdgeProto is startEdge with backhaul protocol proto.
func startEdgeProto(t testing.TB, proto, name, region, join, extra string) *testProxy {
	t.Helper()
	cfg, err := config.Parse([]byte(edgeConfig(proto, name, region, join, extra)), name+".toml")
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	p := startProxyConfig(t, cfg)
	eventually(t, 10*time.Second, name+" joined its fleet", func() bool { return p.srv.GossipAddr() != "" })
	return p
}

// routable waits until p routes to machine id of another edge.
func routable(t testing.TB, p *testProxy, id string) {
	t.Helper()
	eventually(t, 15*time.Second, "machine "+id+" known and reachable", func() bool {
		m := p.srv.Table().Machine(id)
		return m != nil && m.Remote() && m.Reachable()
	})
}

// headerEcho answers with the request's method, body hash and the headers
// an edge sets.
func headerEcho(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	fmt.Fprintf(w, "%s %d %x region=%s ip=%s id=%s xff=%s src=[%s]", r.Method, len(b), sha256.Sum256(b),
		r.Header.Get("Fly-Region"), r.Header.Get("Fly-Client-Ip"), r.Header.Get("Fly-Request-Id"),
		r.Header.Get("X-Forwarded-For"), r.Header.Get("Fly-Replay-Src"))
}

func TestFleetRouting(t *testing.T) {
	nrt := startMachine(t, "m-nrt", headerEcho, nil)
	iad := startMachine(t, "m-iad", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Fly-Replay", "region=nrt;state=s1")
	}, nil)
	b := startEdge(t, "edge-nrt", "nrt", "", ownedMachine("m-nrt", "nrt", nrt.addr))
	a := startEdge(t, "edge-iad", "iad", b.srv.GossipAddr(), "")
	routable(t, a, "m-nrt")
	c := newClient(t)

	t.Run("request through the owner", func(t *testing.T) {
		body := bytes.Repeat([]byte("fleet "), 200000) // 1.2 MB, streamed both hops
		req := newRequest(t, http.MethodPost, a.url("/x"), webHost, bytes.NewReader(body))
		req.Header.Set("X-Forwarded-For", "203.0.113.9")
		r := do(c, req)
		id := r.header.Get("Fly-Request-Id")
		want := fmt.Sprintf("POST %d %x region=iad ip=127.0.0.1 id=%s xff=203.0.113.9, 127.0.0.1 src=[]", len(body), sha256.Sum256(body), id)
		if r.status != 200 || r.body != want {
			t.Fatalf("via edge-iad to edge-nrt's machine:\ngot  %d %s\nwant 200 %s", r.status, r.body, want)
		}
		if !strings.HasSuffix(id, "-iad") || r.header.Get("X-Machine") != "m-nrt" {
			t.Errorf("response: Fly-Request-Id %q, X-Machine %q; want the accepting edge's id and the machine's header", id, r.header.Get("X-Machine"))
		}
		// Bodies framed every way: none, and chunked (unknown length).
		if r := a.get(t, c, webHost, "/"); r.status != 200 || !strings.HasPrefix(r.body, "GET 0 ") {
			t.Errorf("GET through the owner: got %d %q", r.status, r.body)
		}
		chunked := newRequest(t, http.MethodPost, a.url("/c"), webHost, io.MultiReader(strings.NewReader("chunk one "), strings.NewReader("chunk two")))
		chunked.ContentLength = -1
		if r := do(c, chunked); r.status != 200 || !strings.HasPrefix(r.body, "POST 19 ") {
			t.Errorf("chunked POST through the owner: got %d %q", r.status, r.body)
		}
	})

	t.Run("replay across the fleet", func(t *testing.T) {
		// edge-iad gets its own machine, which replays to nrt.
		a2 := startEdge(t, "edge-iad-2", "iad", b.srv.GossipAddr(), ownedMachine("m-iad", "iad", iad.addr))
		routable(t, a2, "m-nrt")
		r := do(c, newRequest(t, http.MethodPut, a2.url("/write"), webHost, strings.NewReader("payload")))
		if r.status != 200 || !strings.Contains(r.body, "region=iad") || !strings.Contains(r.body, "src=[instance=m-iad;region=iad;t=") || !strings.HasSuffix(r.body, ";state=s1]") {
			t.Errorf("replay from m-iad to region nrt: got %d %q, want the nrt machine with fly-replay-src naming m-iad in iad", r.status, r.body)
		}
		if n := iad.requests.Load(); n != 1 {
			t.Errorf("replaying machine saw %d requests, want 1", n)
		}
	})

	t.Run("owner leaves", func(t *testing.T) {
		if err := b.stop(t); err != nil {
			t.Fatalf("stop edge-nrt: %v", err)
		}
		eventually(t, 5*time.Second, "edge-nrt's machine unreachable at edge-iad", func() bool {
			m := a.srv.Table().Machine("m-nrt")
			return m == nil || !m.Reachable()
		})
		start := time.Now()
		wantProxyError(t, a.get(t, c, webHost, "/"), CodeNoMachine)
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("request after the owner left took %v, want a prompt error", d)
		}
	})

	t.Run("owner restarts", func(t *testing.T) {
		// A hold on the owner (as a backhaul that failed while it went
		// down puts one, for ownerHold) ends when it is back.
		a.srv.Table().MarkOwnerDown("edge-nrt", time.Hour)
		startEdge(t, "edge-nrt", "nrt", a.srv.GossipAddr(), ownedMachine("m-nrt", "nrt", nrt.addr))
		routable(t, a, "m-nrt")
		if r := a.get(t, c, webHost, "/"); r.status != 200 || !strings.HasPrefix(r.body, "GET 0 ") {
			t.Errorf("after edge-nrt rejoined: got %d %q (%s), want its machine's answer", r.status, r.body, r.header.Get(HeaderError))
		}
	})
}

// TestFleetOwnerRefuses: an owner enforces its machine's hard limit exactly
// and refuses a request that would pass it; the accepting edge then sends
// the request to the next candidate.
func TestFleetOwnerRefuses(t *testing.T) {
	g := newGate()
	defer g.open()
	cdg := startMachine(t, "m-cdg", func(w http.ResponseWriter, r *http.Request) { g.wait(r) }, nil)
	nrt := startMachine(t, "m-nrt", nil, nil)
	limits := "[app.http_service.concurrency]\ntype = \"requests\"\nsoft_limit = 1\nhard_limit = 1\n"
	b := startEdge(t, "edge-cdg", "cdg", "", limits+ownedMachine("m-cdg", "cdg", cdg.addr))
	startEdge(t, "edge-nrt", "nrt", b.srv.GossipAddr(), limits+ownedMachine("m-nrt", "nrt", nrt.addr))
	a := startEdge(t, "edge-iad", "iad", b.srv.GossipAddr(), limits)
	routable(t, a, "m-cdg")
	routable(t, a, "m-nrt")
	client := newClient(t)

	// Fill m-cdg's only slot from its own edge.
	held := make(chan result, 1)
	go func() { held <- b.get(t, client, webHost, "/hold") }()
	eventually(t, 10*time.Second, "m-cdg holding a request", func() bool { return cdg.inflight.Load() == 1 })

	// edge-iad prefers m-cdg (its own count on it is 0): the owner refuses.
	req := newRequest(t, http.MethodPost, a.url("/"), webHost, strings.NewReader("body kept for the resend"))
	req.Header.Set("Fly-Prefer-Instance-Id", "m-cdg")
	r := do(client, req)
	if r.status != 200 || r.body != "m-nrt" {
		t.Fatalf("with m-cdg at its hard limit: got %d %q, want 200 from m-nrt", r.status, r.body)
	}
	if n := cdg.peak.Load(); n != 1 {
		t.Errorf("m-cdg had %d requests at once, want its hard limit 1", n)
	}
	if !strings.Contains(a.metrics(t), `godwit_backhaul_refusals_total{app="web",reason="at_hard"} 1`) {
		t.Errorf("edge-iad's /metrics lacks the at_hard refusal")
	}
	g.open()
	<-held
}

// TestFleetConvergence: every edge of a fleet ends with the same view of
// every machine, and follows a change (a machine failing its checks).
func TestFleetConvergence(t *testing.T) {
	regions := []string{"iad", "cdg", "nrt", "syd", "gru"}
	var edges []*testProxy
	var machines []*machine
	for i, r := range regions {
		m := startMachine(t, "m-"+r, nil, nil)
		machines = append(machines, m)
		join := ""
		if i > 0 {
			join = edges[0].srv.GossipAddr()
		}
		checks := "[[app.http_service.checks]]\ninterval = \"100ms\"\ntimeout = \"1s\"\npath = \"" + checkPath + "\"\n"
		edges = append(edges, startEdge(t, "edge-"+r, r, join, checks+ownedMachine("m-"+r, r, m.addr)))
	}
	view := func(p *testProxy) string {
		var b strings.Builder
		for _, r := range regions {
			m := p.srv.Table().Machine("m-" + r)
			if m == nil {
				fmt.Fprintf(&b, "%s:missing ", r)
				continue
			}
			fmt.Fprintf(&b, "%s:%v/%v ", r, m.Healthy(), m.Reachable())
		}
		return b.String()
	}
	converged := func(want string) func() bool {
		return func() bool {
			for _, e := range edges {
				if view(e) != want {
					return false
				}
			}
			return true
		}
	}
	eventually(t, 20*time.Second, "every edge sees every machine healthy", converged("iad:true/true cdg:true/true nrt:true/true syd:true/true gru:true/true "))
	machines[2].healthy.Store(false) // m-nrt starts failing its checks
	eventually(t, 20*time.Second, "every edge sees m-nrt failing", converged("iad:true/true cdg:true/true nrt:false/true syd:true/true gru:true/true "))
}

// TestFleetSimulatedRTT: backhaul.simulated_rtt makes one machine behave
// like a fleet spread over the world: it orders regions (here against the
// map: nrt nearer to iad than cdg) and delays the backhaul.
func TestFleetSimulatedRTT(t *testing.T) {
	cdg := startMachine(t, "m-cdg", nil, nil)
	nrt := startMachine(t, "m-nrt", nil, nil)
	b := startEdge(t, "edge-cdg", "cdg", "", ownedMachine("m-cdg", "cdg", cdg.addr))
	startEdge(t, "edge-nrt", "nrt", b.srv.GossipAddr(), ownedMachine("m-nrt", "nrt", nrt.addr))
	a := startEdge(t, "edge-iad", "iad", b.srv.GossipAddr(), `
[backhaul.simulated_rtt]
"iad-cdg" = "60ms"
"iad-nrt" = "20ms"
`)
	routable(t, a, "m-cdg")
	routable(t, a, "m-nrt")
	eventually(t, 20*time.Second, "edge-iad ordering nrt before cdg by (simulated) RTT", func() bool {
		app := a.srv.Table().App("web")
		return app != nil && len(app.Regions()) == 2 && app.Regions()[0] == "nrt"
	})
	start := time.Now()
	r := a.get(t, newClient(t), webHost, "/")
	if r.status != 200 || r.body != "m-nrt" {
		t.Fatalf("got %d %q, want 200 from m-nrt, the nearest by simulated RTT", r.status, r.body)
	}
	if d := time.Since(start); d < 20*time.Millisecond {
		t.Errorf("request through the backhaul to nrt took %v, want at least the simulated 20ms", d)
	}
}
