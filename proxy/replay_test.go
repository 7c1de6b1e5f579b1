package proxy

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/websocket"
)

// echoMachine answers with what it received: method, body hash and length,
// fly-replay-src and one client header.
func echoMachine(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	fmt.Fprintf(w, "%s %d %x src=[%s] x=[%s]", r.Method, len(b), sha256.Sum256(b), r.Header.Get("Fly-Replay-Src"), r.Header.Get("X-Client"))
}

// replayer answers every request with the given fly-replay header, after
// reading readBody bytes of the body (-1: all of it).
func replayer(header string, readBody int) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if readBody < 0 {
			io.Copy(io.Discard, r.Body)
		} else {
			io.CopyN(io.Discard, r.Body, int64(readBody))
		}
		w.Header().Set("Fly-Replay", header)
		w.WriteHeader(http.StatusConflict)
		io.WriteString(w, "<html>Replaying request</html>")
	}
}

func TestReplay(t *testing.T) {
	body := bytes.Repeat([]byte("godwit "), 20000) // 140 KB
	wantEcho := func(method string, b []byte) string {
		return fmt.Sprintf("%s %d %x", method, len(b), sha256.Sum256(b))
	}
	srcRe := regexp.MustCompile(`^instance=m1;region=iad;t=\d{16}(?:;state=(.*))?$`)

	tests := []struct {
		name       string
		first      http.HandlerFunc // machine m1 (iad, nearest)
		body       []byte
		wantServer string // X-Machine of the final answer
		wantState  string
	}{
		{name: "region, whole body read first", first: replayer("region=syd;state=abc", -1), body: body, wantServer: "m3", wantState: "abc"},
		{name: "region, body not read first", first: replayer("region=syd", 0), body: body, wantServer: "m3"},
		{name: "region, body half read first", first: replayer("region=syd", len(body)/2), body: body, wantServer: "m3"},
		{name: "quoted region list with alias", first: replayer(`region="ord,eu";state="x=y;z"`, -1), body: body, wantServer: "m2", wantState: "x=y;z"},
		{name: "instance", first: replayer("instance=m3", -1), wantServer: "m3"},
		{name: "elsewhere in the same region", first: replayer("elsewhere=true;region=iad", -1), wantServer: "m4"},
		{name: "JSON form", first: func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/vnd.fly.replay+json")
			io.WriteString(w, `{"region":"fra","state":"json"}`)
		}, body: []byte("small"), wantServer: "m2", wantState: "json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m1 := startMachine(t, "m1", tt.first, nil)
			m2 := startMachine(t, "m2", echoMachine, nil)
			m3 := startMachine(t, "m3", echoMachine, nil)
			m4 := startMachine(t, "m4", echoMachine, nil)
			p := startProxy(t, oneApp("", []string{m1.addr, m2.addr, m3.addr, m4.addr}, "iad", "fra", "syd", "iad"))
			// m4 shares m1's region: pin the first hop to m1 (a forced
			// instance constrains the first hop only, not the replay).
			req := newRequest(t, http.MethodPost, p.url("/write"), webHost, bytes.NewReader(tt.body))
			req.Header.Set("X-Client", "kept")
			req.Header.Set("Fly-Force-Instance-Id", "m1")
			r := do(newClient(t), req)
			if r.err != nil || r.status != http.StatusOK {
				t.Fatalf("got %d %q (err %v), want 200 from the replay target", r.status, r.body, r.err)
			}
			if got := r.header.Get("X-Machine"); got != tt.wantServer {
				t.Fatalf("answered by %s, want %s", got, tt.wantServer)
			}
			if v := r.header.Get("Fly-Replay"); v != "" {
				t.Errorf("client saw Fly-Replay %q, want it never shown", v)
			}
			if !strings.HasPrefix(r.body, wantEcho("POST", tt.body)) {
				t.Errorf("target received %q, want the same method and body %q", r.body, wantEcho("POST", tt.body))
			}
			if !strings.Contains(r.body, "x=[kept]") {
				t.Errorf("target did not get the client's header: %q", r.body)
			}
			src := r.body[strings.Index(r.body, "src=[")+5 : strings.Index(r.body, "] x=")]
			m := srcRe.FindStringSubmatch(src)
			if m == nil || m[1] != tt.wantState {
				t.Errorf("fly-replay-src: got %q, want instance=m1;region=iad;t=<µs>;state=%s", src, tt.wantState)
			}
			st := r.header.Get("Server-Timing")
			if !strings.Contains(st, "replay;dur=") || strings.Contains(st, "replay;dur=0.000,") {
				t.Errorf("Server-Timing: got %q, want a non-zero replay phase", st)
			}
			if n := m1.requests.Load(); n != 1 {
				t.Errorf("replaying machine saw %d requests, want 1", n)
			}
			metrics := p.metrics(t)
			for _, want := range []string{`godwit_replays_total{app="web",outcome="replayed"} 1`, `godwit_replay_duration_seconds_count{app="web"} 1`} {
				if !strings.Contains(metrics, want) {
					t.Errorf("/metrics lacks %s", want)
				}
			}
		})
	}
}

func TestReplayFailures(t *testing.T) {
	var hops atomic.Int64
	loop := func(w http.ResponseWriter, r *http.Request) {
		hops.Add(1)
		replayer("elsewhere=true", -1)(w, r)
	}
	tests := []struct {
		name    string
		first   http.HandlerFunc
		body    []byte
		code    Code
		targets int64 // requests the echo machine may see
	}{
		{name: "malformed", first: replayer(`region="iad`, -1), code: CodeReplayInvalid},
		{name: "contradictory", first: replayer("instance=m2;prefer_instance=m3", -1), code: CodeReplayInvalid},
		{name: "unknown app", first: replayer("app=nope", -1), code: CodeReplayNoApp},
		{name: "app of another org", first: replayer("app=secret", -1), code: CodeReplayForbidden},
		{name: "body over the replay limit", first: replayer("region=syd", -1), body: bytes.Repeat([]byte("x"), 2<<20), code: CodeReplayTooLarge},
		{name: "region without machines", first: replayer("region=ord", -1), code: CodeNoMachine},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m1 := startMachine(t, "m1", tt.first, nil)
			m2 := startMachine(t, "m2", echoMachine, nil)
			other := startMachine(t, "s1", echoMachine, nil)
			p := startProxy(t, oneApp("", []string{m1.addr, m2.addr}, "iad", "syd")+fmt.Sprintf(`
[[app]]
name  = "secret"
org   = "other-org"
hosts = ["secret.test"]
[[machine]]
id      = "s1"
app     = "secret"
address = %q
`, other.addr))
			req := newRequest(t, http.MethodPost, p.url("/"), webHost, bytes.NewReader(tt.body))
			req.Header.Set("Fly-Force-Instance-Id", "m1")
			wantProxyError(t, do(newClient(t), req), tt.code)
			if n := m2.requests.Load() + other.requests.Load(); n != tt.targets {
				t.Errorf("replay targets saw %d requests, want %d", n, tt.targets)
			}
		})
	}

	t.Run("a chain longer than 10", func(t *testing.T) {
		a := startMachine(t, "m1", loop, nil)
		b := startMachine(t, "m2", loop, nil)
		p := startProxy(t, oneApp("", []string{a.addr, b.addr}))
		wantProxyError(t, do(newClient(t), newRequest(t, http.MethodGet, p.url("/"), webHost, nil)), CodeReplayLoop)
		if n := hops.Load(); n != 11 {
			t.Errorf("machines answered %d times, want 11 (the request and 10 replays)", n)
		}
	})

	t.Run("large body without a replay still streams", func(t *testing.T) {
		m := startMachine(t, "m1", echoMachine, nil)
		p := startProxy(t, oneApp("", []string{m.addr}))
		big := bytes.Repeat([]byte("y"), 3<<20)
		r := do(newClient(t), newRequest(t, http.MethodPost, p.url("/"), webHost, bytes.NewReader(big)))
		if r.status != 200 || !strings.HasPrefix(r.body, fmt.Sprintf("POST %d %x", len(big), sha256.Sum256(big))) {
			t.Errorf("3 MiB upload without replay: got %d %.60q, want 200 and the whole body at the machine", r.status, r.body)
		}
	})
}

// fallbackMachine asks for a replay, and answers a request that came back
// through a fallback with the fly-replay-failed it carried.
func fallbackMachine(instruction string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if f := r.Header.Get("Fly-Replay-Failed"); f != "" {
			io.Copy(io.Discard, r.Body)
			io.WriteString(w, "fallback: "+f)
			return
		}
		replayer(instruction, -1)(w, r)
	}
}

func TestReplayFallback(t *testing.T) {
	t.Run("no candidate", func(t *testing.T) {
		m1 := startMachine(t, "m1", fallbackMachine("region=ord;fallback=force_self"), nil)
		p := startProxy(t, oneApp("", []string{m1.addr}))
		r := do(newClient(t), newRequest(t, http.MethodPost, p.url("/"), webHost, strings.NewReader("payload")))
		want := "fallback: app=web;region=ord;replay_source=m1;reason=no_candidate;elapsed_ms="
		if r.status != 200 || !strings.HasPrefix(r.body, want) {
			t.Errorf("got %d %q, want 200 %q…", r.status, r.body, want)
		}
		if n := m1.requests.Load(); n != 2 {
			t.Errorf("replaying machine saw %d requests, want 2 (the request and its fallback)", n)
		}
	})

	t.Run("retries exhausted", func(t *testing.T) {
		m1 := startMachine(t, "m1", fallbackMachine("region=syd;fallback=prefer_self"), nil)
		p := startProxy(t, oneApp("", []string{m1.addr, deadAddr(t)}, "iad", "syd"))
		r := do(newClient(t), newRequest(t, http.MethodGet, p.url("/"), webHost, nil))
		if want := "reason=retries_exhausted"; r.status != 200 || !strings.Contains(r.body, want) {
			t.Errorf("got %d %q, want 200 with %s", r.status, r.body, want)
		}
	})

	t.Run("timeout", func(t *testing.T) {
		g := newGate()
		defer g.open()
		m1 := startMachine(t, "m1", fallbackMachine("region=syd;timeout=200ms;fallback=force_self"), nil)
		m2 := startMachine(t, "m2", func(w http.ResponseWriter, r *http.Request) { g.wait(r) }, nil)
		p := startProxy(t, oneApp("[app.http_service.concurrency]\ntype = \"requests\"\nsoft_limit = 1\nhard_limit = 1\n",
			[]string{m1.addr, m2.addr}, "iad", "syd"))
		c := newClient(t)
		held := make(chan result, 1)
		go func() {
			req := newRequest(t, http.MethodGet, p.url("/hold"), webHost, nil)
			req.Header.Set("Fly-Force-Instance-Id", "m2")
			held <- do(c, req)
		}()
		eventually(t, 10*time.Second, "m2's only slot taken", func() bool { return m2.inflight.Load() == 1 })
		start := time.Now()
		r := do(c, newRequest(t, http.MethodGet, p.url("/"), webHost, nil))
		if want := "reason=timeout"; r.status != 200 || !strings.Contains(r.body, want) {
			t.Errorf("got %d %q, want 200 with %s", r.status, r.body, want)
		}
		if took := time.Since(start); took < 200*time.Millisecond {
			t.Errorf("fallback after %v, want after the 200ms timeout", took)
		}
		g.open()
		<-held
	})

	t.Run("no second replay after a fallback", func(t *testing.T) {
		m1 := startMachine(t, "m1", replayer("region=ord;fallback=force_self", -1), nil)
		p := startProxy(t, oneApp("", []string{m1.addr}))
		wantProxyError(t, do(newClient(t), newRequest(t, http.MethodGet, p.url("/"), webHost, nil)), CodeReplayLoop)
	})
}

func TestReplayTransform(t *testing.T) {
	jsonReplay := func(instruction string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/vnd.fly.replay+json")
			io.WriteString(w, instruction)
		}
	}
	m1 := startMachine(t, "m1", jsonReplay(`{"region":"syd","transform":{"path":"/new/path?param=value",
		"delete_headers":["x-unwanted-header","cookie"],
		"set_headers":[{"name":"authorization","value":"Bearer token123"},{"name":"X-Added","value":"yes"}]}}`), nil)
	m2 := startMachine(t, "m2", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s body=%s auth=%q unwanted=%q cookie=%q added=%q kept=%q",
			r.Method, r.RequestURI, b, r.Header.Values("Authorization"), r.Header.Get("X-Unwanted-Header"),
			r.Header.Get("Cookie"), r.Header.Get("X-Added"), r.Header.Get("X-Kept"))
	}, nil)
	p := startProxy(t, oneApp("", []string{m1.addr, m2.addr}, "iad", "syd"))
	req := newRequest(t, http.MethodPut, p.url("/old?q=1"), webHost, strings.NewReader("data"))
	req.Header.Set("X-Unwanted-Header", "drop me")
	req.Header.Set("Cookie", "session=1")
	req.Header.Add("Authorization", "Basic old1")
	req.Header.Add("Authorization", "Basic old2")
	req.Header.Set("X-Kept", "kept")
	r := do(newClient(t), req)
	want := `PUT /new/path?param=value body=data auth=["Bearer token123"] unwanted="" cookie="" added="yes" kept="kept"`
	if r.status != 200 || r.body != want {
		t.Errorf("target got:\n%d %s\nwant:\n200 %s", r.status, r.body, want)
	}
}

func TestReplayWebSocket(t *testing.T) {
	// m1 must not accept the upgrade itself: it answers fly-replay, and
	// the target negotiates the WebSocket (Fly's documented pattern).
	m1 := startMachine(t, "m1", replayer("region=syd;state=ws", 0), nil)
	src := make(chan string, 1)
	echo := websocket.Handler(func(ws *websocket.Conn) {
		src <- ws.Request().Header.Get("Fly-Replay-Src")
		io.Copy(ws, ws)
	})
	m2 := startMachine(t, "m2", echo.ServeHTTP, nil)
	p := startProxy(t, oneApp("", []string{m1.addr, m2.addr}, "iad", "syd"))

	cfg, err := websocket.NewConfig("ws://"+webHost+"/echo", "http://"+webHost)
	if err != nil {
		t.Fatal(err)
	}
	ws, err := websocket.NewClient(cfg, dialProxy(t, p.httpAddr))
	if err != nil {
		t.Fatalf("websocket handshake through a replay: got %v, want 101 from the target", err)
	}
	defer ws.Close()
	if got := <-src; !strings.HasPrefix(got, "instance=m1;region=iad;t=") || !strings.HasSuffix(got, ";state=ws") {
		t.Errorf("target's fly-replay-src: got %q, want instance=m1;region=iad;t=…;state=ws", got)
	}
	if err := websocket.Message.Send(ws, "hello"); err != nil {
		t.Fatalf("send: %v", err)
	}
	var got string
	if err := websocket.Message.Receive(ws, &got); err != nil || got != "hello" {
		t.Fatalf("echo: got %q, %v; want hello", got, err)
	}
	if n := m1.requests.Load(); n != 1 {
		t.Errorf("replaying machine saw %d requests, want 1", n)
	}
}

func TestReplayKeepsConnections(t *testing.T) {
	m1 := startMachine(t, "m1", replayer("region=syd", -1), nil)
	json := startMachine(t, "m3", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/vnd.fly.replay+json")
		io.WriteString(w, `{"region":"syd"}`)
	}, nil)
	m2 := startMachine(t, "m2", nil, nil)
	p := startProxy(t, oneApp("", []string{m1.addr, m2.addr, json.addr}, "iad", "syd", "iad"))
	c := newClient(t)
	for _, first := range []string{"m1", "m3"} {
		for i := range 5 {
			req := newRequest(t, http.MethodGet, p.url("/"), webHost, nil)
			req.Header.Set("Fly-Prefer-Instance-Id", first)
			if r := do(c, req); r.status != 200 || r.body != "m2" {
				t.Fatalf("request %d via %s: got %d %q, want 200 from m2", i, first, r.status, r.body)
			}
		}
	}
	// A replay answer read whole leaves its connection reusable. (With a
	// request body it is reused too when the body was written whole by
	// the time the answer came, which a test cannot make certain.)
	if n := m1.accepts.Load(); n != 1 {
		t.Errorf("header-form replaying machine accepted %d connections for 5 requests, want 1", n)
	}
	if n := json.accepts.Load(); n != 1 {
		t.Errorf("JSON-form replaying machine accepted %d connections for 5 requests, want 1", n)
	}
}

// TestReplayHTTP2: a request that arrived over HTTP/2 is replayed with its
// body whole, and a JSON transform's path applies to it too.
func TestReplayHTTP2(t *testing.T) {
	m1 := startMachine(t, "m1", func(w http.ResponseWriter, r *http.Request) {
		io.CopyN(io.Discard, r.Body, 1000) // answer before reading it all
		w.Header().Set("Content-Type", "application/vnd.fly.replay+json")
		io.WriteString(w, `{"region":"syd","transform":{"path":"/moved?q=2"}}`)
	}, nil)
	m2 := startMachine(t, "m2", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %d %x", r.Method, r.RequestURI, len(b), sha256.Sum256(b))
	}, nil)
	p := startProxy(t, oneApp("", []string{m1.addr, m2.addr}, "iad", "syd"))
	h2c := &http.Transport{Protocols: new(http.Protocols)}
	h2c.Protocols.SetUnencryptedHTTP2(true)
	t.Cleanup(h2c.CloseIdleConnections)

	body := bytes.Repeat([]byte("h2 "), 100000)
	r := do(&http.Client{Transport: h2c}, newRequest(t, http.MethodPost, p.url("/orig"), webHost, bytes.NewReader(body)))
	if want := fmt.Sprintf("POST /moved?q=2 %d %x", len(body), sha256.Sum256(body)); r.status != 200 || r.body != want {
		t.Errorf("h2c replay: got %d %q, want 200 %q", r.status, r.body, want)
	}
}
