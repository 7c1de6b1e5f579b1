package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/godwit/godwit/config"
)

// startH3Proxy is startProxy with listen.http3 on 127.0.0.1:0 as well.
func startH3Proxy(t testing.TB, body string) (*testProxy, string) {
	t.Helper()
	toml := strings.Replace(proxyConfig(body), "[listen]\n", "[listen]\nhttp3 = \"127.0.0.1:0\"\n", 1)
	cfg, err := config.Parse([]byte(toml), t.Name()+".toml")
	if err != nil {
		t.Fatalf("config.Parse: got error %v, want a config", err)
	}
	p := startProxyConfig(t, cfg)
	addr := p.srv.Addr("http3")
	if addr == "" {
		t.Fatal(`Addr("http3") after Listen: got "", want the bound UDP address`)
	}
	return p, addr
}

// newH3Client returns an HTTP/3 client of its own, closed when the test
// ends. handshake bounds its QUIC handshakes (0: quic-go's default).
func newH3Client(t testing.TB, handshake time.Duration) (*http.Client, *http3.Transport) {
	tr := &http3.Transport{
		TLSClientConfig:    &tls.Config{InsecureSkipVerify: true},
		QUICConfig:         &quic.Config{HandshakeIdleTimeout: handshake},
		DisableCompression: true,
	}
	t.Cleanup(func() { tr.Close() })
	return &http.Client{Transport: tr}, tr
}

// udpPort is the port of a host:port address.
func udpPort(t testing.TB, addr string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("split %q: %v", addr, err)
	}
	return port
}

// onlyReadCloser hides the length of a body from http.NewRequest.
type onlyReadCloser struct{ io.Reader }

func (onlyReadCloser) Close() error { return nil }

// TestHTTP3Forwarding: GET and POST through listen.http3 reach the
// machine with the headers of a TLS client and Via naming HTTP/3, and
// the answers come back whole, advertising HTTP/3.
func TestHTTP3Forwarding(t *testing.T) {
	m := startMachine(t, "m1", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Alt-Svc", `h3=":1"`) // the machine's own: the edge's wins
		w.Header().Set("X-Seen-Length", fmt.Sprint(r.ContentLength))
		w.Header().Set("X-Seen-TE", strings.Join(r.TransferEncoding, ","))
		b, err := io.ReadAll(r.Body) // whole, before answering: net/http's HTTP/1 server is not full duplex
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		w.Write(b)
	}, nil)
	p, h3Addr := startH3Proxy(t, oneApp("", []string{m.addr}))
	port := udpPort(t, h3Addr)
	c, _ := newH3Client(t, 0)

	body := bytes.Repeat([]byte("0123456789abcdef"), 64<<10/16)
	for _, tc := range []struct {
		name, method string
		body         func() io.Reader
		want         string
		wantLength   string // the Content-Length the machine saw
		wantTE       string // the Transfer-Encoding the machine saw
	}{
		{"GET", http.MethodGet, nil, "", "0", ""},
		{"HEAD", http.MethodHead, nil, "", "0", ""},
		{"POST with length", http.MethodPost, func() io.Reader { return bytes.NewReader(body) }, string(body), fmt.Sprint(len(body)), ""},
		{"POST streamed", http.MethodPost, func() io.Reader { return onlyReadCloser{bytes.NewReader(body)} }, string(body), "-1", "chunked"},
		{"DELETE streamed", http.MethodDelete, func() io.Reader { return onlyReadCloser{strings.NewReader("bye")} }, "bye", "-1", "chunked"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var rb io.Reader
			if tc.body != nil {
				rb = tc.body()
			}
			req := newRequest(t, tc.method, "https://"+h3Addr+"/echo?q=1", webHost, rb)
			r := do(c, req)
			if r.err != nil || r.status != http.StatusOK {
				t.Fatalf("%s over HTTP/3: got %d (err %v), want 200", tc.method, r.status, r.err)
			}
			if r.body != tc.want {
				t.Errorf("body: got %d bytes, want %d", len(r.body), len(tc.want))
			}
			if got := r.header.Get("X-Seen-Length"); got != tc.wantLength {
				t.Errorf("machine saw ContentLength %s, want %s", got, tc.wantLength)
			}
			if got := r.header.Get("X-Seen-TE"); got != tc.wantTE {
				t.Errorf("machine saw Transfer-Encoding %q, want %q", got, tc.wantTE)
			}
			if got, want := r.header.Get("Via"), "3 godwit"; got != want {
				t.Errorf("response Via: got %q, want %q", got, want)
			}
			if got, want := r.header.Values("Alt-Svc"), []string{`h3=":` + port + `"; ma=86400`}; !equalStrings(got, want) {
				t.Errorf("response Alt-Svc: got %q, want %q", got, want)
			}
			if r.header.Get(hdrRequestIDResp) == "" {
				t.Errorf("response has no %s", hdrRequestIDResp)
			}
			seen := m.lastRequest()
			for k, v := range map[string]string{
				"Via":               "3 godwit",
				"X-Forwarded-Proto": "https", "Fly-Forwarded-Proto": "https",
				"X-Forwarded-Ssl": "on", "Fly-Forwarded-Ssl": "on",
				"X-Forwarded-Port": port, "Fly-Forwarded-Port": port,
				"Fly-Client-Ip": "127.0.0.1",
			} {
				if got := seen.Header.Get(k); got != v {
					t.Errorf("machine saw %s %q, want %q", k, got, v)
				}
			}
			if seen.URL.RequestURI() != "/echo?q=1" || seen.Host != webHost {
				t.Errorf("machine saw %s %s, want %s /echo?q=1", seen.Host, seen.URL.RequestURI(), webHost)
			}
		})
	}

	// Requests over HTTP/3 are counted as the others are.
	if text := p.metrics(t); !strings.Contains(text, `godwit_requests_total{app="web",code="2xx",region="iad"} 5`) {
		t.Errorf("/metrics: want 5 2xx requests of app web, got:\n%s", grepLines(text, "godwit_requests_total"))
	}
}

func equalStrings(a, b []string) bool {
	return strings.Join(a, "\x00") == strings.Join(b, "\x00") && len(a) == len(b)
}

// TestAltSvc: the https listener advertises listen.http3 on every
// response, proxy errors included, and nothing when HTTP/3 is off; the
// plain http listener never does.
func TestAltSvc(t *testing.T) {
	m := startMachine(t, "m1", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/own" {
			w.Header().Set("Alt-Svc", `h2=":9999"`)
		}
	}, nil)
	on, h3Addr := startH3Proxy(t, oneApp("", []string{m.addr}))
	off := startProxy(t, oneApp("", []string{m.addr}))
	want := `h3=":` + udpPort(t, h3Addr) + `"; ma=86400`
	c := newClient(t)

	for _, tc := range []struct {
		name, url, host string
		want            []string
	}{
		{"https, http3 on", "https://" + on.httpsAddr + "/", webHost, []string{want}},
		{"https error, http3 on", "https://" + on.httpsAddr + "/", "nobody.example.com", []string{want}},
		{"https, machine's own, http3 on", "https://" + on.httpsAddr + "/own", webHost, []string{want}},
		{"http, http3 on", "http://" + on.httpAddr + "/", webHost, nil},
		{"https, http3 off", "https://" + off.httpsAddr + "/", webHost, nil},
		{"https, machine's own, http3 off", "https://" + off.httpsAddr + "/own", webHost, []string{`h2=":9999"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := do(c, newRequest(t, http.MethodGet, tc.url, tc.host, nil))
			if r.err != nil {
				t.Fatalf("GET %s: %v", tc.url, r.err)
			}
			if got := r.header.Values("Alt-Svc"); !equalStrings(got, tc.want) {
				t.Errorf("Alt-Svc: got %q, want %q", got, tc.want)
			}
		})
	}
	if got := off.srv.Addr("http3"); got != "" {
		t.Errorf(`Addr("http3") with listen.http3 off: got %q, want ""`, got)
	}
}

// TestHTTP3LargeResponse: 8 MiB streams through intact, with and without
// a Content-Length.
func TestHTTP3LargeResponse(t *testing.T) {
	const size = 8 << 20
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i*7 + i>>13)
	}
	want := sha256.Sum256(data)
	m := startMachine(t, "m1", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/sized" {
			w.Header().Set("Content-Length", fmt.Sprint(size))
		}
		for off := 0; off < size; off += 1 << 20 { // in pieces: no length known up front
			w.Write(data[off : off+1<<20])
			if r.URL.Path != "/sized" {
				w.(http.Flusher).Flush()
			}
		}
	}, nil)
	_, h3Addr := startH3Proxy(t, oneApp("", []string{m.addr}))
	c, _ := newH3Client(t, 0)
	for _, path := range []string{"/sized", "/streamed"} {
		t.Run(path, func(t *testing.T) {
			r := do(c, newRequest(t, http.MethodGet, "https://"+h3Addr+path, webHost, nil))
			if r.err != nil || r.status != http.StatusOK {
				t.Fatalf("GET %s: got %d (err %v), want 200", path, r.status, r.err)
			}
			if len(r.body) != size || sha256.Sum256([]byte(r.body)) != want {
				t.Fatalf("GET %s: got %d bytes (sha256 matches: %v), want the machine's %d", path, len(r.body), sha256.Sum256([]byte(r.body)) == want, size)
			}
		})
	}
}

// TestHTTP3Drain: a request in flight when Run's context ends completes;
// new connections are refused meanwhile; Run returns nil once it is done
// and the UDP socket is closed.
func TestHTTP3Drain(t *testing.T) {
	const size = 1 << 20
	g := newGate()
	defer g.open()
	m := startMachine(t, "m1", func(w http.ResponseWriter, r *http.Request) {
		g.wait(r)
		w.Header().Set("Content-Length", fmt.Sprint(size))
		w.Write(make([]byte, size))
	}, nil)
	p, h3Addr := startH3Proxy(t, oneApp("", []string{m.addr}))
	c, _ := newH3Client(t, 0)

	res := make(chan result, 1)
	go func() { res <- do(c, newRequest(t, http.MethodGet, "https://"+h3Addr+"/slow", webHost, nil)) }()
	eventually(t, 10*time.Second, "request in flight on the machine", func() bool { return m.inflight.Load() == 1 })

	p.cancel()
	// A new client's handshake is refused (or ignored) once the drain
	// began: each attempt gives up after its 200 ms handshake timeout.
	eventually(t, 20*time.Second, "new HTTP/3 connections refused while draining", func() bool {
		fresh, tr := newH3Client(t, 200*time.Millisecond)
		defer tr.Close()
		r := do(fresh, newRequest(t, http.MethodGet, "https://"+h3Addr+"/", webHost, nil))
		return r.err != nil
	})
	select {
	case err := <-p.done:
		t.Fatalf("Run returned %v with a request in flight over HTTP/3, want it to wait for the request", err)
	default:
	}

	g.open()
	r := <-res
	if r.err != nil || r.status != http.StatusOK || len(r.body) != size {
		t.Fatalf("in-flight HTTP/3 request across shutdown: got %d, %d bytes (err %v), want 200 with %d bytes", r.status, len(r.body), r.err, size)
	}
	if err := p.stop(t); err != nil {
		t.Fatalf("Run after a clean drain: got %v, want nil", err)
	}

	fresh, _ := newH3Client(t, 200*time.Millisecond)
	if r := do(fresh, newRequest(t, http.MethodGet, "https://"+h3Addr+"/", webHost, nil)); r.err == nil {
		t.Errorf("HTTP/3 request after Run returned: got %d, want a failed connection", r.status)
	}
	// The socket is closed: its port can be bound again.
	ua, _ := net.ResolveUDPAddr("udp", h3Addr)
	uc, err := net.ListenUDP("udp", ua)
	if err != nil {
		t.Fatalf("bind %s after Run returned: %v, want the port free", h3Addr, err)
	}
	uc.Close()
}

// TestHTTP3DrainIdle: an idle HTTP/3 connection does not hold up the
// drain: the client closes it on GOAWAY.
func TestHTTP3DrainIdle(t *testing.T) {
	m := startMachine(t, "m1", nil, nil)
	cfg := oneApp("", []string{m.addr}) + "[proxy]\ndrain_timeout = \"1m\"\n"
	p, h3Addr := startH3Proxy(t, cfg)
	c, _ := newH3Client(t, 0)
	if r := do(c, newRequest(t, http.MethodGet, "https://"+h3Addr+"/", webHost, nil)); r.err != nil || r.status != http.StatusOK {
		t.Fatalf("GET over HTTP/3: got %d (err %v), want 200", r.status, r.err)
	}
	start := time.Now()
	if err := p.stop(t); err != nil {
		t.Fatalf("Run: got %v, want nil", err)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("drain with one idle HTTP/3 connection took %v, want it well within drain_timeout (1m)", d)
	}
}

// TestHTTP3ExtendedConnect: WebSocket over HTTP/3 (RFC 9220) is refused
// with a proxy error, never sent to the machine; the connection serves on.
func TestHTTP3ExtendedConnect(t *testing.T) {
	m := startMachine(t, "m1", nil, nil)
	_, h3Addr := startH3Proxy(t, oneApp("", []string{m.addr}))
	c, _ := newH3Client(t, 0)

	req := newRequest(t, http.MethodConnect, "https://"+h3Addr+"/chat", webHost, nil)
	req.Proto = "websocket"
	req.Header.Set("Sec-WebSocket-Version", "13")
	wantProxyError(t, do(c, req), CodeUpgradeRejected)
	if n := m.requests.Load(); n != 0 {
		t.Errorf("machine saw %d requests, want 0", n)
	}
	if r := do(c, newRequest(t, http.MethodGet, "https://"+h3Addr+"/", webHost, nil)); r.err != nil || r.status != http.StatusOK {
		t.Errorf("GET after the refused CONNECT: got %d (err %v), want 200", r.status, r.err)
	}
}

func TestExtendedConnect(t *testing.T) {
	for _, tc := range []struct {
		name   string
		method string
		proto  string
		major  int
		header string // :protocol
		want   bool
	}{
		{"HTTP/3 GET", http.MethodGet, "HTTP/3.0", 3, "", false},
		{"HTTP/3 CONNECT", http.MethodConnect, "HTTP/3.0", 3, "", false},
		{"HTTP/3 extended CONNECT", http.MethodConnect, "websocket", 3, "", true},
		{"HTTP/2 extended CONNECT", http.MethodConnect, "HTTP/2.0", 2, "websocket", true},
		{"HTTP/1.1 CONNECT", http.MethodConnect, "HTTP/1.1", 1, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &http.Request{Method: tc.method, Proto: tc.proto, ProtoMajor: tc.major, Header: http.Header{}}
			if tc.header != "" {
				r.Header[":protocol"] = []string{tc.header}
			}
			if got := extendedConnect(r); got != tc.want {
				t.Errorf("extendedConnect: got %v, want %v", got, tc.want)
			}
		})
	}
}

// TestProbedBody: a body that ends at once is found empty; one with data,
// at once or late, reads whole; a probe still waiting is stopped.
func TestProbedBody(t *testing.T) {
	t.Run("empty", func(t *testing.T) {
		pb := probeBody(io.NopCloser(strings.NewReader("")), time.Minute)
		if !pb.empty() {
			t.Fatal("empty(): got false for an ended body, want true")
		}
	})
	t.Run("data", func(t *testing.T) {
		pb := probeBody(io.NopCloser(strings.NewReader("hello")), time.Minute)
		if pb.empty() {
			t.Fatal("empty(): got true for a body with data, want false")
		}
		if b, err := io.ReadAll(pb); string(b) != "hello" || err != nil {
			t.Fatalf("ReadAll: got %q, %v; want \"hello\", nil", b, err)
		}
	})
	t.Run("late", func(t *testing.T) {
		pr, pw := io.Pipe()
		pb := probeBody(pr, time.Millisecond)
		if pb.empty() {
			t.Fatal("empty(): got true before the body's first byte, want false")
		}
		go func() { io.WriteString(pw, "late body"); pw.Close() }()
		if b, err := io.ReadAll(pb); string(b) != "late body" || err != nil {
			t.Fatalf("ReadAll: got %q, %v; want \"late body\", nil", b, err)
		}
	})
	t.Run("stopped", func(t *testing.T) {
		pr, pw := io.Pipe()
		defer pw.Close()
		pb := probeBody(pr, time.Millisecond)
		pb.stop() // returns once the first read has ended
		select {
		case <-pb.done:
		default:
			t.Fatal("stop returned with the first read still running")
		}
		if _, err := pw.Write([]byte("x")); !errors.Is(err, io.ErrClosedPipe) {
			t.Errorf("write after stop: got %v, want io.ErrClosedPipe (the body was closed)", err)
		}
	})
}

// TestHTTP3BufferWarning: buffers below what quic-go asks for are logged
// once, as a warning with quic-go's advice; large enough ones are not.
func TestHTTP3BufferWarning(t *testing.T) {
	for _, tc := range []struct {
		name     string
		rcv, snd int
		want     bool
	}{
		{"Linux defaults", 425984, 425984, true},
		{"small send buffer", 16 << 20, 425984, true},
		{"large enough", quicBufferSize, 16 << 20, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf lockedBuffer
			e := &edgeHTTP3{log: slog.New(slog.NewTextHandler(&buf, nil))}
			e.warnBuffers(tc.rcv, tc.snd)
			out := buf.String()
			if got := strings.Contains(out, "level=WARN"); got != tc.want {
				t.Fatalf("warned: got %v, want %v (log %q)", got, tc.want, out)
			}
			if !tc.want {
				return
			}
			for _, want := range []string{
				fmt.Sprintf("receive_buffer_kib=%d", tc.rcv/1024),
				fmt.Sprintf("send_buffer_kib=%d", tc.snd/1024),
				"want_kib=7168", "net.core.rmem_max=7500000", "net.core.wmem_max=7500000",
			} {
				if !strings.Contains(out, want) {
					t.Errorf("warning %q lacks %q", out, want)
				}
			}
		})
	}
}

// TestHTTP3ListenBusy: a UDP port already taken fails Listen with the
// key's name, and leaves no TCP listener bound.
func TestHTTP3ListenBusy(t *testing.T) {
	busy, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	toml := strings.Replace(proxyConfig(""), "[listen]\n", fmt.Sprintf("[listen]\nhttp3 = %q\n", busy.LocalAddr()), 1)
	cfg, err := config.Parse([]byte(toml), t.Name()+".toml")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(cfg, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	err = srv.Listen()
	if err == nil || !strings.Contains(err.Error(), "listen.http3") {
		t.Fatalf("Listen with the UDP port taken: got %v, want an error naming listen.http3", err)
	}
	for _, name := range []string{"http", "https", "admin", "http3"} {
		if a := srv.Addr(name); a != "" {
			t.Errorf("Addr(%q) after a failed Listen: got %q, want \"\"", name, a)
		}
	}
	// Run fails the same way, and ends what New started.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := srv.Run(ctx); err == nil {
		t.Error("Run with the UDP port taken: got nil, want an error")
	}
}

// TestHTTP3Trailers: a machine's trailers reach an HTTP/3 client.
func TestHTTP3Trailers(t *testing.T) {
	m := startMachine(t, "m1", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Checksum")
		io.WriteString(w, "payload")
		w.Header().Set("X-Checksum", "abc123")
	}, nil)
	_, h3Addr := startH3Proxy(t, oneApp("", []string{m.addr}))
	c, _ := newH3Client(t, 0)
	resp, err := c.Do(newRequest(t, http.MethodGet, "https://"+h3Addr+"/", webHost, nil))
	if err != nil {
		t.Fatalf("GET over HTTP/3: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || string(b) != "payload" {
		t.Fatalf("body: got %q, %v; want \"payload\"", b, err)
	}
	if got := resp.Trailer.Get("X-Checksum"); got != "abc123" {
		t.Errorf("trailer X-Checksum: got %q, want \"abc123\"", got)
	}
}

// Series of the connection limits, as /metrics prints them.
const (
	seriesH3Conns       = `godwit_client_connections{listener="http3"}`
	seriesHTTPConns     = `godwit_client_connections{listener="http"}`
	seriesNodeRefusals  = `godwit_connection_rejections_total{app="",scope="node"}`
	seriesAppARefusals  = `godwit_connection_rejections_total{app="a",scope="app"}`
	seriesAppAConns     = `godwit_app_client_connections{app="a"}`
	seriesAppBConns     = `godwit_app_client_connections{app="b"}`
	seriesAppWebConns   = `godwit_app_client_connections{app="web"}`
	h3ExcessiveLoadCode = quic.ApplicationErrorCode(http3.ErrCodeExcessiveLoad)
)

// h3Get sends GET / for host to the HTTP/3 listener at addr with c.
func h3Get(t testing.TB, c *http.Client, addr, host string) result {
	t.Helper()
	return do(c, newRequest(t, http.MethodGet, "https://"+addr+"/", host, nil))
}

// wantH3From checks that r is a 200 from machine id, over HTTP/3.
func wantH3From(t testing.TB, what string, r result, id string) {
	t.Helper()
	if r.err != nil || r.status != http.StatusOK || r.body != id || r.header.Get("Via") != "3 godwit" {
		t.Fatalf("%s: got %d %q, Via %q (err %v); want 200 from %s over HTTP/3", what, r.status, r.body, r.header.Get("Via"), r.err, id)
	}
}

// wantExcessiveLoad checks that err is the edge closing a QUIC connection
// over the node's limit: H3_EXCESSIVE_LOAD with the reason naming PL05.
func wantExcessiveLoad(t testing.TB, what string, err error) {
	t.Helper()
	var ae *quic.ApplicationError
	if !errors.As(err, &ae) || !ae.Remote || ae.ErrorCode != h3ExcessiveLoadCode || ae.ErrorMessage != h3RefusedReason {
		t.Fatalf("%s: got %v; want the edge's H3_EXCESSIVE_LOAD (%#x) %q", what, err, uint64(h3ExcessiveLoadCode), h3RefusedReason)
	}
}

// dialQUIC opens a QUIC connection offering alpn to addr, closed when the
// test ends; it sends nothing of HTTP/3.
func dialQUIC(t testing.TB, addr, alpn string) (*quic.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := quic.DialAddr(ctx, addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{alpn}}, nil)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.CloseWithError(0, "") })
	return c, nil
}

// quicRefusal opens a QUIC connection to addr and returns why it was
// closed: the error of the handshake, or the cause of its end.
func quicRefusal(t testing.TB, addr string) error {
	t.Helper()
	c, err := dialQUIC(t, addr, http3.NextProtoH3)
	if err != nil {
		return err
	}
	select {
	case <-c.Context().Done():
		return context.Cause(c.Context())
	case <-time.After(10 * time.Second):
		return errors.New("connection still open 10s after its handshake")
	}
}

// wantNoConns checks that lim counts no connection at all, exactly.
func wantNoConns(t testing.TB, what string, lim *connLimiter, apps ...string) {
	t.Helper()
	if n := lim.total.Load(); n != 0 {
		t.Errorf("%s: node connections: got %d, want 0", what, n)
	}
	for name, n := range lim.listeners {
		if n.Load() != 0 {
			t.Errorf("%s: %s connections: got %d, want 0", what, name, n.Load())
		}
	}
	for _, app := range apps {
		if n := lim.appConnsOf(app).n.Load(); n != 0 {
			t.Errorf("%s: connections of app %s: got %d, want 0", what, app, n)
		}
	}
}

// TestHTTP3MaxConnections: HTTP/3 connections count against
// proxy.max_connections together with TCP ones; one over the limit is
// closed right after its handshake with H3_EXCESSIVE_LOAD naming PL05, and
// counted; a connection that closes frees its slot, exactly once.
func TestHTTP3MaxConnections(t *testing.T) {
	a := startMachine(t, "a1", nil, nil)
	b := startMachine(t, "b1", nil, nil)
	p, h3Addr := startH3Proxy(t, "[proxy]\nmax_connections = 2\n"+twoApps(a, b))

	c1, tr1 := newH3Client(t, 0)
	c2, tr2 := newH3Client(t, 0)
	wantH3From(t, "HTTP/3 connection 1", h3Get(t, c1, h3Addr, hostA), "a1")
	wantH3From(t, "HTTP/3 connection 2", h3Get(t, c2, h3Addr, hostB), "b1")
	wantMetric(t, p, seriesH3Conns, 2)

	// A third connection completes its handshake and is closed at once.
	wantExcessiveLoad(t, "a third QUIC connection", quicRefusal(t, h3Addr))
	wantMetric(t, p, seriesNodeRefusals, 1)
	// An HTTP/3 client reports the same. (Its transport tries a second
	// connection when the close came before it sent its request: that
	// one is refused and counted too.)
	c3, _ := newH3Client(t, 0)
	wantExcessiveLoad(t, "a request on a third HTTP/3 connection", h3Get(t, c3, h3Addr, hostA).err)
	refused := metricValue(p.metrics(t), seriesNodeRefusals) // counted before the close is sent
	if refused != 2 && refused != 3 {
		t.Fatalf("%s after an HTTP/3 client's refusal: got %v, want 2 or 3", seriesNodeRefusals, refused)
	}
	// TCP shares the node's limit.
	tcp := dialRaw(t, p.httpAddr)
	wantConnRefused(t, tcp.get(t, hostA), CodeNodeConnLimit, tcp.br)
	wantMetric(t, p, seriesNodeRefusals, refused+1)

	// The connections within the limit serve on.
	wantH3From(t, "HTTP/3 connection 1 after the refusals", h3Get(t, c1, h3Addr, hostB), "b1")
	wantH3From(t, "HTTP/3 connection 2 after the refusals", h3Get(t, c2, h3Addr, hostA), "a1")
	wantMetric(t, p, seriesH3Conns, 2)

	// Closing one frees its slot, which a TCP connection takes...
	tr1.Close()
	wantMetric(t, p, seriesH3Conns, 1)
	tcp = dialRaw(t, p.httpAddr)
	wantOKFrom(t, "a TCP connection in the slot freed by HTTP/3", tcp.get(t, hostA), "a1")
	wantMetric(t, p, seriesHTTPConns, 1)
	// ...and holds against HTTP/3.
	wantExcessiveLoad(t, "a QUIC connection with one HTTP/3 and one TCP connection open", quicRefusal(t, h3Addr))
	wantMetric(t, p, seriesNodeRefusals, refused+2)
	tcp.Close()
	wantMetric(t, p, seriesHTTPConns, 0)
	c4, tr4 := newH3Client(t, 0)
	wantH3From(t, "a new HTTP/3 connection once the TCP one closed", h3Get(t, c4, h3Addr, hostA), "a1")
	wantMetric(t, p, seriesH3Conns, 2)

	// Back to zero, exactly, once the clients close.
	tr2.Close()
	tr4.Close()
	wantMetric(t, p, seriesH3Conns, 0)
	wantNoConns(t, "every client closed", p.srv.conns, "a", "b")
	wantMetric(t, p, seriesNodeRefusals, refused+2)
}

// TestHTTP3MaxConnectionsPerApp: an HTTP/3 connection takes a slot of an
// app at its first request for it, shared with TCP connections; a request
// that would need one more is answered 503 PL06 (without Connection, which
// HTTP/3 forbids) and its connection serves on.
func TestHTTP3MaxConnectionsPerApp(t *testing.T) {
	a := startMachine(t, "a1", nil, nil)
	b := startMachine(t, "b1", nil, nil)
	p, h3Addr := startH3Proxy(t, "[proxy]\nmax_connections_per_app = 1\n"+twoApps(a, b))

	c1, tr1 := newH3Client(t, 0)
	wantH3From(t, "HTTP/3 connection 1 to a", h3Get(t, c1, h3Addr, hostA), "a1")
	wantMetric(t, p, seriesAppAConns, 1)

	c2, tr2 := newH3Client(t, 0)
	r := h3Get(t, c2, h3Addr, hostA)
	wantProxyError(t, r, CodeAppConnLimit)
	if got := r.header.Get("Connection"); got != "" {
		t.Errorf("HTTP/3 refusal: got Connection %q, want none", got)
	}
	if got := r.header.Get("Retry-After"); got != "1" {
		t.Errorf("HTTP/3 refusal: got Retry-After %q, want 1", got)
	}
	wantMetric(t, p, seriesAppARefusals, 1)

	// The refused connection serves on, for b, whose slot it takes.
	wantH3From(t, "HTTP/3 connection 2 to b after its refusal for a", h3Get(t, c2, h3Addr, hostB), "b1")
	wantMetric(t, p, seriesAppBConns, 1)
	wantMetric(t, p, seriesH3Conns, 2)
	// The connection holding a's slot is never refused; a TCP connection
	// to a is, as the app's limit counts both.
	for i := range 3 {
		wantH3From(t, fmt.Sprintf("HTTP/3 connection 1 to a again (%d)", i), h3Get(t, c1, h3Addr, hostA), "a1")
	}
	tcp := dialRaw(t, p.httpAddr)
	wantConnRefused(t, tcp.get(t, hostA), CodeAppConnLimit, tcp.br)
	wantMetric(t, p, seriesAppARefusals, 2)
	wantMetric(t, p, seriesAppAConns, 1)

	// Closing connection 1 frees a's slot: connection 2 takes it.
	tr1.Close()
	wantMetric(t, p, seriesAppAConns, 0)
	wantH3From(t, "HTTP/3 connection 2 to a once 1 closed", h3Get(t, c2, h3Addr, hostA), "a1")
	wantMetric(t, p, seriesAppAConns, 1)

	tr2.Close()
	wantMetric(t, p, seriesH3Conns, 0)
	wantMetric(t, p, seriesAppAConns, 0)
	wantMetric(t, p, seriesAppBConns, 0)
	wantNoConns(t, "every client closed", p.srv.conns, "a", "b")
	wantMetric(t, p, seriesAppARefusals, 2)
}

// TestHTTP3ConnLimitReleased: each way an HTTP/3 connection ends gives its
// slots back exactly once, and a failed handshake takes none.
func TestHTTP3ConnLimitReleased(t *testing.T) {
	m := startMachine(t, "m1", nil, nil)
	p, h3Addr := startH3Proxy(t, oneApp("", []string{m.addr})+"[proxy]\nmax_connections = 100\nidle_timeout = \"300ms\"\n")
	lim := p.srv.conns

	// A handshake that fails (no ALPN in common) is never counted.
	if _, err := dialQUIC(t, h3Addr, "h2"); err == nil {
		t.Fatal("QUIC handshake offering only h2: got a connection, want it refused")
	}
	// The client closes.
	c, tr := newH3Client(t, 0)
	wantH3From(t, "a request", h3Get(t, c, h3Addr, webHost), "m1")
	tr.Close()
	// The edge closes an idle connection (idle_timeout).
	c, _ = newH3Client(t, 0)
	wantH3From(t, "a request", h3Get(t, c, h3Addr, webHost), "m1")
	// A connection that never sends a request, closed by the client.
	q, err := dialQUIC(t, h3Addr, http3.NextProtoH3)
	if err != nil {
		t.Fatalf("QUIC handshake: %v", err)
	}
	q.CloseWithError(0, "")
	// A connection that never sends a request, closed by the edge when
	// idle.
	if _, err := dialQUIC(t, h3Addr, http3.NextProtoH3); err != nil {
		t.Fatalf("QUIC handshake: %v", err)
	}

	eventually(t, 10*time.Second, "every HTTP/3 connection released", func() bool {
		return lim.total.Load() == 0 && lim.listeners["http3"].Load() == 0 && lim.appConnsOf("web").n.Load() == 0
	})
	if got := metricValue(p.metrics(t), seriesNodeRefusals); got != 0 {
		t.Errorf("%s: got %v, want 0 (nothing was over the limit)", seriesNodeRefusals, got)
	}
	// Nothing released twice: a new connection counts as one.
	c, _ = newH3Client(t, 0)
	wantH3From(t, "a request at the end", h3Get(t, c, h3Addr, webHost), "m1")
	if total, h3, app := lim.total.Load(), lim.listeners["http3"].Load(), lim.appConnsOf("web").n.Load(); total != 1 || h3 != 1 || app != 1 {
		t.Errorf("one HTTP/3 connection open: got node %d, http3 %d, app %d; want 1, 1, 1", total, h3, app)
	}
}

// TestHTTP3ConnLimitShutdown: the HTTP/3 connections open when the node
// stops (one idle, one with a request in flight, one whose client ignores
// GOAWAY) have all given their slots back when Run returns.
func TestHTTP3ConnLimitShutdown(t *testing.T) {
	g := newGate()
	defer g.open()
	m := startMachine(t, "m1", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			g.wait(r)
		}
		io.WriteString(w, "m1")
	}, nil)
	p, h3Addr := startH3Proxy(t, oneApp("", []string{m.addr})+"[proxy]\nmax_connections = 100\ndrain_timeout = \"1s\"\n")
	lim := p.srv.conns

	idle, _ := newH3Client(t, 0)
	wantH3From(t, "a request on the idle connection", h3Get(t, idle, h3Addr, webHost), "m1")
	busy, _ := newH3Client(t, 0)
	res := make(chan result, 1)
	go func() { res <- do(busy, newRequest(t, http.MethodGet, "https://"+h3Addr+"/hold", webHost, nil)) }()
	eventually(t, 10*time.Second, "request in flight on the machine", func() bool { return m.inflight.Load() == 1 })
	deaf, err := dialQUIC(t, h3Addr, http3.NextProtoH3) // reads no GOAWAY
	if err != nil {
		t.Fatalf("QUIC handshake: %v", err)
	}
	wantMetric(t, p, seriesH3Conns, 3)
	wantMetric(t, p, seriesAppWebConns, 2)

	p.cancel()
	g.open()
	if r := <-res; r.err != nil || r.status != http.StatusOK || r.body != "m1" {
		t.Errorf("request in flight across the stop: got %d %q (err %v), want 200 from m1", r.status, r.body, r.err)
	}
	if err := p.stop(t); err != nil {
		t.Fatalf("Run: got %v, want nil", err)
	}
	// No polling: Run returns after every slot came back.
	wantNoConns(t, "after Run returned", lim, "web")
	select {
	case <-deaf.Context().Done():
	case <-time.After(10 * time.Second):
		t.Error("a QUIC connection that ignored GOAWAY: still open 10s after Run returned, want it closed")
	}
}

// TestHTTP3SlowHeadersCut: an HTTP/3 client that opens request streams
// and never finishes their HEADERS frame, while keeping its connection
// alive with PINGs, has the connection closed after proxy.idle_timeout
// (quic-go alone would hold it for as long as the client likes); other
// clients are served meanwhile, and a connection whose request is still
// being answered is not cut however long that takes (neither by godwit
// nor by QUIC's idle timeout, for a client that sends no PINGs).
func TestHTTP3SlowHeadersCut(t *testing.T) {
	const idle = 700 * time.Millisecond
	m := startMachine(t, "m1", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			// A long poll: the answer comes after three idle timeouts
			// without a byte on the connection (simulated work).
			select {
			case <-time.After(3 * idle):
			case <-r.Context().Done():
				return
			}
		}
		io.WriteString(w, "ok")
	}, nil)
	_, addr := startH3Proxy(t, "[proxy]\nidle_timeout = \"700ms\"\n"+oneApp("", []string{m.addr}))

	// A request that outlasts the idle timeout, on a connection of its own.
	c, _ := newH3Client(t, 0)
	slow := make(chan result, 1)
	go func() { slow <- do(c, newRequest(t, http.MethodGet, "https://"+addr+"/slow", webHost, nil)) }()

	// The slowloris: streams with half a HEADERS frame each, PINGs every
	// 100 ms so that QUIC's own idle timeout never fires.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now() // before the edge can have accepted the connection
	qc, err := quic.DialAddr(ctx, addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{http3.NextProtoH3}},
		&quic.Config{KeepAlivePeriod: 100 * time.Millisecond, MaxIdleTimeout: time.Minute})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { qc.CloseWithError(0, "") })
	for range 10 {
		str, err := qc.OpenStreamSync(ctx)
		if err != nil {
			t.Fatalf("open stream: %v", err)
		}
		str.Write([]byte{h3FrameHeaders, 40, 0, 0, 'x'}) // 40 bytes announced, 3 sent
	}
	select {
	case <-qc.Context().Done():
	case <-time.After(idle + 5*time.Second):
		t.Fatalf("slowloris connection still open %v after its streams stalled, want closed after idle_timeout (%v)", time.Since(start).Round(time.Millisecond), idle)
	}
	if took := time.Since(start); took < idle {
		t.Errorf("slowloris connection closed after %v, want no sooner than idle_timeout (%v)", took.Round(time.Millisecond), idle)
	} else {
		t.Logf("slowloris connection closed after %v", took.Round(time.Millisecond))
	}

	c2, _ := newH3Client(t, 0)
	if r := h3Get(t, c2, addr, webHost); r.err != nil || r.status != http.StatusOK || r.body != "ok" {
		t.Fatalf("another client, after the slowloris: got %d %q (err %v), want 200 \"ok\"", r.status, r.body, r.err)
	}
	if r := <-slow; r.err != nil || r.status != http.StatusOK || r.body != "ok" {
		t.Fatalf("request answered after %v: got %d %q (err %v), want 200 \"ok\" on a connection left open", 3*idle, r.status, r.body, r.err)
	}
}
