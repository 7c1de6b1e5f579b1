package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The request smuggling and malformed HTTP/1 suite (issue 8): raw requests
// over TCP to the http listener, each rejected, or forwarded to a raw
// machine that must get exactly one request per request served, framed
// one way only (RFC 9112).

// smuggleUp is what the machine must get for one request the edge serves.
type smuggleUp struct {
	method, target, host string
	// header lists fields the machine must see, by canonical name, with
	// their values joined by ", "; a value of "-" means the field must be
	// absent.
	header  map[string]string
	body    string
	chunked bool              // framed chunked; otherwise by Content-Length
	trailer map[string]string // trailer fields, as header; checked when not nil
}

// Expected upstream outcomes besides requests.
const (
	upNothing    = iota // the machine must get no connection at all
	upIncomplete        // the machine may get bytes, never a complete request
)

type smuggleCase struct {
	name string
	raw  string
	// status lists the final statuses of the responses, in order.
	status []int
	code   Code // the first response's Godwit-Error, when not ""
	// up lists the requests the machine gets, in order; when empty, the
	// machine gets nothing, or with incomplete set no complete request.
	up         []smuggleUp
	incomplete bool
	continue1  bool // a 100 Continue comes before the first response
	close      bool // the edge closes the connection after the responses
}

const sh = "Host: web.example.com\r\n"

// get is the plain request the machine sees for GET target.
func upGET(target string) smuggleUp {
	return smuggleUp{method: "GET", target: target, host: webHost}
}

func upBody(method, body string, chunked bool) smuggleUp {
	return smuggleUp{method: method, target: "/", host: webHost, body: body, chunked: chunked}
}

func withHeader(u smuggleUp, kv ...string) smuggleUp {
	u.header = make(map[string]string)
	for i := 0; i+1 < len(kv); i += 2 {
		u.header[kv[i]] = kv[i+1]
	}
	return u
}

func smuggleCases() []smuggleCase {
	const (
		bad  = http.StatusBadRequest
		ok   = http.StatusOK
		te   = http.StatusNotImplemented
		big  = http.StatusRequestHeaderFieldsTooLarge
		post = "POST / HTTP/1.1\r\n" + sh
	)
	chunked := post + "Transfer-Encoding: chunked\r\n"
	rej := func(name, raw string, status int) smuggleCase {
		return smuggleCase{name: name, raw: raw, status: []int{status}, close: true}
	}
	px := func(name, raw string) smuggleCase {
		return smuggleCase{name: name, raw: raw, status: []int{bad}, code: CodeAmbiguousFraming, close: true}
	}
	px2 := func(name, raw string) smuggleCase {
		return smuggleCase{name: name, raw: raw, status: []int{bad}, code: CodeMalformedRequest}
	}
	fwd := func(name, raw string, up ...smuggleUp) smuggleCase {
		st := make([]int, len(up))
		for i := range st {
			st[i] = ok
		}
		return smuggleCase{name: name, raw: raw, status: st, up: up}
	}
	// badChunks: chunked framing net/http fails on in the first request;
	// the machine must never get a complete request from it.
	badChunks := func(name, body string) smuggleCase {
		return smuggleCase{name: "chunked/" + name, raw: chunked + "\r\n" + body, status: []int{bad}, code: CodeAmbiguousFraming, incomplete: true, close: true}
	}
	headers := func(n int) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, "X-H%d: v\r\n", i)
		}
		return b.String()
	}
	many := withHeader(upGET("/"), "X-H0", "v", "X-H99", "v")

	return []smuggleCase{
		// Content-Length with Transfer-Encoding (RFC 9112 6.1, 6.3).
		px("CL+TE/Content-Length first", post+"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
		px("CL+TE/Transfer-Encoding first", post+"Transfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
		px("CL+TE/Content-Length 0 and a smuggled request", post+"Transfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n"+sh+"\r\n"),
		px("CL+TE/HTTP/1.0", "POST / HTTP/1.0\r\n"+sh+"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc"),
		rej("CL+TE/unknown coding with Content-Length", post+"Content-Length: 3\r\nTransfer-Encoding: gzip\r\n\r\nabc", te),
		rej("TE/chunked not last", post+"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", te),
		rej("TE/chunked, identity", post+"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", te),
		rej("TE/identity, chunked", post+"Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n", te),
		rej("TE/two field lines", post+"Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", te),
		rej("TE/chunked twice", post+"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", te),
		rej("TE/xchunked", post+"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", te),
		rej("TE/chunked with a parameter", post+"Transfer-Encoding: chunked;q=1\r\n\r\n0\r\n\r\n", te),
		rej("TE/quoted chunked", post+"Transfer-Encoding: \"chunked\"\r\n\r\n0\r\n\r\n", te),
		rej("TE/identity alone", post+"Transfer-Encoding: identity\r\n\r\n", te),
		rej("TE/space before the colon", post+"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", bad),
		rej("TE/vertical tab after chunked", post+"Transfer-Encoding: chunked\x0b\r\n\r\n0\r\n\r\n", bad),
		fwd("TE/upper case and tabs", post+"Transfer-Encoding:\t CHUNKED \t\r\n\r\n3\r\nabc\r\n0\r\n\r\n", upBody("POST", "abc", true)),
		fwd("TE/underscore is not Transfer-Encoding", post+"Transfer_Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc",
			withHeader(upBody("POST", "abc", false), "Transfer_encoding", "-")),
		px("TE/HTTP/1.0 chunked", "POST / HTTP/1.0\r\n"+sh+"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
		px("TE/HTTP/1.0 keep-alive chunked with a smuggled request", "POST / HTTP/1.0\r\n"+sh+"Connection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"+
			"GET /smuggled HTTP/1.1\r\n"+sh+"\r\n"),

		// Content-Length (RFC 9112 6.2, 6.3).
		fwd("CL/the same value twice", post+"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc", upBody("POST", "abc", false)),
		rej("CL/two values", post+"Content-Length: 3\r\nContent-Length: 30\r\n\r\nabcGET /smuggled HTTP/1.1\r\n"+sh+"\r\n", bad),
		rej("CL/a list", post+"Content-Length: 3, 3\r\n\r\nabc", bad),
		rej("CL/a list without space", post+"Content-Length: 3,3\r\n\r\nabc", bad),
		rej("CL/plus sign", post+"Content-Length: +3\r\n\r\nabc", bad),
		rej("CL/minus sign", post+"Content-Length: -1\r\n\r\n", bad),
		rej("CL/hex", post+"Content-Length: 0x3\r\n\r\nabc", bad),
		rej("CL/space inside", post+"Content-Length: 1 2\r\n\r\nabcdefghijkl", bad),
		rej("CL/empty", post+"Content-Length: \r\n\r\n", bad),
		rej("CL/beyond 2^63", post+"Content-Length: 9223372036854775808\r\n\r\n", bad),
		fwd("CL/spaces and leading zeros", post+"Content-Length: \t 003 \r\n\r\nabc", upBody("POST", "abc", false)),
		fwd("CL/a body on GET", "GET / HTTP/1.1\r\n"+sh+"Content-Length: 5\r\n\r\nhello", upBody("GET", "hello", false)),
		fwd("CL/none on POST", post+"\r\n", withHeader(upBody("POST", "", false), "Content-Length", "0")),

		// Field lines (RFC 9112 5, 2.2).
		px("fields/obs-fold", post+"Content-Length: 3\r\nX-Note: a\r\n b\r\n\r\nabc"),
		px("fields/obs-fold with a tab", "GET / HTTP/1.1\r\n"+sh+"X-Note: a\r\n\tb\r\n\r\n"),
		rej("fields/obs-fold of the first field line", "GET / HTTP/1.1\r\n "+sh+"\r\n", bad),
		fwd("fields/bare LF line ends", "GET /lf HTTP/1.1\n"+"Host: web.example.com\nX-A: b\n\n", withHeader(upGET("/lf"), "X-A", "b")),
		fwd("fields/bare LF and a body", "POST / HTTP/1.1\nHost: web.example.com\nContent-Length: 3\n\nabc", upBody("POST", "abc", false)),
		rej("fields/bare CR ends the request line", "GET / HTTP/1.1\r"+sh+"\r\n", bad),
		rej("fields/bare CR ends a field line", "GET / HTTP/1.1\r\n"+sh+"X-A: b\rX-B: c\r\n\r\n", bad),
		rej("fields/bare CR in a value", "GET / HTTP/1.1\r\n"+sh+"X-A: b\rc\r\n\r\n", bad),
		rej("fields/NUL in a value", "GET / HTTP/1.1\r\n"+sh+"X-A: b\x00c\r\n\r\n", bad),
		rej("fields/NUL in a name", "GET / HTTP/1.1\r\n"+sh+"X-\x00A: b\r\n\r\n", bad),
		rej("fields/control byte in a value", "GET / HTTP/1.1\r\n"+sh+"X-A: b\x01c\r\n\r\n", bad),
		rej("fields/DEL in a value", "GET / HTTP/1.1\r\n"+sh+"X-A: b\x7fc\r\n\r\n", bad),
		rej("fields/control byte in a name", "GET / HTTP/1.1\r\n"+sh+"X\x01A: b\r\n\r\n", bad),
		rej("fields/space before the colon", "GET / HTTP/1.1\r\n"+sh+"X-A : b\r\n\r\n", bad),
		rej("fields/tab before the colon", "GET / HTTP/1.1\r\n"+sh+"X-A\t: b\r\n\r\n", bad),
		rej("fields/space inside a name", "GET / HTTP/1.1\r\n"+sh+"X A: b\r\n\r\n", bad),
		rej("fields/empty name", "GET / HTTP/1.1\r\n"+sh+": b\r\n\r\n", bad),
		rej("fields/no colon", "GET / HTTP/1.1\r\n"+sh+"X-A b\r\n\r\n", bad),
		rej("fields/non-token name", "GET / HTTP/1.1\r\n"+sh+"X(A): b\r\n\r\n", bad),
		fwd("fields/value trimmed, tab and obs-text kept", "GET / HTTP/1.1\r\n"+sh+"X-A: \t a\tb\xe9 \t\r\nX-B:c\r\n\r\n",
			withHeader(upGET("/"), "X-A", "a\tb\xe9", "X-B", "c")),
		fwd("fields/underscore spoofing the edge's headers", "GET / HTTP/1.1\r\n"+sh+"Fly_Client_Ip: 6.6.6.6\r\nX_Forwarded_For: 6.6.6.6\r\nX-Custom_Name: kept\r\n\r\n",
			withHeader(upGET("/"), "Fly_client_ip", "-", "X_forwarded_for", "-", "X-Custom_name", "kept", "Fly-Client-Ip", "127.0.0.1")),
		fwd("fields/hop-by-hop and Connection-listed fields dropped", "GET / HTTP/1.1\r\n"+sh+"Connection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\nX-Secret: s\r\nProxy-Connection: keep-alive\r\nTE: trailers, gzip\r\n\r\n",
			withHeader(upGET("/"), "Connection", "-", "Keep-Alive", "-", "X-Secret", "-", "Proxy-Connection", "-", "Te", "trailers")),
		rej("fields/huge single field", "GET / HTTP/1.1\r\n"+sh+"X-Big: "+strings.Repeat("a", 10<<10)+"\r\n\r\n", big),
		rej("fields/too many fields", "GET / HTTP/1.1\r\n"+sh+headers(1000)+"\r\n", big),
		fwd("fields/many fields within the limit", "GET / HTTP/1.1\r\n"+sh+headers(100)+"\r\n", many),

		// Request line (RFC 9112 3).
		fwd("method/lower case is another method", "get / HTTP/1.1\r\n"+sh+"\r\n", smuggleUp{method: "get", target: "/", host: webHost}),
		rej("method/non-token byte", "GE(T / HTTP/1.1\r\n"+sh+"\r\n", bad),
		rej("method/control byte", "G\x01T / HTTP/1.1\r\n"+sh+"\r\n", bad),
		rej("method/empty", " / HTTP/1.1\r\n"+sh+"\r\n", bad),
		rej("target/space inside", "GET /a b HTTP/1.1\r\n"+sh+"\r\n", bad),
		rej("target/two spaces after the method", "GET  /a HTTP/1.1\r\n"+sh+"\r\n", bad),
		rej("target/control byte", "GET /a\x7fb HTTP/1.1\r\n"+sh+"\r\n", bad),
		rej("target/relative", "GET a/b HTTP/1.1\r\n"+sh+"\r\n", bad),
		px2("target/fragment", "GET /a#frag HTTP/1.1\r\n"+sh+"\r\n"),
		px2("target/asterisk with GET", "GET * HTTP/1.1\r\n"+sh+"\r\n"),
		{name: "target/asterisk with OPTIONS", raw: "OPTIONS * HTTP/1.1\r\n" + sh + "\r\n", status: []int{ok}},
		px2("target/authority-form with GET", "GET web.example.com:80 HTTP/1.1\r\n"+sh+"\r\n"),
		px2("target/opaque URI", "GET mailto:a@web.example.com HTTP/1.1\r\n"+sh+"\r\n"),
		fwd("target/non-ASCII byte", "GET /caf\xe9 HTTP/1.1\r\n"+sh+"\r\n", upGET("/caf%E9")),
		fwd("target/bytes RFC 3986 does not allow in a path", "GET /a{b}|c\"d`^\\<>?q={x}|\xe9 HTTP/1.1\r\n"+sh+"\r\n",
			upGET("/a%7Bb%7D%7Cc%22d%60%5E%5C%3C%3E?q={x}|\xe9")),
		fwd("target/escapes and sub-delims kept", "GET /a%2Fb%7e/[x]!$&'()*+,;=:@?%zz HTTP/1.1\r\n"+sh+"\r\n",
			upGET("/a%2Fb%7e/[x]!$&'()*+,;=:@?%zz")),
		rej("version/HTTP/2.0", "GET / HTTP/2.0\r\n"+sh+"\r\n", http.StatusHTTPVersionNotSupported),
		rej("version/HTTP/3.0", "GET / HTTP/3.0\r\n"+sh+"\r\n", http.StatusHTTPVersionNotSupported),
		rej("version/lower case", "GET / http/1.1\r\n"+sh+"\r\n", bad),
		rej("version/missing", "GET /\r\n"+sh+"\r\n", bad),

		// Absolute-form (RFC 9112 3.2.2): the URI's authority wins over Host.
		fwd("absolute/host in the URI wins", "GET http://web.example.com/p?q=1 HTTP/1.1\r\nHost: other.example\r\n\r\n", upGET("/p?q=1")),
		{
			name: "absolute/unknown host in the URI", raw: "GET http://other.example/p HTTP/1.1\r\n" + sh + "\r\n",
			status: []int{http.StatusNotFound}, code: CodeUnknownHost,
		},
		fwd("absolute/no path", "GET http://web.example.com HTTP/1.1\r\n"+sh+"\r\n", upGET("/")),
		fwd("absolute/https on the http listener", "GET https://web.example.com/p HTTP/1.1\r\n"+sh+"\r\n", upGET("/p")),
		fwd("absolute/userinfo dropped", "GET http://u:pw@web.example.com/p HTTP/1.1\r\n"+sh+"\r\n", upGET("/p")),
		px2("absolute/empty host", "GET http:///p HTTP/1.1\r\n"+sh+"\r\n"),
		rej("absolute/without Host", "GET http://web.example.com/p HTTP/1.1\r\n\r\n", bad),

		// Host (RFC 9112 3.2).
		rej("host/missing in HTTP/1.1", "GET / HTTP/1.1\r\n\r\n", bad),
		rej("host/twice", "GET / HTTP/1.1\r\n"+sh+sh+"\r\n", bad),
		rej("host/two different", "GET / HTTP/1.1\r\n"+sh+"Host: other.example\r\n\r\n", bad),
		rej("host/space inside", "GET / HTTP/1.1\r\nHost: web.example.com x\r\n\r\n", bad),
		{name: "host/empty", raw: "GET / HTTP/1.1\r\nHost:\r\n\r\n", status: []int{http.StatusNotFound}, code: CodeUnknownHost},

		// Expect (RFC 9110 10.1.1).
		{
			name: "expect/100-continue with a body", raw: post + "Expect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
			status: []int{ok}, continue1: true, up: []smuggleUp{withHeader(upBody("POST", "abc", false), "Expect", "-")},
		},
		fwd("expect/100-continue without a body", "GET / HTTP/1.1\r\n"+sh+"Expect: 100-continue\r\n\r\n", withHeader(upGET("/"), "Expect", "-")),
		fwd("expect/100-continue in HTTP/1.0", "POST / HTTP/1.0\r\n"+sh+"Connection: keep-alive\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
			withHeader(upBody("POST", "abc", false), "Expect", "-")),
		rej("expect/unknown expectation", post+"Expect: 200-ok\r\nContent-Length: 3\r\n\r\nabc", http.StatusExpectationFailed),

		// HTTP/1.0 (RFC 9112 9.3, appendix C.2.2).
		{
			name: "1.0/closes by default", raw: "GET / HTTP/1.0\r\n" + sh + "\r\n", status: []int{ok}, close: true,
			up: []smuggleUp{withHeader(upGET("/"), "Via", "1.0 godwit")},
		},
		fwd("1.0/keep-alive", "GET / HTTP/1.0\r\n"+sh+"Connection: keep-alive\r\n\r\n", withHeader(upGET("/"), "Connection", "-", "Via", "1.0 godwit")),
		{name: "1.0/without Host", raw: "GET / HTTP/1.0\r\n\r\n", status: []int{http.StatusNotFound}, code: CodeUnknownHost, close: true},

		// Pipelining: nothing after a rejected request is served.
		rej("pipelined/after a malformed request", "GET / HTTP/1.1\r\n"+sh+"X A: b\r\n\r\nGET /next HTTP/1.1\r\n"+sh+"\r\n", bad),
		px("pipelined/after CL+TE", post+"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /next HTTP/1.1\r\n"+sh+"\r\n"),
		rej("pipelined/after an unknown coding", post+"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\nGET /next HTTP/1.1\r\n"+sh+"\r\n", te),
		fwd("pipelined/two requests", "GET /1 HTTP/1.1\r\n"+sh+"\r\nPOST /2 HTTP/1.1\r\n"+sh+"Content-Length: 1\r\n\r\nx",
			upGET("/1"), smuggleUp{method: "POST", target: "/2", host: webHost, body: "x"}),
		{
			name: "pipelined/a good request, then CL+TE", raw: "GET /1 HTTP/1.1\r\n" + sh + "\r\n" + post + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
			status: []int{ok, bad}, up: []smuggleUp{upGET("/1")}, close: true,
		},

		// Chunked framing (RFC 9112 7.1).
		fwd("chunked/extensions dropped", chunked+"\r\n3;a=b\r\nabc\r\n2;c=\"d;e\"\r\nde\r\n0;last\r\n\r\n", upBody("POST", "abcde", true)),
		fwd("chunked/spaces after the size", chunked+"\r\n3 \t\r\nabc\r\n0\r\n\r\n", upBody("POST", "abc", true)),
		fwd("chunked/on GET", "GET / HTTP/1.1\r\n"+sh+"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", upBody("GET", "abc", true)),
		fwd("chunked/empty body", chunked+"\r\n0\r\n\r\n", upBody("POST", "", true)),
		fwd("chunked/trailers kept", chunked+"Trailer: X-Sum\r\n\r\n3\r\nabc\r\n0\r\nX-Sum: 42\r\n\r\n", func() smuggleUp {
			u := upBody("POST", "abc", true)
			u.trailer = map[string]string{"X-Sum": "42"}
			return u
		}()),
		fwd("chunked/forbidden trailers dropped", chunked+"\r\n3\r\nabc\r\n0\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nHost: other.example\r\nFly-Client-Ip: 6.6.6.6\r\nAuthorization: x\r\nX-Sum: 1\r\n\r\n", func() smuggleUp {
			u := upBody("POST", "abc", true)
			u.trailer = map[string]string{"X-Sum": "1", "Content-Length": "-", "Transfer-Encoding": "-", "Host": "-", "Fly-Client-Ip": "-", "Authorization": "-"}
			return u
		}()),
		fwd("chunked/forbidden trailer announced", chunked+"Trailer: Host, X-Sum\r\n\r\n3\r\nabc\r\n0\r\nHost: other.example\r\nX-Sum: 1\r\n\r\n", func() smuggleUp {
			u := upBody("POST", "abc", true)
			u.trailer = map[string]string{"X-Sum": "1", "Host": "-"}
			return u
		}()),
		rej("chunked/forbidden trailer Content-Length announced", chunked+"Trailer: Content-Length\r\n\r\n3\r\nabc\r\n0\r\nContent-Length: 5\r\n\r\n", bad),
		badChunks("size beyond 16 hex digits", "10000000000000003\r\nabc\r\n0\r\n\r\n"),
		badChunks("size 0x", "0x3\r\nabc\r\n0\r\n\r\n"),
		badChunks("negative size", "-3\r\nabc\r\n0\r\n\r\n"),
		badChunks("no size", ";a\r\nabc\r\n0\r\n\r\n"),
		badChunks("space before the size", " 3\r\nabc\r\n0\r\n\r\n"),
		badChunks("bare LF after the size", "3\nabc\r\n0\r\n\r\n"),
		badChunks("bare CR after the size", "3\rabc\r\n0\r\n\r\n"),
		badChunks("data longer than the size", "3\r\nabcd\r\n0\r\n\r\n"),
		badChunks("data with a bare LF terminator", "3\r\nabc\n0\r\n\r\n"),
		badChunks("data without a terminator", "3\r\nabc0\r\n\r\n"),
		badChunks("control byte in a trailer", "3\r\nabc\r\n0\r\nX-A: b\x01\r\n\r\n"),
		fwd("chunked/trailer with a space before the colon", chunked+"\r\n3\r\nabc\r\n0\r\nX-A : b\r\n\r\n", func() smuggleUp {
			u := upBody("POST", "abc", true)
			u.trailer = map[string]string{"X-A": "-"}
			return u
		}()),
	}
}

// upstreamRecord is what one connection to the capturing machine carried.
type upstreamRecord struct {
	raw []byte
}

// startCapturingMachine starts a raw machine that answers each
// connection's first request with 200 and Connection: close, then reads to
// the end of the connection, and sends every byte it read to the channel.
func startCapturingMachine(t *testing.T) (*rawMachine, <-chan upstreamRecord) {
	ch := make(chan upstreamRecord, 64)
	m := startRawMachine(t, func(_ int64, c net.Conn) {
		var buf bytes.Buffer
		c.SetDeadline(time.Now().Add(5 * time.Second))
		br := bufio.NewReader(io.TeeReader(c, &buf))
		if _, err := readRequest(br); err == nil {
			respond(c, "Connection: close\r\n", "ok")
		}
		io.Copy(io.Discard, br)
		ch <- upstreamRecord{raw: buf.Bytes()}
	})
	return m, ch
}

func TestSmugglingSuite(t *testing.T) {
	m, records := startCapturingMachine(t)
	p := startProxy(t, oneApp("", []string{m.addr})+"[proxy]\nmax_header_bytes = 4096\n")
	runSmugglingSuite(t, p.httpAddr, m, records)
}

// TestSmugglingSuiteBackhaul runs the same cases through two edges: the
// client's edge owns no machine and passes every request it accepts over
// the backhaul to the owner edge, which writes it to the machine. What
// the machine gets must be what it gets from one edge: the backhaul
// carries requests as parsed fields, and the owner edge writes them out
// in the same single form.
func TestSmugglingSuiteBackhaul(t *testing.T) {
	if testing.Short() {
		t.Skip("a fleet of two edges; -short")
	}
	m, records := startCapturingMachine(t)
	const limits = "[proxy]\nmax_header_bytes = 4096\n"
	owner := startEdge(t, "edge-nrt", "nrt", "", limits+ownedMachine("m1", "nrt", m.addr))
	front := startEdge(t, "edge-iad", "iad", owner.srv.GossipAddr(), limits)
	routable(t, front, "m1")
	runSmugglingSuite(t, front.httpAddr, m, records)
}

// runSmugglingSuite sends every case of smuggleCases to addr and checks
// the responses, the connection, and what machine m got.
func runSmugglingSuite(t *testing.T, addr string, m *rawMachine, records <-chan upstreamRecord) {
	var rejected, forwarded, answered int
	var consumed int64 // machine connections whose records were read
	cases := smuggleCases()
	for _, tc := range cases {
		switch {
		case len(tc.up) > 0:
			forwarded++
		case tc.status[0] >= 400:
			rejected++
		default:
			answered++
		}
		t.Run(tc.name, func(t *testing.T) {
			// Records of an earlier case that failed before reading them.
			skipRecords(t, &consumed, m.accepts.Load(), records)
			before := m.accepts.Load()
			c := dialProxy(t, addr)
			if _, err := io.WriteString(c, tc.raw); err != nil {
				t.Fatalf("write request: %v", err)
			}
			br := bufio.NewReader(c)
			for i, want := range tc.status {
				resp, got100, err := readFinalResponse(br)
				if err != nil {
					t.Fatalf("response %d: got error %v, want %d", i+1, err, want)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != want {
					t.Fatalf("response %d: got %d %q, want %d", i+1, resp.StatusCode, b, want)
				}
				if i == 0 && tc.code != "" && resp.Header.Get(HeaderError) != string(tc.code) {
					t.Errorf("response %d: got %s %q, want %q", i+1, HeaderError, resp.Header.Get(HeaderError), tc.code)
				}
				if i == 0 && got100 != tc.continue1 {
					t.Errorf("response %d: got 100 Continue %v, want %v", i+1, got100, tc.continue1)
				}
			}
			if tc.close {
				wantClosed(t, br)
			} else {
				wantOpen(t, c, br)
			}
			n := m.accepts.Load() - before
			consumed += n
			checkUpstream(t, tc, n, records)
		})
	}
	t.Logf("%d cases: %d rejected, %d normalized and forwarded, %d answered by the edge itself", len(cases), rejected, forwarded, answered)
}

// skipRecords reads and drops the records of the machine's connections
// after the first consumed, up to accepts.
func skipRecords(t *testing.T, consumed *int64, accepts int64, records <-chan upstreamRecord) {
	for ; *consumed < accepts; *consumed++ {
		select {
		case <-records:
		case <-time.After(10 * time.Second):
			t.Fatalf("machine connection %d did not end within 10s", *consumed+1)
		}
	}
}

// readFinalResponse reads responses from br up to the first that is not
// 1xx, and reports whether a 100 Continue came before it.
func readFinalResponse(br *bufio.Reader) (*http.Response, bool, error) {
	got100 := false
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return nil, got100, err
		}
		if resp.StatusCode >= 200 {
			return resp, got100, nil
		}
		got100 = got100 || resp.StatusCode == http.StatusContinue
	}
}

// wantOpen checks that the connection is still open after the responses:
// nothing to read, and no EOF, for a moment.
func wantOpen(t *testing.T, c net.Conn, br *bufio.Reader) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	b, err := br.ReadByte()
	var ne net.Error
	if err == nil || !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("after the responses: read %q, err %v; want the connection kept open", b, err)
	}
}

// checkUpstream checks what the machine got on the n connections the
// edge opened during the case.
func checkUpstream(t *testing.T, tc smuggleCase, n int64, records <-chan upstreamRecord) {
	t.Helper()
	var got []upstreamRecord
	for range n {
		select {
		case r := <-records:
			got = append(got, r)
		case <-time.After(10 * time.Second):
			t.Fatalf("machine connection %d of %d did not end within 10s of the response", len(got)+1, n)
		}
	}
	if tc.incomplete {
		for _, r := range got {
			if req, err := readRequest(bufio.NewReader(bytes.NewReader(r.raw))); err == nil {
				t.Errorf("machine got a complete request %s %s (%q), want none", req.Method, req.RequestURI, r.raw)
			}
		}
		return
	}
	if len(got) != len(tc.up) {
		t.Fatalf("machine got %d connections, want %d (one request each): %q", len(got), len(tc.up), got)
	}
	for i, want := range tc.up {
		checkUpstreamRequest(t, got[i].raw, want)
	}
}

// checkUpstreamRequest checks that raw, all the bytes of one machine
// connection, is exactly one request framed one way only, and that it is
// want.
func checkUpstreamRequest(t *testing.T, raw []byte, want smuggleUp) {
	t.Helper()
	head, _, found := bytes.Cut(raw, []byte("\r\n\r\n"))
	if !found {
		t.Fatalf("machine got no complete head: %q", raw)
	}
	lines := strings.Split(string(head), "\r\n")
	count := map[string]int{}
	checkFieldLines(t, "field", lines[1:])
	for i, line := range lines {
		for _, b := range []byte(line) {
			if b < ' ' && b != '\t' || b == 0x7f {
				t.Errorf("line %d %q: control byte %#x", i, line, b)
			}
		}
		if i == 0 {
			if parts := strings.Split(line, " "); len(parts) != 3 || parts[2] != "HTTP/1.1" {
				t.Errorf("request line %q: want method, target and HTTP/1.1 separated by single spaces", line)
			}
			continue
		}
		if name, _, ok := strings.Cut(line, ":"); ok {
			count[http.CanonicalHeaderKey(name)]++
		}
	}
	if count["Host"] != 1 {
		t.Errorf("head has %d Host fields, want 1:\n%s", count["Host"], head)
	}
	if count["Content-Length"] > 1 || count["Transfer-Encoding"] > 1 || count["Content-Length"]+count["Transfer-Encoding"] > 1 {
		t.Errorf("head has %d Content-Length and %d Transfer-Encoding fields, want one framing at most:\n%s",
			count["Content-Length"], count["Transfer-Encoding"], head)
	}

	br := bufio.NewReader(bytes.NewReader(raw))
	req, err := http.ReadRequest(br)
	if err != nil {
		t.Fatalf("machine cannot parse the request: %v\n%q", err, raw)
	}
	body, err := io.ReadAll(req.Body)
	if err != nil {
		t.Fatalf("machine cannot read the body: %v\n%q", err, raw)
	}
	if rest, _ := io.ReadAll(br); len(rest) > 0 {
		t.Errorf("machine got %q after the request, want nothing (one request per request served)", rest)
	}
	if req.Method != want.method || req.RequestURI != want.target || req.Host != want.host {
		t.Errorf("request: got %s %s Host %q, want %s %s Host %q", req.Method, req.RequestURI, req.Host, want.method, want.target, want.host)
	}
	if string(body) != want.body {
		t.Errorf("body: got %q, want %q", body, want.body)
	}
	isChunked := slices.Equal(req.TransferEncoding, []string{"chunked"})
	if isChunked {
		_, rest, _ := bytes.Cut(raw, []byte("\r\n\r\n"))
		checkFieldLines(t, "trailer", chunkedTrailerLines(t, rest))
	}
	if isChunked != want.chunked {
		t.Errorf("framing: got Transfer-Encoding %v, Content-Length %d; want chunked %v", req.TransferEncoding, req.ContentLength, want.chunked)
	}
	if !isChunked && (want.body != "" || want.method == "POST") && count["Content-Length"] != 1 {
		t.Errorf("framing: no Content-Length for a body of %d bytes", len(body))
	}
	checkFields(t, "header", req.Header, want.header)
	if want.trailer != nil {
		checkFields(t, "trailer", req.Trailer, want.trailer)
	}
}

// checkFieldLines checks that every line is a field line: a token, a
// colon and a value, with no obs-fold and no control bytes.
func checkFieldLines(t *testing.T, what string, lines []string) {
	t.Helper()
	for i, line := range lines {
		name, _, ok := strings.Cut(line, ":")
		if !ok || name == "" || strings.IndexFunc(name, func(r rune) bool { return r > 0x7f || !isTokenByte(byte(r)) }) >= 0 {
			t.Errorf("%s line %d %q: want a token, a colon and a value (no obs-fold)", what, i+1, line)
		}
	}
}

// chunkedTrailerLines walks the chunked body b (CRLF lines, as the edge
// writes it) and returns its trailer section's lines.
func chunkedTrailerLines(t *testing.T, b []byte) []string {
	t.Helper()
	for {
		line, rest, ok := bytes.Cut(b, []byte("\r\n"))
		if !ok {
			t.Fatalf("chunked body: no CRLF after %q", b)
		}
		size, _, _ := bytes.Cut(line, []byte(";"))
		n, err := strconv.ParseUint(string(size), 16, 63)
		if err != nil || uint64(len(rest)) < n+2 {
			t.Fatalf("chunked body: bad chunk line %q (%v)", line, err)
		}
		if n == 0 {
			var lines []string
			for {
				line, rest, ok = bytes.Cut(rest, []byte("\r\n"))
				if !ok {
					t.Fatalf("chunked body: trailer section without its last CRLF")
				}
				if len(line) == 0 {
					return lines
				}
				lines = append(lines, string(line))
			}
		}
		b = rest[n+2:]
	}
}

func checkFields(t *testing.T, what string, got http.Header, want map[string]string) {
	t.Helper()
	for k, v := range want {
		vv, ok := got[k]
		switch {
		case v == "-" && ok:
			t.Errorf("%s %s: got %q, want it absent", what, k, vv)
		case v != "-" && strings.Join(vv, ", ") != v:
			t.Errorf("%s %s: got %q, want %q", what, k, vv, v)
		}
	}
}
