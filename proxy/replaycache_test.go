package proxy

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

// cacheTarget answers with how its request came: the fly-replay-cache-status
// and fly-replay-src it got, and the body's length and hash.
func cacheTarget(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	fmt.Fprintf(w, "status=[%s] src=[%s] body=%d/%x", r.Header.Get("Fly-Replay-Cache-Status"),
		r.Header.Get("Fly-Replay-Src"), len(b), sha256.Sum256(b))
}

// cachingSource answers every request with fly-replay and the given extra
// response headers ("k: v" lines).
func cachingSource(replay string, extra ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Fly-Replay", replay)
		for _, kv := range extra {
			k, v, _ := strings.Cut(kv, ": ")
			w.Header().Add(k, v)
		}
		w.WriteHeader(http.StatusConflict)
	}
}

// cacheStatus sends GET path (with the given request headers) and returns
// the target's report of how the request came.
func cacheStatus(t *testing.T, p *testProxy, c *http.Client, path string, hdr ...string) string {
	t.Helper()
	req := newRequest(t, http.MethodGet, p.url(path), webHost, nil)
	for _, kv := range hdr {
		k, v, _ := strings.Cut(kv, ": ")
		req.Header.Add(k, v)
	}
	r := do(c, req)
	if r.status != 200 {
		t.Fatalf("GET %s: got %d %q, want 200 from the replay target", path, r.status, r.body)
	}
	return r.body[:strings.Index(r.body, " body=")]
}

func TestReplayCachePath(t *testing.T) {
	src := startMachine(t, "m1", cachingSource("region=syd", "Fly-Replay-Cache: /api/*", "Fly-Replay-Cache-Ttl-Secs: 60"), nil)
	dst := startMachine(t, "m2", cacheTarget, nil)
	p := startProxy(t, oneApp("", []string{src.addr, dst.addr}, "iad", "syd"))
	c := newClient(t)

	if got := cacheStatus(t, p, c, "/api/users?page=1"); !strings.HasPrefix(got, "status=[miss] src=[instance=m1;region=iad;t=") {
		t.Errorf("first request: target got %s, want status miss with fly-replay-src", got)
	}
	for _, path := range []string{"/api/users", "/api", "/api/other/deep?x=1"} {
		if got := cacheStatus(t, p, c, path); got != "status=[hit] src=[]" {
			t.Errorf("GET %s: target got %s, want a cache hit without fly-replay-src", path, got)
		}
	}
	if n := src.requests.Load(); n != 1 {
		t.Errorf("source machine saw %d requests, want 1: hits skip it", n)
	}

	// A hit carries its body whole, with nothing buffered up front.
	body := bytes.Repeat([]byte("p"), 300<<10)
	r := do(c, newRequest(t, http.MethodPost, p.url("/api/upload"), webHost, bytes.NewReader(body)))
	if want := fmt.Sprintf("status=[hit] src=[] body=%d/%x", len(body), sha256.Sum256(body)); r.body != want {
		t.Errorf("POST on a hit: target got %q, want %q", r.body, want)
	}

	// Other paths and hosts are not covered by the pattern.
	if got := cacheStatus(t, p, c, "/apis"); got == "status=[hit] src=[]" {
		t.Errorf("GET /apis: a hit, want /api/* not to cover it")
	}
	if n := src.requests.Load(); n != 2 {
		t.Errorf("source machine saw %d requests, want 2", n)
	}
	m := p.metrics(t)
	for _, want := range []string{
		`godwit_replay_cache_requests_total{app="web",status="hit"} 4`,
		`godwit_replay_cache_requests_total{app="web",status="miss"} 2`,
		`godwit_replay_cache_stores_total{app="web",kind="path"} 1`,
		"godwit_replay_cache_entries 1",
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func TestReplayCacheBypass(t *testing.T) {
	for _, allow := range []bool{true, false} {
		t.Run(fmt.Sprintf("allow_bypass=%v", allow), func(t *testing.T) {
			extra := []string{"Fly-Replay-Cache: /", "Fly-Replay-Cache-Ttl-Secs: 10"}
			if allow {
				extra = append(extra, "Fly-Replay-Cache-Allow-Bypass: yes")
			}
			src := startMachine(t, "m1", cachingSource("region=syd", extra...), nil)
			dst := startMachine(t, "m2", cacheTarget, nil)
			p := startProxy(t, oneApp("", []string{src.addr, dst.addr}, "iad", "syd"))
			c := newClient(t)
			cacheStatus(t, p, c, "/")
			got := cacheStatus(t, p, c, "/", "Fly-Replay-Cache-Control: skip", "Fly-Replay-Cache-Status: hit")
			want, wantSrc := "status=[hit] src=[]", int64(1)
			if allow {
				want, wantSrc = "status=[bypass]", 2
			}
			if !strings.HasPrefix(got, want) {
				t.Errorf("client skipping the cache: target got %s, want %s…", got, want)
			}
			if n := src.requests.Load(); n != wantSrc {
				t.Errorf("source machine saw %d requests, want %d", n, wantSrc)
			}
		})
	}
}

func TestReplayCacheInvalidate(t *testing.T) {
	// The source sends writes to syd and caches that; the target sends a
	// logout back to the origin and drops the cached replay.
	src := startMachine(t, "m1", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Fly-Replay-Src") != "" {
			fmt.Fprintf(w, "origin status=[%s] src=[%s] body=", r.Header.Get("Fly-Replay-Cache-Status"), r.Header.Get("Fly-Replay-Src"))
			return
		}
		cachingSource("region=syd", "Fly-Replay-Cache: /", "Fly-Replay-Cache-Ttl-Secs: 60")(w, r)
	}, nil)
	dst := startMachine(t, "m2", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/logout" {
			w.Header().Set("Fly-Replay", "instance=m1")
			w.Header().Set("Fly-Replay-Cache", "invalidate")
			return
		}
		cacheTarget(w, r)
	}, nil)
	p := startProxy(t, oneApp("", []string{src.addr, dst.addr}, "iad", "syd"))
	c := newClient(t)
	cacheStatus(t, p, c, "/a")
	if got := cacheStatus(t, p, c, "/b"); got != "status=[hit] src=[]" {
		t.Fatalf("second request: target got %s, want a hit", got)
	}
	if got := cacheStatus(t, p, c, "/logout"); !strings.HasPrefix(got, "origin status=[hit] src=[instance=m2;region=syd;") {
		t.Errorf("logout: got %s, want it replayed back to the origin by the target", got)
	}
	if got := cacheStatus(t, p, c, "/c"); !strings.HasPrefix(got, "status=[miss]") {
		t.Errorf("after invalidation: target got %s, want a miss (the source asked again)", got)
	}
	if !strings.Contains(p.metrics(t), `godwit_replay_cache_invalidations_total{app="web"} 1`) {
		t.Errorf("/metrics lacks one invalidation")
	}
}

func TestReplayCacheSession(t *testing.T) {
	// Each user's machine is named by the source app; the session rule
	// remembers it per cookie.
	src := startMachine(t, "m1", func(w http.ResponseWriter, r *http.Request) {
		user := "m2"
		if c, err := r.Cookie("session_id"); err == nil && c.Value == "bob" {
			user = "m3"
		}
		w.Header().Set("Fly-Replay", "instance="+user)
	}, nil)
	m2 := startMachine(t, "m2", cacheTarget, nil)
	m3 := startMachine(t, "m3", cacheTarget, nil)
	p := startProxy(t, oneApp(`
[[app.http_service.http_options.replay_cache]]
path_prefix = "/app"
ttl_seconds = 300
type        = "cookie"
name        = "session_id"
`, []string{src.addr, m2.addr, m3.addr}, "iad", "syd", "syd"))
	c := newClient(t)
	for round := range 3 {
		for _, user := range []string{"alice", "bob"} {
			got := cacheStatus(t, p, c, "/app/home", "Cookie: theme=dark; session_id="+user)
			want := "status=[hit]"
			if round == 0 {
				want = "status=[miss]"
			}
			if !strings.HasPrefix(got, want) {
				t.Errorf("round %d, %s: target got %s, want %s", round, user, got, want)
			}
		}
	}
	if n := src.requests.Load(); n != 2 {
		t.Errorf("source machine saw %d requests, want 2 (one per session)", n)
	}
	if a, b := m2.requests.Load(), m3.requests.Load(); a != 3 || b != 3 {
		t.Errorf("alice's machine saw %d, bob's %d; want 3 each", a, b)
	}
	// No session, or a path outside the rule: the source decides each time.
	cacheStatus(t, p, c, "/app/home")
	cacheStatus(t, p, c, "/app/home")
	cacheStatus(t, p, c, "/other", "Cookie: session_id=alice")
	if n := src.requests.Load(); n != 5 {
		t.Errorf("source machine saw %d requests, want 5", n)
	}
}

func TestReplayCacheRefusals(t *testing.T) {
	t.Run("malformed ttl", func(t *testing.T) {
		src := startMachine(t, "m1", cachingSource("region=syd", "Fly-Replay-Cache: /", "Fly-Replay-Cache-Ttl-Secs: 5"), nil)
		dst := startMachine(t, "m2", cacheTarget, nil)
		p := startProxy(t, oneApp("", []string{src.addr, dst.addr}, "iad", "syd"))
		wantProxyError(t, p.get(t, newClient(t), webHost, "/"), CodeReplayInvalid)
	})
	for name, extra := range map[string][]string{
		"state":             {"Fly-Replay-Cache: /", "Fly-Replay-Cache-Ttl-Secs: 60"},
		"pattern elsewhere": {"Fly-Replay-Cache: /elsewhere/*", "Fly-Replay-Cache-Ttl-Secs: 60"},
	} {
		t.Run("not cached: "+name, func(t *testing.T) {
			replay := "region=syd"
			if name == "state" {
				replay += ";state=s"
			}
			src := startMachine(t, "m1", cachingSource(replay, extra...), nil)
			dst := startMachine(t, "m2", cacheTarget, nil)
			p := startProxy(t, oneApp("", []string{src.addr, dst.addr}, "iad", "syd"))
			c := newClient(t)
			for range 3 {
				cacheStatus(t, p, c, "/")
			}
			if n := src.requests.Load(); n != 3 {
				t.Errorf("source machine saw %d of 3 requests, want all: the replay is not cacheable", n)
			}
		})
	}
	t.Run("cache off", func(t *testing.T) {
		src := startMachine(t, "m1", cachingSource("region=syd", "Fly-Replay-Cache: /", "Fly-Replay-Cache-Ttl-Secs: 60"), nil)
		dst := startMachine(t, "m2", cacheTarget, nil)
		p := startProxy(t, oneApp("", []string{src.addr, dst.addr}, "iad", "syd")+"[proxy]\nreplay_cache_entries = 0\n")
		c := newClient(t)
		for range 3 {
			if got := cacheStatus(t, p, c, "/"); got == "status=[hit] src=[]" {
				t.Errorf("replay_cache_entries = 0: got a hit, want none")
			}
		}
	})
}

func TestReplayCacheJSONAndDeleteHeader(t *testing.T) {
	src := startMachine(t, "m1", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/json" {
			w.Header().Set("Content-Type", "application/vnd.fly.replay+json")
			io.WriteString(w, `{"region":"syd","cache":{"prefix":"/json","ttl":30}}`)
			return
		}
		cachingSource("region=syd", "Fly-Replay-Delete-Header: cookie, X-Secret", "Fly-Replay-Delete-Header: X-Other")(w, r)
	}, nil)
	dst := startMachine(t, "m2", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "status=[%s] cookie=%q secret=%q other=%q kept=%q body=", r.Header.Get("Fly-Replay-Cache-Status"),
			r.Header.Get("Cookie"), r.Header.Get("X-Secret"), r.Header.Get("X-Other"), r.Header.Get("X-Kept"))
	}, nil)
	p := startProxy(t, oneApp("", []string{src.addr, dst.addr}, "iad", "syd"))
	c := newClient(t)
	cacheStatus(t, p, c, "/json")
	if got := cacheStatus(t, p, c, "/json/2"); !strings.HasPrefix(got, "status=[hit]") {
		t.Errorf("JSON cache.prefix: second request got %s, want a hit", got)
	}
	got := cacheStatus(t, p, c, "/del", "Cookie: a=b", "X-Secret: s", "X-Other: o", "X-Kept: k")
	if want := `status=[miss] cookie="" secret="" other="" kept="k"`; got != want {
		t.Errorf("fly-replay-delete-header: target got %s, want %s", got, want)
	}
}
