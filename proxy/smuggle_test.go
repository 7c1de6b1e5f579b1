package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"testing"
)

const (
	trackGET  = "GET / HTTP/1.1\r\nHost: a\r\n\r\n"
	trackBoth = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
	// trackChunked starts a chunked POST; its body follows.
	trackChunked = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
)

type trackCase struct {
	name   string
	stream string
	// refuse is the number of the first request the handler must refuse
	// (0: none), requests the requests counted when none is.
	refuse   int64
	reason   string // checked when not ""
	requests int64
	maxHead  int64 // 0: 1 MiB
}

func trackCases() []trackCase {
	overhead := func(n int) string { // n chunks of one byte with 4000 bytes of extension each
		return trackChunked + strings.Repeat("1;"+strings.Repeat("x", 4000)+"\r\nX\r\n", n) + "0\r\n\r\n"
	}
	return []trackCase{
		{name: "one request", stream: trackGET, requests: 1},
		{name: "pipelined requests", stream: trackGET + trackGET + trackGET, requests: 3},
		{name: "Content-Length then Transfer-Encoding", stream: trackBoth, refuse: 1, reason: reasonBothLengths},
		{
			name:   "Transfer-Encoding then Content-Length",
			stream: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
			refuse: 1, reason: reasonBothLengths,
		},
		{
			name:   "names in other cases",
			stream: "POST / HTTP/1.1\r\nhost: a\r\ncontent-LENGTH: 6\r\nTRANSFER-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
			refuse: 1, reason: reasonBothLengths,
		},
		{
			name:   "chunked with Content-Length 0",
			stream: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n0\r\n\r\n" + trackGET,
			refuse: 1, reason: reasonBothLengths,
		},
		{
			name:   "both in HTTP/1.0",
			stream: "POST / HTTP/1.0\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
			refuse: 1, reason: reasonBothLengths,
		},
		{name: "both after a good request", stream: trackGET + trackBoth, refuse: 2, reason: reasonBothLengths},
		{
			name:     "head inside a Content-Length body",
			stream:   fmt.Sprintf("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s", len(trackBoth), trackBoth) + trackGET,
			requests: 2,
		},
		{
			name:     "head inside chunk data",
			stream:   trackChunked + fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(trackBoth), trackBoth) + trackGET,
			requests: 2,
		},
		{
			name: "chunk extensions and trailers, then both",
			stream: trackChunked + "5;name=\"v\"\r\nhello\r\n6 \t\r\n world\r\nA;a=1;b\r\n0123456789\r\n0;last\r\n" +
				"X-Sum: 1\r\nX-Other:two words \t\r\n\r\n" + trackBoth,
			refuse: 2, reason: reasonBothLengths,
		},
		{
			name:     "chunk extensions and trailers, then a request",
			stream:   trackChunked + "5;x\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n" + trackGET,
			requests: 2,
		},
		{
			name:   "bare LF line ends",
			stream: "GET / HTTP/1.1\nHost: a\n\nPOST / HTTP/1.1\nHost: a\nContent-Length: 1\nTransfer-Encoding: chunked\n\n",
			refuse: 2, reason: reasonBothLengths,
		},
		{
			name:     "bare LF line ends and a body",
			stream:   "POST / HTTP/1.1\nHost: a\nContent-Length: 3\n\nabcGET / HTTP/1.1\nHost: a\n\n",
			requests: 2,
		},
		{
			name:     "CRLF before a request line",
			stream:   "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx\r\n" + trackGET,
			requests: 2,
		},
		{
			name:     "Content-Length with spaces and tabs",
			stream:   "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \t 3 \t\r\n\r\nabc" + trackGET,
			requests: 2,
		},
		{
			name:     "the same Content-Length twice",
			stream:   "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc" + trackGET,
			requests: 2,
		},
		{
			name:   "Transfer-Encoding in HTTP/1.0 is faulty framing",
			stream: "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n" + trackGET,
			refuse: 1, reason: reasonTE10,
		},
		{name: "OPTIONS * is not counted", stream: "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n" + trackBoth, refuse: 1},
		{
			name:   "OPTIONS * with both refuses the next request",
			stream: "OPTIONS * HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + trackGET,
			refuse: 1,
		},
		{name: "OPTIONS with a path is counted", stream: "OPTIONS /* HTTP/1.1\r\nHost: a\r\n\r\n" + trackBoth, refuse: 2},
		{name: "HTTP/2 preface ends tracking", stream: h2Preface + trackBoth, requests: -1},
		{name: "PRI with fields is HTTP/1", stream: "PRI * HTTP/2.0\r\nHost: a\r\n\r\n" + trackBoth, refuse: 2},
		{
			name:   "refused upgrade, then both",
			stream: "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n" + trackBoth,
			refuse: 2,
		},
		{
			name:   "folded field line",
			stream: "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tc\r\n\r\n",
			refuse: 1, reason: reasonFolded,
		},
		{
			name:   "folded field line after a request",
			stream: trackGET + "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
			refuse: 2, reason: reasonFolded,
		},
		{
			name:   "invalid Content-Length",
			stream: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3x\r\n\r\nabc",
			refuse: 1, reason: reasonBadLength,
		},
		{
			name:   "Content-Length too large",
			stream: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775808\r\n\r\n",
			refuse: 1, reason: reasonBadLength,
		},
		{
			name:   "Content-Length at its largest",
			stream: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775807\r\n\r\n" + trackBoth,
			// the rest is body
			requests: 1,
		},
		{
			name:   "empty Content-Length",
			stream: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n",
			refuse: 1, reason: reasonBadLength,
		},
		{
			name:   "head too large",
			stream: "GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + strings.Repeat("a", 200) + "\r\n\r\n",
			refuse: 1, reason: reasonHeadTooLarge, maxHead: 100,
		},
		{
			name:   "later head too large",
			stream: trackGET + "GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + strings.Repeat("a", 200) + "\r\n\r\n",
			refuse: 2, reason: reasonHeadTooLarge, maxHead: 100,
		},
		{name: "chunk size not hex", stream: trackChunked + "x\r\n" + trackGET, refuse: 2, reason: reasonBadChunked},
		{name: "no chunk size", stream: trackChunked + ";x\r\n" + trackGET, refuse: 2, reason: reasonBadChunked},
		{name: "bare LF in a chunk line", stream: trackChunked + "3\nabc\r\n0\r\n\r\n", refuse: 2, reason: reasonBadChunked},
		{name: "chunk data without CRLF", stream: trackChunked + "3\r\nabcX0\r\n\r\n", refuse: 2, reason: reasonBadChunked},
		{name: "chunk data with a bare LF", stream: trackChunked + "3\r\nabc\n0\r\n\r\n", refuse: 2, reason: reasonBadChunked},
		{name: "17 hex digits", stream: trackChunked + "00000000000000003\r\nabc\r\n0\r\n\r\n", refuse: 2, reason: reasonBadChunked},
		{name: "16 hex digits", stream: trackChunked + "0000000000000003\r\nabc\r\n0\r\n\r\n" + trackGET, requests: 2},
		{name: "space before an extension", stream: trackChunked + "3 ;x\r\nabc\r\n0\r\n\r\n", refuse: 2, reason: reasonBadChunked},
		{name: "CR in an extension", stream: trackChunked + "3;a\rb\r\nabc\r\n0\r\n\r\n", refuse: 2, reason: reasonBadChunked},
		{
			name:   "chunk line too long",
			stream: trackChunked + "1;" + strings.Repeat("x", maxChunkLine-1) + "\r\nX\r\n0\r\n\r\n",
			refuse: 2, reason: reasonBadChunked,
		},
		{
			name:     "chunk line at its longest",
			stream:   trackChunked + "1;" + strings.Repeat("x", maxChunkLine-2) + "\r\nX\r\n0\r\n\r\n" + trackGET,
			requests: 2,
		},
		{name: "chunk overhead within net/http's limit", stream: overhead(4) + trackGET, requests: 2},
		{name: "chunk overhead beyond net/http's limit", stream: overhead(5) + trackGET, refuse: 2, reason: reasonBadChunked},
		{name: "trailer without a colon", stream: trackChunked + "0\r\nnot a field\r\n\r\n", refuse: 2, reason: reasonBadChunked},
		{name: "folded trailer", stream: trackChunked + "0\r\nX: a\r\n b\r\n\r\n", refuse: 2, reason: reasonBadChunked},
		{name: "control byte in a trailer", stream: trackChunked + "0\r\nX: a\x01\r\n\r\n", refuse: 2, reason: reasonBadChunked},
		{name: "empty trailer section ended by LF", stream: trackChunked + "0\r\n\n" + trackGET, requests: 2},
	}
}

// feed runs a tracker over stream in pieces of the sizes next returns.
func feed(stream string, maxHead int64, next func(left int) int) smuggleTracker {
	t := smuggleTracker{maxHead: maxHead}
	for b := []byte(stream); len(b) > 0; {
		n := next(len(b))
		t.scan(b[:n])
		b = b[n:]
	}
	return t
}

func TestSmuggleTracker(t *testing.T) {
	for _, tc := range trackCases() {
		t.Run(tc.name, func(t *testing.T) {
			maxHead := tc.maxHead
			if maxHead == 0 {
				maxHead = 1 << 20
			}
			splits := map[string]func(left int) int{
				"whole":  func(left int) int { return left },
				"1-byte": func(int) int { return 1 },
			}
			for seed := range uint64(20) {
				r := rand.New(rand.NewPCG(seed, 0))
				splits[fmt.Sprintf("random %d", seed)] = func(left int) int { return 1 + r.IntN(min(left, 64)) }
			}
			for name, next := range splits {
				tr := feed(tc.stream, maxHead, next)
				if tr.refuse != tc.refuse {
					t.Fatalf("%s reads: got refuse %d (%q), want %d", name, tr.refuse, tr.reason, tc.refuse)
				}
				if tc.reason != "" && tr.reason != tc.reason {
					t.Errorf("%s reads: got reason %q, want %q", name, tr.reason, tc.reason)
				}
				if tc.refuse == 0 && tc.requests >= 0 && (tr.requests != tc.requests || tr.done) {
					t.Errorf("%s reads: got %d requests (done %v), want %d and still tracking", name, tr.requests, tr.done, tc.requests)
				}
				if tc.requests < 0 && !tr.done {
					t.Errorf("%s reads: still tracking, want stopped", name)
				}
			}
		})
	}
}

// byteConn is a net.Conn whose reads return data in pieces of the sizes
// next returns.
type byteConn struct {
	net.Conn // nil: only Read is used
	data     []byte
	next     func(left int) int
}

func (c *byteConn) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := min(c.next(len(c.data)), len(p))
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

// serverReads reads stream as net/http's server would and returns the
// requests its handler would see; clean is false unless it read the stream
// to its end, message by message, without an error or a reason to close.
func serverReads(stream []byte) (requests int64, clean bool) {
	br := bufio.NewReader(bytes.NewReader(stream))
	var last string
	for {
		if last == http.MethodPost {
			peek, _ := br.Peek(4)
			n := 0
			for n < len(peek) && (peek[n] == '\r' || peek[n] == '\n') {
				n++
			}
			br.Discard(n)
		}
		if _, err := br.Peek(1); err == io.EOF {
			return requests, true
		}
		req, err := http.ReadRequest(br)
		if err != nil || req.ProtoMajor != 1 || req.Close {
			return requests, false
		}
		if e := req.Header.Get("Expect"); e != "" && !strings.EqualFold(e, "100-continue") {
			return requests, false
		}
		last = req.Method
		if req.Method != http.MethodOptions || req.RequestURI != "*" {
			requests++
		}
		if _, err := io.Copy(io.Discard, req.Body); err != nil {
			return requests, false
		}
	}
}

func FuzzSmuggleTracker(f *testing.F) {
	for _, tc := range trackCases() {
		f.Add([]byte(tc.stream), uint64(len(tc.name)))
	}
	f.Fuzz(func(t *testing.T, stream []byte, seed uint64) {
		r := rand.New(rand.NewPCG(seed, 1))
		c := newSmuggleConn(&byteConn{data: stream, next: func(left int) int { return 1 + r.IntN(min(left, 300)) }}, 1<<20).(*smuggleConn)
		got, err := io.ReadAll(c)
		if err != nil || !bytes.Equal(got, stream) {
			t.Fatalf("read through the tracker: got %q (err %v), want the %d bytes written", got, err, len(stream))
		}
		whole := feed(string(stream), c.t.maxHead, func(left int) int { return left })
		if whole.refuse != c.t.refuse || whole.reason != c.t.reason || whole.done != c.t.done ||
			!c.t.done && (whole.requests != c.t.requests || whole.state != c.t.state) {
			t.Fatalf("split reads: got refuse %d %q, done %v, %d requests, state %d; in one read: %d %q, %v, %d, %d",
				c.t.refuse, c.t.reason, c.t.done, c.t.requests, c.t.state, whole.refuse, whole.reason, whole.done, whole.requests, whole.state)
		}
		if c.refuse.Load() != c.t.refuse {
			t.Fatalf("published refuse %d, tracker's %d", c.refuse.Load(), c.t.refuse)
		}
		// Where net/http reads every request of the stream, the tracker
		// must have counted the same ones, or refused.
		if n, clean := serverReads(stream); clean && c.t.refuse == 0 && c.t.preface != len(h2Preface) {
			if c.t.requests != n || c.t.state != stIdle {
				t.Fatalf("net/http reads %d requests; tracker counted %d and ended in state %d, want %d and idle", n, c.t.requests, c.t.state, n)
			}
		}
	})
}

func BenchmarkSmuggleTracker(b *testing.B) {
	head := "GET /api/v1/items?page=2 HTTP/1.1\r\nHost: web.example.com\r\nUser-Agent: bench/1.0\r\n" +
		"Accept: application/json\r\nAccept-Encoding: gzip, br\r\nAccept-Language: en-US,en;q=0.9\r\n" +
		"Cookie: session=0123456789abcdef0123456789abcdef\r\nX-Request-Start: t=1700000000000\r\n\r\n"
	post := "POST /upload HTTP/1.1\r\nHost: web.example.com\r\nContent-Type: application/octet-stream\r\nContent-Length: 4096\r\n\r\n" + strings.Repeat("x", 4096)
	for _, bc := range []struct{ name, stream string }{{"GET head", head}, {"POST 4KiB", post}} {
		b.Run(bc.name, func(b *testing.B) {
			p := []byte(bc.stream)
			t := smuggleTracker{maxHead: 1 << 20}
			b.SetBytes(int64(len(p)))
			b.ReportAllocs()
			for b.Loop() {
				t.scan(p)
			}
			if t.done {
				b.Fatalf("tracker stopped: refuse %d (%s)", t.refuse, t.reason)
			}
		})
	}
}
