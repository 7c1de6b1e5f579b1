package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
)

// Request smuggling guard.
//
// Given a request with both Content-Length and Transfer-Encoding: chunked,
// net/http's HTTP/1 server deletes Content-Length and reads the body as
// chunked. RFC 9112 6.3 lets an intermediary do that if it closes the
// connection afterwards; net/http does not, and no handler can tell that
// the request had both. So a smuggleConn watches the bytes the server reads
// from a client connection and follows the framing of the request stream
// the way net/http does, and Handler.serve asks it (through the request
// context) whether to serve each request.

// smuggleConn is an HTTP/1.x client connection whose reads a smuggleTracker
// watches. Every byte passes through unchanged.
type smuggleConn struct {
	net.Conn
	// t is used by Read only: reads of one connection are never
	// concurrent (net/http reads from one goroutine at a time, and hands
	// the connection over on hijack).
	t       smuggleTracker
	stopped atomic.Bool  // by stop: the connection was hijacked
	refuse  atomic.Int64 // t.refuse, published for handlers
	served  atomic.Int64 // requests handlers have started on the connection
}

// smuggleTLSConn is a smuggleConn over TLS. Its ConnectionState makes
// net/http fill in Request.TLS, as it does for a *tls.Conn.
type smuggleTLSConn struct {
	*smuggleConn
	tls *tls.Conn
}

func (c *smuggleTLSConn) ConnectionState() tls.ConnectionState { return c.tls.ConnectionState() }

// newSmuggleConn wraps c. maxHeaderBytes is the http.Server's.
func newSmuggleConn(c net.Conn, maxHeaderBytes int) net.Conn {
	if maxHeaderBytes <= 0 {
		maxHeaderBytes = http.DefaultMaxHeaderBytes
	}
	sc := &smuggleConn{Conn: c}
	// net/http reads a head of at most MaxHeaderBytes+4096 bytes from the
	// connection, after up to a bufio buffer's 4096 bytes it already held.
	sc.t.maxHead = int64(maxHeaderBytes) + 2*4096
	if tc, ok := c.(*tls.Conn); ok {
		return &smuggleTLSConn{smuggleConn: sc, tls: tc}
	}
	return sc
}

func (c *smuggleConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && !c.t.done && !c.stopped.Load() {
		c.t.scan(p[:n])
		if c.t.refuse != 0 {
			c.refuse.Store(c.t.refuse)
		}
	}
	return n, err
}

// CloseWrite half-closes the connection, as net/http and tunnels do with
// the connections they are given when they can.
func (c *smuggleConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// stop ends tracking: the connection no longer carries HTTP/1 requests
// (it was hijacked for a tunnel).
func (c *smuggleConn) stop() { c.stopped.Store(true) }

// admit counts a request the handler is about to serve and reports
// whether to serve it; if not, reason says why, for the client.
func (c *smuggleConn) admit() (reason string, ok bool) {
	n := c.served.Add(1)
	if r := c.refuse.Load(); r != 0 && n >= r {
		return c.t.reason, false // written once, before refuse was stored
	}
	return "", true
}

func (c *smuggleConn) guard() *smuggleConn { return c }

type smuggleConnKey struct{}

// withSmuggleConn is an http.Server's ConnContext: it puts a smuggleConn
// into the context of the connection's requests.
func withSmuggleConn(ctx context.Context, c net.Conn) context.Context {
	if g, ok := c.(interface{ guard() *smuggleConn }); ok {
		return context.WithValue(ctx, smuggleConnKey{}, g.guard())
	}
	return ctx
}

// smuggleConnFrom returns the smuggleConn a request came on, or nil.
func smuggleConnFrom(ctx context.Context) *smuggleConn {
	c, _ := ctx.Value(smuggleConnKey{}).(*smuggleConn)
	return c
}

// Why a connection is refused, as the client reads it after PX01.
const (
	reasonBothLengths  = "request has both Content-Length and Transfer-Encoding"
	reasonFolded       = "request has a folded header line (obs-fold)"
	reasonBadLength    = "request has an invalid Content-Length"
	reasonHeadTooLarge = "request head too large"
	reasonBadChunked   = "an earlier request on this connection had invalid chunked framing"
	reasonTE10         = "HTTP/1.0 request has Transfer-Encoding"
)

// h2Preface starts an HTTP/2 connection with prior knowledge (RFC 9113 3.4).
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// trackState is where a smuggleTracker is in the request stream.
type trackState uint8

const (
	stIdle           trackState = iota // between messages, skipping CR and LF
	stMethod                           // request line: method
	stTarget                           // request line: request-target
	stVersion                          // request line: HTTP version, to the end of the line
	stFieldStart                       // head: start of a field line, or the blank line
	stFieldCR                          // head: a CR at the start of a line
	stName                             // head: field name
	stLengthValue                      // head: Content-Length value
	stSkipLine                         // head: the rest of a field line
	stBody                             // body: remain bytes of Content-Length
	stChunkLine                        // chunked: chunk size and extensions
	stChunkLF                          // chunked: the LF of a chunk line's CRLF
	stChunkData                        // chunked: remain bytes of chunk data
	stChunkDataCR                      // chunked: the CR after chunk data
	stChunkDataLF                      // chunked: the LF after chunk data
	stTrailerStart                     // chunked: start of a trailer line, or the blank line
	stTrailerCR                        // chunked: a CR at the start of a trailer line
	stTrailerName                      // chunked: trailer field name
	stTrailerValue                     // chunked: trailer field value
	stTrailerValueCR                   // chunked: a CR in a trailer field value
)

// Chunk-line phases (net/http's grammar: hex digits, then optional
// whitespace or a ";" and anything up to the CRLF).
const (
	chunkDigits = iota
	chunkSpace
	chunkExt
)

// Content-Length value phases.
const (
	lengthLeadingSpace = iota
	lengthDigits
	lengthTrailingSpace
)

// Limits of net/http's chunked reader (net/http/internal/chunked.go).
const (
	maxChunkLine   = 4096 - 2 // a chunk line and its CRLF fill at most the 4 KiB bufio buffer
	maxChunkDigits = 16
	maxChunkExcess = 16 << 10
)

// smuggleTracker follows the HTTP/1.1 framing (RFC 9112) of the request
// stream of one client connection the way net/http's server reads it:
// each head up to its blank line, then the body by Content-Length or
// chunked framing (chunk lines, data, trailers), then the next head. It
// does no I/O: scan is fed every byte read, in order, in pieces of any
// size, and looks at each byte once; it does not allocate.
//
// Requests are numbered from 1 in the order the handler sees them on the
// connection. A head with both Content-Length and Transfer-Encoding (in
// either HTTP/1 version), a folded field line, an invalid Content-Length
// or a head larger than net/http accepts sets refuse to that request's
// number; chunked framing that net/http would fail on sets it to the next
// request's (net/http may read on after a body error when the handler
// runs full duplex, from a place the tracker cannot follow). Either way
// the tracker stops: every later request on the connection is refused
// too. The tracker also stops, refusing nothing, at the HTTP/2 preface at
// the start of the stream, where net/http switches to HTTP/2.
//
// Where net/http rejects a request and closes the connection, the tracker
// may follow the bytes differently; where net/http reads on, it must
// agree with it byte for byte, or fail closed (refuse).
type smuggleTracker struct {
	maxHead int64 // head bytes beyond which net/http has answered 431

	state    trackState
	done     bool
	refuse   int64  // first request number to refuse; 0: none
	reason   string // why
	requests int64  // requests whose request line has been read
	preface  int    // bytes of h2Preface that started the stream; -1: it did not

	// The current head.
	headLen   int64
	counted   bool     // its request line is read and counts in requests
	word      [17]byte // the first bytes of the method or version (request line), or of a field name
	wordLen   int      // bytes of the word so far, including those past len(word)
	options   bool     // the method is OPTIONS
	targetLen int
	star      bool // the request-target is "*"
	http10    bool
	hasLength bool
	hasTE     bool
	length    uint64
	lenPhase  int
	lenValue  uint64
	lenCR     bool // a CR in the Content-Length value, unless it ends the line

	// The current body.
	remain     uint64
	chunkPhase int
	chunkLen   int // bytes of the chunk line before its CRLF
	chunkDigit int
	chunkSize  uint64
	excess     int64 // chunk overhead, counted as net/http counts it
}

// scan follows p, the next bytes of the stream.
func (t *smuggleTracker) scan(p []byte) {
	if t.done {
		return
	}
	if t.preface >= 0 {
		n := min(len(p), len(h2Preface)-t.preface)
		if string(p[:n]) != h2Preface[t.preface:t.preface+n] {
			t.preface = -1
		} else if t.preface += n; t.preface == len(h2Preface) {
			t.done = true // HTTP/2 from here on
			return
		}
	}
	for i := 0; i < len(p) && !t.done; {
		switch t.state {
		case stBody, stChunkData:
			n := uint64(len(p) - i)
			if n > t.remain {
				n = t.remain
			}
			t.remain -= n
			i += int(n)
			if t.remain == 0 {
				if t.state == stBody {
					t.endMessage()
				} else {
					t.state = stChunkDataCR
				}
			}
		case stMethod, stTarget, stVersion, stName:
			// Take a run of bytes up to the state's delimiter at once.
			delim := byte(' ')
			switch t.state {
			case stVersion:
				delim = '\n'
			case stName:
				delim = ':'
			}
			j := i
			for j < len(p) && p[j] != delim && p[j] != '\n' {
				j++
			}
			if j == i {
				t.step(p[i])
				i++
				continue
			}
			if t.state == stTarget {
				if t.targetLen == 0 {
					t.star = p[i] == '*'
				}
				t.targetLen += j - i
			} else {
				t.addWord(p[i:j])
			}
			t.headLen += int64(j - i)
			i = j
			if t.headLen > t.maxHead {
				t.poisonHead(reasonHeadTooLarge)
			}
		case stSkipLine:
			n := bytes.IndexByte(p[i:], '\n') + 1
			if n == 0 {
				n = len(p) - i
			} else {
				t.state = stFieldStart
			}
			i += n
			t.headLen += int64(n)
			if t.headLen > t.maxHead {
				t.poisonHead(reasonHeadTooLarge)
			}
		default:
			t.step(p[i])
			i++
		}
	}
}

// step follows one byte. scan takes runs of bytes itself in stBody,
// stChunkData and stSkipLine, and the bytes before a delimiter in the
// request line and field names.
func (t *smuggleTracker) step(b byte) {
	if t.state <= stLengthValue {
		if t.headLen++; t.headLen > t.maxHead {
			t.poisonHead(reasonHeadTooLarge)
			return
		}
	}
	switch t.state {
	case stIdle:
		// net/http skips CR and LF after a POST and rejects them
		// otherwise (then closes): skipping them always agrees with it
		// wherever it reads on.
		if b == '\r' || b == '\n' {
			return
		}
		t.startHead()
		t.state = stMethod
		t.addByte(b)
	case stMethod:
		switch b {
		case ' ':
			t.options = t.isWord("OPTIONS")
			t.state = stTarget
		case '\n':
			t.endRequestLine()
		default:
			t.addByte(b)
		}
	case stTarget:
		switch b {
		case ' ':
			t.wordLen = 0
			t.state = stVersion
		case '\n':
			t.endRequestLine()
		default: // scan takes runs of these
			if t.targetLen == 0 {
				t.star = b == '*'
			}
			t.targetLen++
		}
	case stVersion:
		if b == '\n' {
			if t.wordLen > 0 && t.wordLen <= len(t.word) && t.word[t.wordLen-1] == '\r' {
				t.wordLen--
			}
			t.http10 = t.isWord("HTTP/1.0")
			t.endRequestLine()
			return
		}
		t.addByte(b)
	case stFieldStart:
		switch b {
		case '\n':
			t.endHead()
		case '\r':
			t.state = stFieldCR
		case ' ', '\t':
			// net/http joins a folded line to the one before (so a
			// folded Transfer-Encoding would count); RFC 9112 5.2
			// lets a server reject it instead.
			t.poisonHead(reasonFolded)
		case 'c', 'C', 't', 'T':
			t.wordLen = 0
			t.state = stName
			t.addByte(b)
		default:
			t.state = stSkipLine // neither Content-Length nor Transfer-Encoding
		}
	case stFieldCR:
		if b == '\n' {
			t.endHead()
			return
		}
		t.state = stSkipLine // a name starting with CR: net/http rejects it
	case stName:
		switch b {
		case ':':
			t.endName()
		case '\n':
			t.state = stFieldStart // no colon: net/http rejects it
		default:
			t.addByte(b)
		}
	case stLengthValue:
		t.stepLength(b)
	case stChunkLine:
		t.stepChunkLine(b)
	case stChunkLF:
		if b != '\n' {
			t.poisonNext(reasonBadChunked)
			return
		}
		t.endChunkLine()
	case stChunkDataCR:
		if b != '\r' {
			t.poisonNext(reasonBadChunked)
			return
		}
		t.state = stChunkDataLF
	case stChunkDataLF:
		if b != '\n' {
			t.poisonNext(reasonBadChunked)
			return
		}
		t.startChunkLine()
	case stTrailerStart:
		// Stricter than net/http, which also takes folded lines and
		// names with spaces: a trailer net/http fails on, it reads on
		// from where it failed, and that is never at a line the
		// tracker accepted here (a field line cannot be a request line).
		switch {
		case b == '\n':
			t.endMessage()
		case b == '\r':
			t.state = stTrailerCR
		case isTokenByte(b):
			t.state = stTrailerName
		default:
			t.poisonNext(reasonBadChunked)
		}
	case stTrailerCR:
		if b != '\n' {
			t.poisonNext(reasonBadChunked)
			return
		}
		t.endMessage()
	case stTrailerName:
		switch {
		case b == ':':
			t.state = stTrailerValue
		case !isTokenByte(b):
			t.poisonNext(reasonBadChunked)
		}
	case stTrailerValue:
		switch {
		case b == '\r':
			t.state = stTrailerValueCR
		case b == '\n':
			t.state = stTrailerStart
		case !isFieldValueByte(b):
			t.poisonNext(reasonBadChunked)
		}
	case stTrailerValueCR:
		if b != '\n' {
			t.poisonNext(reasonBadChunked)
			return
		}
		t.state = stTrailerStart
	}
}

func (t *smuggleTracker) startHead() {
	t.counted = false
	t.wordLen = 0
	t.options, t.star, t.targetLen = false, false, 0
	t.http10, t.hasLength, t.hasTE = false, false, false
	t.length = 0
}

// endRequestLine counts the request, unless net/http answers it without
// calling the handler (OPTIONS *, unless Server.DisableGeneralOptionsHandler)
// and reads on: the handler's count must never fall behind the tracker's.
func (t *smuggleTracker) endRequestLine() {
	if !(t.options && t.star && t.targetLen == 1) {
		t.requests++
		t.counted = true
	}
	t.state = stFieldStart
}

func (t *smuggleTracker) endName() {
	t.state = stSkipLine
	switch {
	case t.isName("content-length"):
		t.hasLength = true
		t.lenPhase, t.lenValue, t.lenCR = lengthLeadingSpace, 0, false
		t.state = stLengthValue
	case t.isName("transfer-encoding"):
		t.hasTE = true
	default:
		return
	}
	if t.hasLength && t.hasTE {
		t.poisonHead(reasonBothLengths)
	}
}

// stepLength follows a Content-Length value as net/http parses it:
// optional whitespace, decimal digits up to 2^63-1, optional whitespace.
func (t *smuggleTracker) stepLength(b byte) {
	if b == '\n' {
		if t.lenPhase == lengthLeadingSpace {
			t.poisonHead(reasonBadLength) // empty
			return
		}
		// Of two different values, net/http rejects the request, and
		// the last one is as good as any.
		t.length = t.lenValue
		t.state = stFieldStart
		return
	}
	bad := t.lenCR // a CR not at the end of the line
	switch {
	case b == '\r':
		t.lenCR = true
	case b == ' ' || b == '\t':
		if t.lenPhase == lengthDigits {
			t.lenPhase = lengthTrailingSpace
		}
	case '0' <= b && b <= '9' && t.lenPhase != lengthTrailingSpace:
		t.lenPhase = lengthDigits
		bad = bad || t.lenValue > (1<<63-1-uint64(b-'0'))/10
		t.lenValue = t.lenValue*10 + uint64(b-'0')
	default:
		bad = true
	}
	if bad {
		t.poisonHead(reasonBadLength)
	}
}

func (t *smuggleTracker) endHead() {
	switch {
	case t.hasTE && t.http10:
		// net/http ignores it and reads what follows as the next
		// request; RFC 9112 6.1 calls the framing faulty.
		t.poisonHead(reasonTE10)
	case t.hasTE: // chunked: net/http answers any other coding 501
		t.excess = 0
		t.startChunkLine()
	case t.length > 0:
		t.remain = t.length
		t.state = stBody
	default:
		t.endMessage()
	}
}

func (t *smuggleTracker) endMessage() {
	t.state = stIdle
	t.headLen = 0
	t.counted = false
}

func (t *smuggleTracker) startChunkLine() {
	t.state = stChunkLine
	t.chunkPhase, t.chunkLen, t.chunkDigit, t.chunkSize = chunkDigits, 0, 0, 0
}

// stepChunkLine follows a chunk line up to its CR as net/http's chunked
// reader parses it: 1 to 16 hex digits, then either optional spaces and
// tabs or a ";" and anything but CR and LF; no more than maxChunkLine bytes.
func (t *smuggleTracker) stepChunkLine(b byte) {
	switch b {
	case '\r':
		t.state = stChunkLF
		return
	case '\n': // a bare LF: net/http rejects it in chunked framing
		t.poisonNext(reasonBadChunked)
		return
	}
	if t.chunkLen++; t.chunkLen > maxChunkLine {
		t.poisonNext(reasonBadChunked)
		return
	}
	ok := true
	switch t.chunkPhase {
	case chunkDigits:
		if v, hex := hexValue(b); hex {
			t.chunkDigit++
			t.chunkSize = t.chunkSize<<4 | uint64(v)
			ok = t.chunkDigit <= maxChunkDigits
		} else if b == ';' {
			t.chunkPhase = chunkExt
		} else if b == ' ' || b == '\t' {
			t.chunkPhase = chunkSpace
		} else {
			ok = false
		}
	case chunkSpace:
		ok = b == ' ' || b == '\t'
	}
	if !ok {
		t.poisonNext(reasonBadChunked)
	}
}

// endChunkLine starts the chunk's data, or the trailers after the last
// chunk. It rejects what net/http rejects: no digits, and more overhead
// than net/http lets a sender add per byte of data (the same arithmetic).
func (t *smuggleTracker) endChunkLine() {
	if t.chunkDigit == 0 {
		t.poisonNext(reasonBadChunked)
		return
	}
	t.excess += int64(t.chunkLen) + 2
	t.excess -= 16 + (2 * int64(t.chunkSize))
	t.excess = max(t.excess, 0)
	if t.excess > maxChunkExcess {
		t.poisonNext(reasonBadChunked)
		return
	}
	if t.chunkSize == 0 {
		t.state = stTrailerStart
		return
	}
	t.remain = t.chunkSize
	t.state = stChunkData
}

// poisonHead refuses the request whose head is being read, and every later
// one.
func (t *smuggleTracker) poisonHead(reason string) {
	n := t.requests + 1
	if t.counted {
		n = t.requests
	}
	t.poison(n, reason)
}

// poisonNext refuses the requests after the current one.
func (t *smuggleTracker) poisonNext(reason string) { t.poison(t.requests+1, reason) }

func (t *smuggleTracker) poison(n int64, reason string) {
	t.refuse, t.reason, t.done = n, reason, true
}

// addWord and addByte append to the word, which keeps its first
// len(t.word) bytes.
func (t *smuggleTracker) addWord(b []byte) {
	if t.wordLen < len(t.word) {
		copy(t.word[t.wordLen:], b)
	}
	t.wordLen += len(b)
}

func (t *smuggleTracker) addByte(b byte) {
	if t.wordLen < len(t.word) {
		t.word[t.wordLen] = b
	}
	t.wordLen++
}

func (t *smuggleTracker) isWord(s string) bool {
	return t.wordLen == len(s) && string(t.word[:t.wordLen]) == s
}

// isName reports whether the word is the field name s, which is in lower
// case: field names are case-insensitive (ASCII only).
func (t *smuggleTracker) isName(s string) bool {
	if t.wordLen != len(s) {
		return false
	}
	for i, b := range t.word[:t.wordLen] {
		if 'A' <= b && b <= 'Z' {
			b += 'a' - 'A'
		}
		if b != s[i] {
			return false
		}
	}
	return true
}

func hexValue(b byte) (byte, bool) {
	switch {
	case '0' <= b && b <= '9':
		return b - '0', true
	case 'a' <= b && b <= 'f':
		return b - 'a' + 10, true
	case 'A' <= b && b <= 'F':
		return b - 'A' + 10, true
	}
	return 0, false
}

// badBodyReader reads a client's request body for the machine (and hides
// WriteTo, as onlyReader does). A body that fails, whatever the reason (a
// client gone mid-upload, broken chunked framing, a bad trailer, a stall)
// leaves the machine with a request that cannot be completed: the reader
// notes why in c and ends its exchange at once, so that the machine sees
// the request cut short instead of waiting for the rest of it (and holding
// its concurrency slot) until a timeout. A body net/http failed to parse
// also marks c bad: the client gets 400 PX01.
type badBodyReader struct {
	c *upConn
	r io.Reader
}

func (b badBodyReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		b.c.bodyErr = err
		b.c.badBody = malformedBody(err)
		b.c.nc.SetDeadline(aLongTimeAgo)
	}
	return n, err
}

// malformedBody reports whether err, from reading a request body, is a
// parse error rather than the end of the body, a client that went away or
// stalled, or a limit.
func malformedBody(err error) bool {
	var ne net.Error
	var mb *http.MaxBytesError
	return err != io.EOF && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.As(err, &ne) && !errors.As(err, &mb) &&
		!errors.Is(err, errBodyReadTimeout) && !errors.Is(err, context.Canceled) && !errors.Is(err, http.ErrBodyReadAfterClose)
}

// malformedTarget says why the machine could read r's target or host
// differently from the edge, which routed it by r.Host; "" if it cannot.
// net/http lets these through: a request-target that is neither
// origin-form, absolute-form with a host, nor "*" of OPTIONS (which
// net/http answers itself), a fragment (RFC 9112 3.2), and over HTTP/2
// and HTTP/3 a host field that differs from :authority (RFC 9113 8.3.1).
func malformedTarget(r *http.Request) string {
	if v, ok := r.Header["Host"]; ok && (len(v) != 1 || !strings.EqualFold(v[0], r.Host)) {
		return "the host field differs from :authority"
	}
	u := r.RequestURI
	for _, b := range []byte(r.Method + u) {
		if b <= ' ' || b == 0x7f {
			return "the method or request-target has whitespace or a control byte"
		}
	}
	switch {
	case r.Method == http.MethodConnect:
		return ""
	case u == "*":
		return "the request-target * is for OPTIONS only"
	case strings.IndexByte(u, '#') >= 0:
		return "the request-target has a fragment"
	case u != "" && u[0] == '/':
		return ""
	case r.URL.Opaque != "" || r.URL.Host == "" || r.URL.Scheme != "http" && r.URL.Scheme != "https":
		return "the request-target is neither a path nor an http(s) URI with a host"
	}
	return ""
}

// isTokenByte reports a tchar (RFC 9110 5.6.2).
func isTokenByte(b byte) bool {
	switch {
	case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", b) >= 0
}

// isFieldValueByte reports a byte net/http accepts in a field value:
// VCHAR, SP, HTAB and obs-text.
func isFieldValueByte(b byte) bool { return b == '\t' || b >= 0x20 && b != 0x7f }
