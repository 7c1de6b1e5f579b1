package proxy

import (
	"bytes"
	"crypto/tls"
	"errors"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// HTTP/2 pseudo-header and field abuse (issue 8), sent as raw HEADERS
// frames over TLS: net/http resets most such streams itself (RFC 9113
// 8.1.1, 8.2, 8.3); the rest the edge must answer 400 or forward in a form
// the machine reads as the edge did.

type h2Case struct {
	name     string
	fields   [][2]string // in order; pseudo-header fields included
	data     string      // DATA after HEADERS, if not ""
	trailers [][2]string // a trailing HEADERS after DATA
	// reset: the stream (or the connection) is reset before any response;
	// otherwise status is the response's.
	reset  bool
	status int
	// either: net/http may reset the stream or let it through, by timing;
	// a complete request the machine gets must be up.
	either bool
	code   Code
	up     *smuggleUp // what the machine gets; nil: no complete request
}

func h2Req(method, path string, extra ...[2]string) [][2]string {
	f := [][2]string{{":method", method}, {":scheme", "https"}, {":authority", webHost}, {":path", path}}
	return append(f, extra...)
}

func h2Cases() []h2Case {
	get := upGET("/")
	reset := func(name string, fields ...[2]string) h2Case { return h2Case{name: name, fields: fields, reset: true} }
	// net400: net/http answers 400 itself, without the handler.
	net400 := func(name string, fields ...[2]string) h2Case {
		return h2Case{name: name, fields: fields, status: http.StatusBadRequest}
	}
	px2 := func(name string, fields [][2]string) h2Case {
		return h2Case{name: name, fields: fields, status: http.StatusBadRequest, code: CodeMalformedRequest}
	}
	post := func(body string, chunked bool) *smuggleUp { u := upBody("POST", body, chunked); return &u }
	return []h2Case{
		{name: "valid GET", fields: h2Req("GET", "/"), status: http.StatusOK, up: &get},
		reset("duplicate :path", append(h2Req("GET", "/"), [2]string{":path", "/admin"})...),
		reset("duplicate :method", append(h2Req("GET", "/"), [2]string{":method", "POST"})...),
		reset("missing :method", [2]string{":scheme", "https"}, [2]string{":authority", webHost}, [2]string{":path", "/"}),
		reset("missing :path", [2]string{":method", "GET"}, [2]string{":scheme", "https"}, [2]string{":authority", webHost}),
		reset("missing :scheme", [2]string{":method", "GET"}, [2]string{":authority", webHost}, [2]string{":path", "/"}),
		reset(":scheme not http(s)", [2]string{":method", "GET"}, [2]string{":scheme", "ftp"}, [2]string{":authority", webHost}, [2]string{":path", "/"}),
		reset("pseudo-header after a field", [2]string{":method", "GET"}, [2]string{":scheme", "https"}, [2]string{"x-a", "b"}, [2]string{":authority", webHost}, [2]string{":path", "/"}),
		reset("unknown pseudo-header", append(h2Req("GET", "/"), [2]string{":foo", "bar"})...),
		reset("response pseudo-header", append(h2Req("GET", "/"), [2]string{":status", "200"})...),
		reset("userinfo in :authority", [2]string{":method", "GET"}, [2]string{":scheme", "https"}, [2]string{":authority", "u@" + webHost}, [2]string{":path", "/"}),
		reset("relative :path", h2Req("GET", "a/b")...),
		reset("upper-case field name", append(h2Req("GET", "/"), [2]string{"X-Upper", "v"})...),
		reset("space in a field name", append(h2Req("GET", "/"), [2]string{"x a", "v"})...),
		reset("CRLF in a field value", append(h2Req("GET", "/"), [2]string{"x-a", "b\r\nx-b: c"})...),
		reset("NUL in a field value", append(h2Req("GET", "/"), [2]string{"x-a", "b\x00c"})...),
		net400("connection", append(h2Req("GET", "/"), [2]string{"connection", "keep-alive"})...),
		net400("transfer-encoding", append(h2Req("POST", "/"), [2]string{"transfer-encoding", "chunked"})...),
		net400("keep-alive", append(h2Req("GET", "/"), [2]string{"keep-alive", "timeout=5"})...),
		net400("proxy-connection", append(h2Req("GET", "/"), [2]string{"proxy-connection", "keep-alive"})...),
		net400("upgrade", append(h2Req("GET", "/"), [2]string{"upgrade", "websocket"})...),
		net400("te other than trailers", append(h2Req("GET", "/"), [2]string{"te", "gzip"})...),
		px2("space in :method", h2Req("GET /admin", "/")),
		{
			name: "te trailers", fields: append(h2Req("GET", "/"), [2]string{"te", "trailers"}), status: http.StatusOK,
			up: func() *smuggleUp { u := withHeader(upGET("/"), "Te", "trailers"); return &u }(),
		},
		px2(":authority and a different host", append(h2Req("GET", "/"), [2]string{"host", "other.example"})),
		px2("two host fields", append(h2Req("GET", "/"), [2]string{"host", webHost}, [2]string{"host", "other.example"})),
		{name: ":authority and the same host", fields: append(h2Req("GET", "/"), [2]string{"host", webHost}), status: http.StatusOK, up: &get},
		{
			name:   "host without :authority",
			fields: [][2]string{{":method", "GET"}, {":scheme", "https"}, {":path", "/"}, {"host", webHost}}, status: http.StatusOK, up: &get,
		},
		px2(":path * with GET", h2Req("GET", "*")),
		px2(":path with a fragment", h2Req("GET", "/a#b")),
		reset(":path with CRLF", h2Req("GET", "/a HTTP/1.1\r\nx:")...),
		px2(":path with a space only", h2Req("GET", "/a b")),
		{name: "content-length matching DATA", fields: h2Req("POST", "/", [2]string{"content-length", "3"}), data: "abc", status: http.StatusOK, up: post("abc", false)},
		{name: "content-length above DATA", fields: h2Req("POST", "/", [2]string{"content-length", "5"}), data: "abc", either: true},
		{name: "content-length below DATA", fields: h2Req("POST", "/", [2]string{"content-length", "3"}), data: "abcdef", reset: true},
		{name: "no content-length", fields: h2Req("POST", "/"), data: "abc", status: http.StatusOK, up: post("abc", true)},
		{
			name: "forbidden trailer", fields: h2Req("POST", "/", [2]string{"trailer", "content-length"}), data: "abc",
			trailers: [][2]string{{"content-length", "5"}, {"x-sum", "1"}}, either: true,
			up: func() *smuggleUp {
				u := post("abc", true)
				u.trailer = map[string]string{"Content-Length": "-"}
				return u
			}(),
		},
	}
}

func TestSmugglingH2(t *testing.T) {
	m, records := startCapturingMachine(t)
	p := startProxy(t, oneApp("", []string{m.addr}))
	var consumed int64
	var rejected, forwarded int
	cases := h2Cases()
	for _, tc := range cases {
		if tc.up != nil {
			forwarded++
		} else {
			rejected++
		}
		t.Run(tc.name, func(t *testing.T) {
			reset, status, code := exchangeOnce(t, m, &consumed, records, tc, func() (bool, int, string) { return h2Exchange(t, p.httpsAddr, tc) })
			switch {
			case tc.either:
			case tc.reset && !reset:
				t.Errorf("got status %d %s, want the stream reset", status, code)
			case !tc.reset && reset:
				t.Errorf("got the stream reset, want status %d", tc.status)
			case !tc.reset && (status != tc.status || tc.code != "" && code != string(tc.code)):
				t.Errorf("got status %d %q, want %d %q", status, code, tc.status, tc.code)
			}
		})
	}
	t.Logf("%d HTTP/2 cases: %d rejected, %d normalized and forwarded", len(cases), rejected, forwarded)
}

// exchangeOnce runs exchange, which sends tc to the edge, and checks what
// machine m got meanwhile: tc.up, or no complete request when tc expects
// none or the edge refused it. It returns what exchange saw.
func exchangeOnce(t *testing.T, m *rawMachine, consumed *int64, records <-chan upstreamRecord, tc h2Case, exchange func() (reset bool, status int, code string)) (reset bool, status int, code string) {
	t.Helper()
	skipRecords(t, consumed, m.accepts.Load(), records)
	before := m.accepts.Load()
	reset, status, code = exchange()
	n := m.accepts.Load() - before
	*consumed += n
	sc := smuggleCase{incomplete: tc.up == nil || tc.either && (reset || status >= 400)}
	if !sc.incomplete {
		sc.up = []smuggleUp{*tc.up}
	}
	checkUpstream(t, sc, n, records)
	return reset, status, code
}

// h2Exchange sends tc on a new HTTP/2 connection over TLS and reports
// whether stream 1 (or the connection) was reset before a response, or
// the response's status and Godwit-Error.
func h2Exchange(t *testing.T, addr string, tc h2Case) (reset bool, status int, code string) {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if c.ConnectionState().NegotiatedProtocol != "h2" {
		t.Fatalf("ALPN: got %q, want h2", c.ConnectionState().NegotiatedProtocol)
	}
	c.Write([]byte(http2.ClientPreface))
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.WriteSettings()

	block := func(fields [][2]string) []byte {
		var buf bytes.Buffer
		enc := hpack.NewEncoder(&buf)
		for _, f := range fields {
			enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		return buf.Bytes()
	}
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block(tc.fields), EndStream: tc.data == "", EndHeaders: true})
	if tc.data != "" {
		fr.WriteData(1, tc.trailers == nil, []byte(tc.data))
	}
	if tc.trailers != nil {
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block(tc.trailers), EndStream: true, EndHeaders: true})
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				continue // a frame the framer refused; the server's answer follows
			}
			t.Fatalf("read frame: %v", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == 1 {
				return true, 0, ""
			}
		case *http2.GoAwayFrame:
			return true, 0, ""
		case *http2.MetaHeadersFrame:
			if f.StreamID != 1 {
				continue
			}
			var st int
			for _, hf := range f.Fields {
				responseField(hf.Name, hf.Value, &st, &code)
			}
			if st >= 200 {
				return false, st, code
			}
		}
	}
}

// responseField notes a response's :status and Godwit-Error fields.
func responseField(name, value string, status *int, code *string) {
	switch name {
	case ":status":
		*status = atoiOr(value)
	case "godwit-error":
		*code = value
	}
}

func atoiOr(s string) int {
	n := 0
	for _, b := range []byte(s) {
		n = n*10 + int(b-'0')
	}
	return n
}
