package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
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

// TestContentLengthWithTransferEncoding covers a request with both framing
// headers, the classic request smuggling vector (RFC 9112 6.1).
func TestContentLengthWithTransferEncoding(t *testing.T) {
	m := startMachine(t, "m1", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%d bytes, Content-Length header %q, Transfer-Encoding %v", len(b), r.Header.Values("Content-Length"), r.TransferEncoding)
	}, nil)
	p := startProxy(t, oneApp("", []string{m.addr}))
	raw := "POST / HTTP/1.1\r\nHost: web.example.com\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n" +
		"3\r\nabc\r\n0\r\n\r\n"

	t.Run("refused", func(t *testing.T) {
		// Wanted: 400, and the machine never sees the request. But
		// net/http's server deletes Content-Length when Transfer-Encoding
		// is chunked before any handler runs (as RFC 9112 6.3 lets an
		// intermediary do), so Handler.serve cannot tell; refusing needs a
		// look at the raw request head, which godwit does not take yet.
		t.Skip("known gap: net/http hides a Content-Length sent with Transfer-Encoding from the handler")
		resp, _ := rawExchange(t, p.httpAddr, raw)
		if resp.StatusCode != http.StatusBadRequest || m.requests.Load() != 0 {
			t.Fatalf("got status %d and %d requests on the machine, want 400 and 0", resp.StatusCode, m.requests.Load())
		}
	})
	t.Run("framed by Transfer-Encoding alone", func(t *testing.T) {
		// What holds today: the machine sees one framing only, the one the
		// proxy read the body by, so the two cannot disagree on where the
		// request ends.
		resp, body := rawExchange(t, p.httpAddr, raw)
		want := `3 bytes, Content-Length header [], Transfer-Encoding [chunked]`
		if resp.StatusCode != http.StatusOK || body != want {
			t.Fatalf("got %d %q, want 200 %q", resp.StatusCode, body, want)
		}
	})
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
