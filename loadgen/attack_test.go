package loadgen

import (
	"bytes"
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
)

// replayingServer answers GET directly and POST as replayed, in
// godwit's Server-Timing format.
func replayingServer(t *testing.T) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		replay := "0.000"
		if r.Method == http.MethodPost {
			replay = "3.000"
		}
		w.Header().Set("Server-Timing", "route;dur=0.010, queue;dur=0.000, replay;dur="+replay+", upstream;dur=0.100")
		w.Write([]byte("ok"))
	}))
	t.Cleanup(srv.Close)
	return srv
}

func newTestClient(t *testing.T, o ClientOptions) *Client {
	c, err := NewClient(o)
	if err != nil {
		t.Fatalf("NewClient(%+v): %v", o, err)
	}
	t.Cleanup(c.Close)
	return c
}

func TestRunAtRate(t *testing.T) {
	srv := replayingServer(t)
	c := newTestClient(t, ClientOptions{Timeout: 5 * time.Second})
	rec := NewRecorder()
	err := Run(context.Background(), Options{
		Targets:  []vegeta.Target{{Method: "GET", URL: srv.URL}, {Method: "POST", URL: srv.URL, Body: []byte("x")}},
		Rate:     vegeta.Rate{Freq: 200, Per: time.Second},
		Duration: 300 * time.Millisecond,
		Client:   c.HTTP,
	}, func(r *vegeta.Result) { rec.Add(r) })
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	rep := rec.Report(Settings{})
	// 200/s for 300 ms is 60 requests (vegeta sends the first at once),
	// fewer on a starved host.
	if rep.Requests < 30 || rep.Requests > 62 || rep.Responses != rep.Requests {
		t.Errorf("got %d requests, %d responses; want about 60, all answered", rep.Requests, rep.Responses)
	}
	if d := rep.Groups.Replayed.Count - rep.Groups.Direct.Count; d < -1 || d > 1 || rep.Groups.Unclassified.Count != 0 {
		t.Errorf("got %d replayed, %d direct, %d unclassified; want half and half (targets alternate)", rep.Groups.Replayed.Count, rep.Groups.Direct.Count, rep.Groups.Unclassified.Count)
	}
	if rep.Replay.Phase == nil || rep.Replay.Phase.Max != 3*time.Millisecond {
		t.Errorf("replay phase: got %+v, want 3ms", rep.Replay.Phase)
	}
	if got := c.Sent(); got != uint64(rep.Requests) {
		t.Errorf("Client.Sent: got %d, want %d", got, rep.Requests)
	}
	if got := c.Protocols(); got["HTTP/1.1"] != rep.Responses || len(got) != 1 {
		t.Errorf("Client.Protocols: got %v, want HTTP/1.1 for all %d", got, rep.Responses)
	}
}

func TestRunConcurrency(t *testing.T) {
	var inflight, peak atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := inflight.Add(1)
		defer inflight.Add(-1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		time.Sleep(20 * time.Millisecond) // long enough for the 3 to overlap on a busy host
	}))
	defer srv.Close()
	c := newTestClient(t, ClientOptions{})
	n := 0
	err := Run(context.Background(), Options{
		Targets:  []vegeta.Target{{Method: "GET", URL: srv.URL}},
		Duration: 200 * time.Millisecond,
		Workers:  3,
		Client:   c.HTTP,
	}, func(*vegeta.Result) { n++ })
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if p := peak.Load(); p != 3 {
		t.Errorf("as fast as 3 workers go: got a peak of %d requests in flight, want 3", p)
	}
	if n < 6 { // 3 in flight of 20 ms for 200 ms: about 30
		t.Errorf("as fast as 3 workers go: got %d requests in 200ms, want each worker to send again at once", n)
	}
}

func TestRunStopsWithContext(t *testing.T) {
	srv := replayingServer(t)
	c := newTestClient(t, ClientOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	start := time.Now()
	n := 0
	err := Run(ctx, Options{Targets: []vegeta.Target{{Method: "GET", URL: srv.URL}}, Rate: vegeta.Rate{Freq: 100, Per: time.Second}, Client: c.HTTP}, func(*vegeta.Result) { n++ })
	if err != nil || time.Since(start) > 2*time.Second || n == 0 {
		t.Errorf("Run without a duration, ctx ending after 150ms: returned after %v with %d results (err %v); want soon after, with some", time.Since(start), n, err)
	}
}

func TestRunErrors(t *testing.T) {
	c := newTestClient(t, ClientOptions{})
	for name, o := range map[string]Options{
		"no targets":     {Rate: vegeta.Rate{Freq: 1, Per: time.Second}, Client: c.HTTP},
		"rate 0, no cap": {Targets: []vegeta.Target{{Method: "GET", URL: "http://127.0.0.1:1/"}}, Client: c.HTTP},
	} {
		if err := Run(context.Background(), o, func(*vegeta.Result) {}); err == nil {
			t.Errorf("Run with %s: got nil, want an error", name)
		}
	}
}

func TestClientProtocols(t *testing.T) {
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(r.Proto)) })
	quiet := log.New(io.Discard, "", 0) // the handshakes that fail on purpose
	tlsBoth := httptest.NewUnstartedServer(handler)
	tlsBoth.EnableHTTP2 = true
	tlsBoth.Config.ErrorLog = quiet
	tlsBoth.StartTLS()
	defer tlsBoth.Close()
	tlsH1 := httptest.NewUnstartedServer(handler) // no h2 in its ALPN
	tlsH1.Config.ErrorLog = quiet
	tlsH1.StartTLS()
	defer tlsH1.Close()
	h2c := httptest.NewUnstartedServer(handler)
	h2c.Config.Protocols = new(http.Protocols)
	h2c.Config.Protocols.SetHTTP1(true)
	h2c.Config.Protocols.SetUnencryptedHTTP2(true)
	h2c.Start()
	defer h2c.Close()

	for _, tc := range []struct {
		name, proto, url string
		insecure         bool
		want             string // the response's protocol, or "error"
	}{
		{"HTTP/1.1 over TLS", HTTP1, tlsBoth.URL, true, "HTTP/1.1"},
		{"HTTP/1.1 in clear", HTTP1, h2c.URL, false, "HTTP/1.1"},
		{"HTTP/2 over TLS", HTTP2, tlsBoth.URL, true, "HTTP/2.0"},
		{"h2c with prior knowledge", HTTP2, h2c.URL, false, "HTTP/2.0"},
		{"HTTP/2 to a server without it", HTTP2, tlsH1.URL, true, "error"},
		{"a self-signed certificate without --insecure", HTTP1, tlsBoth.URL, false, "error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestClient(t, ClientOptions{Protocol: tc.proto, Insecure: tc.insecure, Timeout: 5 * time.Second})
			resp, err := c.HTTP.Get(tc.url)
			got := "error"
			if err == nil {
				got = resp.Proto
				resp.Body.Close()
			}
			if got != tc.want {
				t.Errorf("GET %s with protocol %s: got %s (err %v), want %s", tc.url, tc.proto, got, err, tc.want)
			}
		})
	}
	if _, err := NewClient(ClientOptions{Protocol: "4"}); err == nil {
		t.Errorf("NewClient with protocol 4: got nil error, want one")
	}
}

func TestClientNoRedirects(t *testing.T) {
	srv := httptest.NewServer(http.RedirectHandler("/elsewhere", http.StatusFound))
	defer srv.Close()
	c := newTestClient(t, ClientOptions{})
	resp, err := c.HTTP.Get(srv.URL)
	if err != nil || resp.StatusCode != http.StatusFound {
		t.Fatalf("GET of a redirect: got %v (err %v), want the 302 itself", resp, err)
	}
	resp.Body.Close()
}

func TestCheckURL(t *testing.T) {
	for _, tc := range []struct {
		proto, url string
		ok         bool
	}{
		{HTTP1, "http://127.0.0.1:8080/", true},
		{HTTP2, "https://h/", true},
		{HTTP3, "https://h:8443/x", true},
		{HTTP3, "http://h/", false},
		{HTTP1, "ftp://h/", false},
		{HTTP1, "127.0.0.1:8080", false},
		{HTTP1, "http:///path", false},
		{HTTP1, "http://h/%zz", false},
	} {
		if err := CheckURL(tc.proto, tc.url); (err == nil) != tc.ok {
			t.Errorf("CheckURL(%s, %q): got %v, want ok %v", tc.proto, tc.url, err, tc.ok)
		}
	}
}

func TestParseRate(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want vegeta.Rate
		perS float64
	}{
		{"100", vegeta.Rate{Freq: 100, Per: time.Second}, 100},
		{"100/s", vegeta.Rate{Freq: 100, Per: time.Second}, 100},
		{"100/1s", vegeta.Rate{Freq: 100, Per: time.Second}, 100},
		{"5/100ms", vegeta.Rate{Freq: 5, Per: 100 * time.Millisecond}, 50},
		{"600/m", vegeta.Rate{Freq: 600, Per: time.Minute}, 10},
		{"0", vegeta.Rate{Freq: 0, Per: time.Second}, 0},
	} {
		got, err := ParseRate(tc.in)
		if err != nil || got != tc.want || PerSecond(got) != tc.perS {
			t.Errorf("ParseRate(%q): got %v = %v/s (err %v), want %v = %v/s", tc.in, got, PerSecond(got), err, tc.want, tc.perS)
		}
	}
	for _, in := range []string{"", "fast", "-1", "1.5", "10/", "10/0s", "10/-1s", "10/fortnight"} {
		if _, err := ParseRate(in); err == nil {
			t.Errorf("ParseRate(%q): got nil error, want one", in)
		}
	}
}

func TestReadTargets(t *testing.T) {
	dir := t.TempDir()
	bodyFile := filepath.Join(dir, "body.json")
	os.WriteFile(bodyFile, []byte(`{"k":1}`), 0o644)
	src := "# a mix\nPOST http://127.0.0.1:8080/write\nHost: web.example.com\n@" + bodyFile + "\n\nGET http://127.0.0.1:8080/\nX-Thing: 1\n"
	ts, err := ReadTargets(strings.NewReader(src), []byte("default"), http.Header{"Authorization": {"Bearer t"}})
	if err != nil {
		t.Fatalf("ReadTargets: %v", err)
	}
	if len(ts) != 2 {
		t.Fatalf("ReadTargets: got %d targets, want 2", len(ts))
	}
	if ts[0].Method != "POST" || ts[0].URL != "http://127.0.0.1:8080/write" || string(ts[0].Body) != `{"k":1}` ||
		ts[0].Header.Get("Host") != "web.example.com" || ts[0].Header.Get("Authorization") != "Bearer t" {
		t.Errorf("first target: got %+v", ts[0])
	}
	if ts[1].Method != "GET" || string(ts[1].Body) != "default" || ts[1].Header.Get("X-Thing") != "1" || ts[1].Header.Get("Authorization") != "Bearer t" {
		t.Errorf("second target: got %+v", ts[1])
	}
	for name, src := range map[string]string{"empty": "", "comments only": "# nothing\n", "bad method": "get http://x/\n", "bad URL": "GET ::\n"} {
		if _, err := ReadTargets(strings.NewReader(src), nil, nil); err == nil {
			t.Errorf("ReadTargets of %s: got nil error, want one", name)
		}
	}
}

func TestNewPlot(t *testing.T) {
	p := NewPlot("godwit load: test")
	for _, r := range sampleResults() {
		if err := p.Add(r); err != nil {
			t.Fatalf("Plot.Add: %v", err)
		}
	}
	p.Close()
	var buf bytes.Buffer
	if _, err := p.WriteTo(&buf); err != nil {
		t.Fatalf("Plot.WriteTo: %v", err)
	}
	for _, want := range []string{"godwit load: test", AttackName + ": replayed", AttackName + ": direct", AttackName + ": ERROR", "<html"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("the HTML plot lacks %q", want)
		}
	}
}

func FuzzParseRate(f *testing.F) {
	for _, s := range []string{"100", "100/s", "5/100ms", "600/m", "0", "1/", "/s", "9999999999999999999/1ns"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRate(s)
		if err == nil && (r.Freq < 0 || r.Per <= 0 || PerSecond(r) < 0) {
			t.Errorf("ParseRate(%q): got %v, want a rate of 0 or more per a positive period", s, r)
		}
	})
}
