package backhaul

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// FuzzMuxServerFrames feeds a whole stream of bytes, as a peer would send
// them after the handshake, to a mux server connection's read loop, with
// an echo handler behind it. Nothing may panic; the loop must end with the
// input (EOF) or a protocol error; every handler and worker must return
// once the connection ends; the handler runs at most once per head frame
// the input holds and only sees well-formed requests; and what the server
// writes back must be whole frames on stream 0 or on a stream the peer
// opened.
func FuzzMuxServerFrames(f *testing.F) {
	get := muxFuzzHead(f, "GET", "app.example", "/", "X-Edge", "nrt", 0)
	post := muxFuzzHead(f, "POST", "app.example", "/upload?q=1", "Trailer", "X-Sum", -1)
	reset := binary.BigEndian.AppendUint32(nil, codeCancel)
	window := binary.BigEndian.AppendUint32(nil, 1<<16)
	trailer := appendFields(nil, http.Header{"X-Sum": {"abc"}}, nil)
	for _, seed := range [][]byte{
		nil,
		muxFuzzFrame(frameHeaders, flagEnd, 1, get),
		cat(muxFuzzFrame(frameHeaders, 0, 1, post), muxFuzzFrame(frameData, 0, 1, []byte("hello ")),
			muxFuzzFrame(frameData, flagEnd, 1, []byte("world"))),
		cat(muxFuzzFrame(frameHeaders, 0, 3, post), muxFuzzFrame(frameData, 0, 3, []byte("body")),
			muxFuzzFrame(frameHeaders, flagEnd, 3, trailer)),
		cat(muxFuzzFrame(frameHeaders, 0, 1, post), muxFuzzFrame(frameWindow, 0, 1, window),
			muxFuzzFrame(frameReset, 0, 1, reset), muxFuzzFrame(frameHeaders, flagEnd, 3, get)),
		cat(muxFuzzFrame(framePing, 0, 0, []byte("12345678")), muxFuzzFrame(framePing, flagAck, 0, []byte("12345678")),
			muxFuzzFrame(frameType(42), 0, 7, []byte("future")), muxFuzzFrame(frameHeaders, flagEnd, 5, get)),
		muxFuzzFrame(frameHeaders, flagEnd, 2, get),                                                   // even stream id
		cat(muxFuzzFrame(frameHeaders, flagEnd, 1, get), muxFuzzFrame(frameData, 0, 1, []byte("x"))),  // data after the end
		muxFuzzFrame(frameHeaders, flagEnd, 1, []byte{1, 3, 'G', 'E', 'T', 0, 1, '0', 0}),             // opaque request URI
		muxFuzzFrame(frameHeaders, flagEnd, 1, []byte{1, 5, 'G', ' ', 'T', '\r', '\n', 0, 1, '/', 0}), // bad method
		muxFuzzFrame(framePing, 0, 0, []byte("short")),
		get[:4],
		[]byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
		{0xff, 0xff, 0xff, 1, 0, 0, 0, 0, 1},
	} {
		f.Add(seed)
	}
	opts, err := Options{Protocol: ProtocolMux}.withDefaults()
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		heads, opened := muxFuzzHeads(raw)
		var calls atomic.Int64
		handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			calls.Add(1)
			if !validMethod(r.Method) || r.ContentLength < -1 || r.URL == nil {
				t.Errorf("handler got method %q, ContentLength %d, URL %v", r.Method, r.ContentLength, r.URL)
			}
			checkFields(t, "request", r.Header)
			w.Header().Set("Trailer", "X-Got")
			n, _ := io.Copy(w, r.Body)
			if n > int64(len(raw)) {
				t.Errorf("handler read %d body bytes from %d bytes of input", n, len(raw))
			}
			w.Header().Set("X-Got", "yes")
		})
		nc := &fuzzConn{r: bytes.NewReader(raw)}
		srv := &Server{opts: opts, addr: "fuzz"}
		m := &muxServer{srv: srv, handler: handler, conns: map[*muxServerConn]struct{}{}}
		ctx, cancel := context.WithCancel(context.Background())
		sc := &muxServerConn{muxConn: newMuxConn(nc, &srv.opts), m: m, ctx: ctx, jobs: make(chan streamJob)}

		err := sc.readFrames()
		var pe protocolError
		switch {
		case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.As(err, &pe):
		case errors.Is(err, net.ErrClosed) && errors.As(sc.ended(), &pe):
			// A worker found a malformed head first and ended the connection.
		default:
			t.Errorf("read loop ended with %v (%T) (connection: %v), want EOF or a protocol error", err, err, sc.ended())
		}
		sc.fail(err)
		cancel()
		done := make(chan struct{})
		go func() { sc.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("handlers and workers still running 10s after the connection ended")
		}
		if n := sc.serving.Load(); n != 0 {
			t.Errorf("%d requests still counted as serving after every worker returned", n)
		}
		if c := calls.Load(); c > int64(heads) {
			t.Errorf("handler ran %d times for %d head frames", c, heads)
		}
		checkServerFrames(t, nc.written(), opened)
	})
}

// checkServerFrames fails unless out is whole frames, each on stream 0 or
// on one of the streams the peer opened, none larger than a receiver
// accepts.
func checkServerFrames(t *testing.T, out []byte, opened map[uint32]bool) {
	t.Helper()
	for len(out) > 0 {
		if len(out) < frameHeaderLen {
			t.Fatalf("server wrote %d bytes of a frame header", len(out))
		}
		n := int(out[0])<<16 | int(out[1])<<8 | int(out[2])
		typ, id := frameType(out[3]), binary.BigEndian.Uint32(out[5:])
		out = out[frameHeaderLen:]
		switch {
		case n > len(out):
			t.Fatalf("server wrote a frame (type %d) of %d bytes with %d bytes after its header", typ, n, len(out))
		case typ == frameData && n > maxFrame, n > maxHead:
			t.Errorf("server wrote a frame (type %d) of %d bytes", typ, n)
		case id != 0 && !opened[id]:
			t.Errorf("server wrote a frame (type %d) on stream %d, which the peer did not open", typ, id)
		}
		out = out[n:]
	}
}

// muxFuzzHeads counts the whole head frames in raw and the streams they
// may open, as the server's read loop would see them.
func muxFuzzHeads(raw []byte) (heads int, opened map[uint32]bool) {
	opened = map[uint32]bool{}
	for len(raw) >= frameHeaderLen {
		n := int(raw[0])<<16 | int(raw[1])<<8 | int(raw[2])
		if n > len(raw)-frameHeaderLen {
			break
		}
		if frameType(raw[3]) == frameHeaders {
			heads++
			opened[binary.BigEndian.Uint32(raw[5:])] = true
		}
		raw = raw[frameHeaderLen+n:]
	}
	return heads, opened
}

func muxFuzzFrame(typ frameType, flags uint8, id uint32, payload []byte) []byte {
	n := len(payload)
	b := []byte{byte(n >> 16), byte(n >> 8), byte(n), byte(typ), flags}
	b = binary.BigEndian.AppendUint32(b, id)
	return append(b, payload...)
}

func muxFuzzHead(f *testing.F, method, host, uri, key, value string, cl int64) []byte {
	head, err := encodeRequestHead(seedRequest(method, host, uri, key, value), cl)
	if err != nil {
		f.Fatal(err)
	}
	return head
}

func cat(bs ...[]byte) []byte { return bytes.Join(bs, nil) }

// fuzzConn is a net.Conn that reads a fixed input and keeps what is
// written, until it is closed.
type fuzzConn struct {
	r *bytes.Reader

	mu     sync.Mutex
	w      bytes.Buffer
	closed bool
}

func (c *fuzzConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return 0, net.ErrClosed
	}
	return c.r.Read(p)
}

func (c *fuzzConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	return c.w.Write(p)
}

func (c *fuzzConn) written() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.w.Bytes())
}

func (c *fuzzConn) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	return nil
}

func (c *fuzzConn) LocalAddr() net.Addr              { return fuzzAddr{} }
func (c *fuzzConn) RemoteAddr() net.Addr             { return fuzzAddr{} }
func (c *fuzzConn) SetDeadline(time.Time) error      { return nil }
func (c *fuzzConn) SetReadDeadline(time.Time) error  { return nil }
func (c *fuzzConn) SetWriteDeadline(time.Time) error { return nil }

type fuzzAddr struct{}

func (fuzzAddr) Network() string { return "fuzz" }
func (fuzzAddr) String() string  { return "peer.fuzz:1" }
