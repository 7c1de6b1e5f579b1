package proxy

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestMalformedRequests(t *testing.T) {
	m := startMachine(t, "m1", nil, nil)
	p := startProxy(t, oneApp("", []string{m.addr})+"[proxy]\nmax_header_bytes = 4096\n")

	for _, tc := range []struct {
		name   string
		raw    string
		status int
	}{
		{
			name: "two different Content-Lengths",
			raw: "POST / HTTP/1.1\r\nHost: web.example.com\r\nContent-Length: 5\r\nContent-Length: 30\r\n\r\n" +
				"helloGET /smuggled HTTP/1.1\r\n\r\n",
			status: http.StatusBadRequest,
		},
		{
			name:   "headers beyond max_header_bytes",
			raw:    "GET / HTTP/1.1\r\nHost: web.example.com\r\nX-Big: " + strings.Repeat("a", 16<<10) + "\r\n\r\n",
			status: http.StatusRequestHeaderFieldsTooLarge,
		},
		{
			name:   "control byte in a header value",
			raw:    "GET / HTTP/1.1\r\nHost: web.example.com\r\nX-Bad: a\x01b\r\n\r\n",
			status: http.StatusBadRequest,
		},
		{
			name:   "space in a header name",
			raw:    "GET / HTTP/1.1\r\nHost: web.example.com\r\nX Bad: x\r\n\r\n",
			status: http.StatusBadRequest,
		},
		{
			name:   "unknown transfer coding",
			raw:    "POST / HTTP/1.1\r\nHost: web.example.com\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
			status: http.StatusNotImplemented,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := m.requests.Load()
			resp, body := rawExchange(t, p.httpAddr, tc.raw)
			if resp.StatusCode != tc.status {
				t.Errorf("got status %d (body %q), want %d", resp.StatusCode, body, tc.status)
			}
			if got := m.requests.Load() - before; got != 0 {
				last := m.lastRequest()
				t.Errorf("machine got %d requests (last %s %s, Content-Length %d, Transfer-Encoding %v), want 0",
					got, last.Method, last.RequestURI, last.ContentLength, last.TransferEncoding)
			}
		})
	}
}

// TestContentLengthWithTransferEncoding covers requests with both framing
// headers, the classic request smuggling vector (RFC 9112 6.1), and a
// folded header line, on both listeners. net/http drops Content-Length
// before the handler runs, so only the connection's smuggleConn sees them:
// the request gets 400 PX01, the machine never sees it, and the connection
// closes.
func TestContentLengthWithTransferEncoding(t *testing.T) {
	m := startMachine(t, "m1", nil, nil)
	p := startProxy(t, oneApp("", []string{m.addr}))
	const post = "POST / HTTP/1.1\r\nHost: web.example.com\r\n"
	for _, l := range proxyListeners(p) {
		for _, tc := range []struct{ name, raw string }{
			{"Content-Length first", post + "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"},
			{"Transfer-Encoding first", post + "Transfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n3\r\nabc\r\n0\r\n\r\n"},
			{
				"chunked with Content-Length 0",
				post + "Transfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: web.example.com\r\n\r\n",
			},
			{"lower-case names", post + "transfer-encoding: chunked\r\ncontent-length: 6\r\n\r\n3\r\nabc\r\n0\r\n\r\n"},
			{"HTTP/1.0", "POST / HTTP/1.0\r\nHost: web.example.com\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc"},
			{"folded header line", post + "Content-Length: 3\r\nX-Note: a\r\n b\r\n\r\nabc"},
		} {
			t.Run(l.name+"/"+tc.name, func(t *testing.T) {
				c, br := l.dial(t)
				io.WriteString(c, tc.raw)
				wantRefused(t, br)
				wantClosed(t, br)
				if got := m.requests.Load(); got != 0 {
					t.Errorf("machine got %d requests, want 0", got)
				}
			})
		}
	}
}

// TestSmugglingPipelined sends requests one after the other on one
// connection, in one write: those before a smuggling attempt are served,
// the attempt is refused and the connection closed.
func TestSmugglingPipelined(t *testing.T) {
	m := startMachine(t, "m1", nil, nil)
	p := startProxy(t, oneApp("", []string{m.addr}))
	const (
		get      = "GET /first HTTP/1.1\r\nHost: web.example.com\r\n\r\n"
		smuggler = "POST / HTTP/1.1\r\nHost: web.example.com\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n"
	)
	for _, l := range proxyListeners(p) {
		for _, tc := range []struct {
			name, first string
			machine     int64 // requests the first one sends the machine
		}{
			{"after a request", get, 1},
			{"after a refused upgrade", "GET /ws HTTP/1.1\r\nHost: web.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 1},
			{"after OPTIONS *", "OPTIONS * HTTP/1.1\r\nHost: web.example.com\r\n\r\n", 0},
		} {
			t.Run(l.name+"/"+tc.name, func(t *testing.T) {
				before := m.requests.Load()
				c, br := l.dial(t)
				io.WriteString(c, tc.first+smuggler)
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("first response: got error %v, want 200", err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("first response: got %d, want 200", resp.StatusCode)
				}
				wantRefused(t, br)
				wantClosed(t, br)
				if got := m.requests.Load() - before; got != tc.machine {
					t.Errorf("machine got %d requests, want %d", got, tc.machine)
				}
			})
		}
	}
}

// TestPipelinedBodies: requests with bodies of both framings, chunk
// extensions and trailers, one after the other on a keep-alive connection,
// all reach the machine intact.
func TestPipelinedBodies(t *testing.T) {
	m := startMachine(t, "m1", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %q %q", r.Method, r.URL.Path, b, r.Trailer.Get("X-Sum"))
	}, nil)
	p := startProxy(t, oneApp("", []string{m.addr}))
	const host = "Host: web.example.com\r\n"
	raw := "POST /length HTTP/1.1\r\n" + host + "Content-Length: 5\r\n\r\nhello" +
		"POST /chunked HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n" +
		"5;ext=\"1\"\r\nhello\r\n6\r\n world\r\n0;last\r\nX-Sum: 42\r\n\r\n" +
		"GET /get HTTP/1.1\r\n" + host + "\r\n"
	want := []string{`POST /length "hello" ""`, `POST /chunked "hello world" "42"`, `GET /get "" ""`}
	for _, l := range proxyListeners(p) {
		t.Run(l.name, func(t *testing.T) {
			c, br := l.dial(t)
			for round := range 2 { // the connection stays usable
				io.WriteString(c, raw)
				for i, w := range want {
					resp, err := http.ReadResponse(br, nil)
					if err != nil {
						t.Fatalf("round %d, response %d: got error %v, want 200 %q", round, i, err, w)
					}
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK || string(b) != w {
						t.Fatalf("round %d, response %d: got %d %q, want 200 %q", round, i, resp.StatusCode, b, w)
					}
				}
			}
		})
	}
}

// proxyListener dials one of a test proxy's client listeners.
type proxyListener struct {
	name string
	dial func(t *testing.T) (net.Conn, *bufio.Reader)
}

// proxyListeners returns the proxy's http listener and its https one
// with HTTP/1.1 negotiated; the connections close when the test ends and
// time out after 10s.
func proxyListeners(p *testProxy) []proxyListener {
	setup := func(t *testing.T, c net.Conn) (net.Conn, *bufio.Reader) {
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		return c, bufio.NewReader(c)
	}
	return []proxyListener{
		{"http", func(t *testing.T) (net.Conn, *bufio.Reader) {
			c, err := net.Dial("tcp", p.httpAddr)
			if err != nil {
				t.Fatalf("dial proxy: %v", err)
			}
			return setup(t, c)
		}},
		{"https", func(t *testing.T) (net.Conn, *bufio.Reader) {
			c, err := tls.Dial("tcp", p.httpsAddr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
			if err != nil {
				t.Fatalf("dial proxy over TLS: %v", err)
			}
			if got := c.ConnectionState().NegotiatedProtocol; got != "http/1.1" {
				t.Fatalf("ALPN: got %q, want http/1.1", got)
			}
			return setup(t, c)
		}},
	}
}

// wantRefused reads a response from br and checks it is the proxy's 400
// PX01, announcing that the connection closes.
func wantRefused(t *testing.T, br *bufio.Reader) {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read response: got error %v, want 400 %s", err, CodeAmbiguousFraming)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("read response body: %v", err)
	}
	wantProxyError(t, result{status: resp.StatusCode, header: resp.Header, body: string(b)}, CodeAmbiguousFraming)
	if !resp.Close {
		t.Errorf("response header Connection %q, want close", resp.Header.Get("Connection"))
	}
}

// wantClosed checks that the proxy closed the connection after what br
// has read.
func wantClosed(t *testing.T, br *bufio.Reader) {
	t.Helper()
	b, err := br.ReadByte()
	var ne net.Error
	switch {
	case err == nil:
		t.Errorf("read %q after the response, want the connection closed", b)
	case errors.As(err, &ne) && ne.Timeout():
		t.Errorf("connection still open 10s after the response, want it closed")
	case err != io.EOF && !errors.Is(err, syscall.ECONNRESET):
		t.Errorf("read after the response: got error %v, want EOF", err)
	}
}

// respond writes a 200 response with body to c.
func respond(c net.Conn, extraHeader, body string) {
	fmt.Fprintf(c, "HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s", extraHeader, len(body), body)
}

// serveOK answers every request on c with 200 "ok" until c fails.
func serveOK(c net.Conn) {
	br := bufio.NewReader(c)
	for {
		if _, err := readRequest(br); err != nil {
			return
		}
		respond(c, "", "ok")
	}
}

func TestMisbehavingMachines(t *testing.T) {
	cutChunked := func(c net.Conn) {
		readRequest(bufio.NewReader(c))
		io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
		c.Close()
	}
	wantCut := func(t *testing.T, resp *http.Response, body []byte, err error) {
		if resp == nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("got %v (err %v), want the machine's 200 head", resp, err)
		}
		if !errors.Is(err, io.ErrUnexpectedEOF) || string(body) != "hello" {
			t.Errorf("body: got %q, err %v; want \"hello\", then unexpected EOF", body, err)
		}
	}
	for _, tc := range []struct {
		name    string
		upgrade bool // the first request asks for a protocol upgrade
		// first serves the machine's first connection; later ones get serveOK.
		first func(c net.Conn)
		// check looks at the client's view of the first request.
		check func(t *testing.T, resp *http.Response, body []byte, err error)
	}{
		{
			name: "reset mid-response",
			first: func(c net.Conn) {
				readRequest(bufio.NewReader(c))
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
				c.(*net.TCPConn).SetLinger(0)
				c.Close()
			},
			check: func(t *testing.T, resp *http.Response, body []byte, err error) {
				if resp == nil || resp.StatusCode != http.StatusOK {
					t.Fatalf("got %v (err %v), want the machine's 200 head", resp, err)
				}
				if !errors.Is(err, io.ErrUnexpectedEOF) || string(body) != "0123456789" {
					t.Errorf("body: got %q, err %v; want the 10 bytes sent, then unexpected EOF", body, err)
				}
			},
		},
		{
			name:  "chunked response cut by a close",
			first: cutChunked,
			check: wantCut,
		},
		{
			name:    "refused upgrade with a cut response",
			upgrade: true,
			first:   cutChunked,
			check:   wantCut,
		},
		{
			name: "close before any response",
			first: func(c net.Conn) {
				readRequest(bufio.NewReader(c))
				c.Close()
			},
			check: func(t *testing.T, resp *http.Response, body []byte, err error) {
				if err != nil || resp.StatusCode != http.StatusBadGateway || resp.Header.Get(HeaderError) != string(CodeUpstreamFailed) {
					t.Fatalf("got %v %q (err %v), want 502 with %s %s", resp, body, err, HeaderError, CodeUpstreamFailed)
				}
			},
		},
		{
			name: "Connection: close but the socket stays open",
			first: func(c net.Conn) {
				br := bufio.NewReader(c)
				readRequest(br)
				respond(c, "Connection: close\r\n", "ok")
				// Read on and never answer: a proxy that reused the
				// connection would wait here forever.
				io.Copy(io.Discard, br)
			},
			check: wantOK,
		},
		{
			name: "bytes after the response",
			first: func(c net.Conn) {
				br := bufio.NewReader(c)
				readRequest(br)
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"+
					"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nevil!")
				io.Copy(io.Discard, br)
			},
			check: wantOK,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := startRawMachine(t, func(n int64, c net.Conn) {
				if n == 1 {
					tc.first(c)
					return
				}
				serveOK(c)
			})
			p := startProxy(t, oneApp("", []string{m.addr}))
			c := newClient(t)

			req := newRequest(t, http.MethodGet, p.url("/first"), webHost, nil)
			if tc.upgrade {
				req.Header.Set("Connection", "Upgrade")
				req.Header.Set("Upgrade", "websocket")
			}
			resp, err := c.Do(req)
			var body []byte
			if err == nil {
				body, err = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
			tc.check(t, resp, body, err)

			for i := range 3 {
				r := p.get(t, c, webHost, "/next")
				if r.err != nil || r.status != http.StatusOK || r.body != "ok" {
					t.Fatalf("request %d after: got %d %q (err %v), want 200 \"ok\"", i, r.status, r.body, r.err)
				}
			}
			if got := m.accepts.Load(); got != 2 {
				t.Errorf("connections to the machine: got %d, want 2 (the first one never reused, the second one kept)", got)
			}
			if st := p.machineStatus(t, "m1"); st.Health != "passing" {
				t.Errorf("machine health: got %q, want \"passing\"", st.Health)
			}
		})
	}
}

func wantOK(t *testing.T, resp *http.Response, body []byte, err error) {
	t.Helper()
	if err != nil || resp.StatusCode != http.StatusOK || string(body) != "ok" {
		t.Fatalf("got %v %q (err %v), want 200 \"ok\"", resp, body, err)
	}
}

// TestHugeResponseHead: a machine that sends an endless response head gets
// a 502, and the proxy does not buffer it all.
func TestHugeResponseHead(t *testing.T) {
	m := startRawMachine(t, func(n int64, c net.Conn) {
		if n > 1 {
			serveOK(c)
			return
		}
		readRequest(bufio.NewReader(c))
		io.WriteString(c, "HTTP/1.1 200 OK\r\n")
		line := "X-Junk: " + strings.Repeat("a", 1000) + "\r\n"
		bw := bufio.NewWriterSize(c, 64<<10)
		for range 256 << 10 { // 256 MiB of header lines, if read to the end
			if _, err := bw.WriteString(line); err != nil {
				return
			}
		}
		bw.WriteString("\r\n")
		bw.Flush()
	})
	p := startProxy(t, oneApp("", []string{m.addr}))
	c := newClient(t)

	mem := watchMemory()
	r := p.get(t, c, webHost, "/")
	mem.check(t, "huge response head")
	wantProxyError(t, r, CodeUpstreamFailed)
}
