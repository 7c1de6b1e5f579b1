package backhaul

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"strings"
	"sync"
	"time"
)

// muxClient is the client end of a mux connection.
type muxClient struct {
	*muxConn
	slots chan struct{} // one per stream the server admits at once
	wg    interface{ Go(func()) }

	// Guarded by muxConn.mu.
	nextID   uint32
	goAway   bool   // the server is going away: no new streams
	goAwayID uint32 // the last stream it will serve
}

// dialMux connects to a peer over TLS and returns once the peer has
// accepted this node: its settings frame comes only after its side of the
// handshake, where it checks this node's certificate, succeeded. (In TLS
// 1.3 the client's side completes first, so without the wait a refusal
// would surface on the first request, looking like a lost connection.)
func (c *Client) dialMux(ctx context.Context, key peerKey) (conn, error) {
	dialer := &net.Dialer{KeepAlive: c.opts.keepAlive()}
	nc, err := dialer.DialContext(ctx, "tcp", key.addr)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(nc, clientTLS(c.id, &c.opts, key.fp))
	if err := tc.HandshakeContext(ctx); err != nil {
		nc.Close()
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { nc.SetReadDeadline(time.Unix(1, 0)) })
	m := newMuxConn(tc, &c.opts)
	maxStreams, err := m.readSettings()
	if !stop() || err != nil {
		nc.Close()
		if err == nil {
			err = ctx.Err()
		}
		return nil, err
	}
	nc.SetReadDeadline(time.Time{})
	mc := &muxClient{muxConn: m, slots: make(chan struct{}, maxStreams), wg: &c.wg, nextID: 1}
	c.wg.Go(mc.readLoop)
	c.wg.Go(m.keepAlive)
	return mc, nil
}

// readSettings reads the server's first frame.
func (c *muxConn) readSettings() (maxStreams int, err error) {
	typ, _, _, n, err := c.readFrame()
	if err != nil {
		return 0, err
	}
	if typ != frameSettings || n != 8 {
		return 0, protocolError("the peer's first frame is not its settings (is it a mux server?)")
	}
	b, err := c.payload(n)
	if err != nil {
		return 0, err
	}
	if v := binary.BigEndian.Uint32(b); v != muxVersion {
		return 0, protocolError(fmt.Sprintf("the peer speaks version %d, this node %d", v, muxVersion))
	}
	maxStreams = int(binary.BigEndian.Uint32(b[4:]))
	if maxStreams < 1 {
		return 0, protocolError("the peer admits no streams")
	}
	return maxStreams, nil
}

func (m *muxClient) alive() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.err == nil && !m.goAway
}

func (m *muxClient) lost(error) bool { return m.ended() != nil }

// retire stops new streams and closes the connection once the streams on
// it have ended: a connection that was replaced would otherwise keep
// answering pings until the client closes.
func (m *muxClient) retire() {
	m.mu.Lock()
	m.goAway, m.retiring = true, true
	idle := len(m.streams) == 0 && m.err == nil
	m.mu.Unlock()
	if idle {
		m.fail(errRetired)
	}
}
func (m *muxClient) cause() error { return m.ended() }
func (m *muxClient) close()       { m.fail(ErrClosed) }

func (m *muxClient) rejected(err error) bool { return errors.Is(err, errStreamRefused) }

// readLoop reads the server's frames until the connection ends.
func (m *muxClient) readLoop() { m.fail(m.readFrames()) }

func (m *muxClient) readFrames() error {
	heads := func(id uint32, b []byte, end bool) error {
		if s := m.stream(id); s != nil {
			return s.receiveHead(b, end)
		}
		return nil
	}
	goAway := func(typ frameType, n int) (bool, error) {
		if typ != frameGoAway {
			return false, nil
		}
		if n != 4 {
			return true, protocolError("goaway frame of " + strconv.Itoa(n) + " bytes")
		}
		b, err := m.payload(n)
		if err != nil {
			return true, err
		}
		m.goingAway(binary.BigEndian.Uint32(b))
		return true, nil
	}
	return m.serveFrames(heads, goAway)
}

// goingAway marks the connection closed to new streams and fails those
// the server will not serve, as refused: they were never processed.
func (m *muxClient) goingAway(last uint32) {
	m.mu.Lock()
	m.goAway, m.goAwayID = true, last
	var refused []*muxStream
	for id, s := range m.streams {
		if id > last {
			refused = append(refused, s)
			delete(m.streams, id)
		}
	}
	m.mu.Unlock()
	for _, s := range refused {
		s.abort(errStreamRefused)
	}
}

// receiveHead takes a response head, or trailers after it.
func (s *muxStream) receiveHead(b []byte, end bool) error {
	s.mu.Lock()
	if s.head == nil && s.headErr == nil {
		s.head, s.headEnd = b, end
		s.recvEnd = end
		close(s.headReady)
		s.mu.Unlock()
		return nil
	}
	s.mu.Unlock()
	if !end {
		return protocolError("trailers without the end of stream " + strconv.Itoa(int(s.id)))
	}
	r := headReader{s: string(b)}
	h := r.fields()
	if err := r.done(); err != nil {
		return err
	}
	s.receiveTrailer(h)
	return nil
}

// clientStream is a request in flight on a muxClient.
type clientStream struct {
	*muxStream
	m        *muxClient
	req      *http.Request
	resp     *http.Response
	unwatch  func() bool // stops the context watch
	finished sync.Once
	closeReq sync.Once
}

// roundTrip sends req on a new stream and waits for the response head.
func (m *muxClient) roundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	hasBody := req.Body != nil && req.Body != http.NoBody
	cl := req.ContentLength
	switch {
	case !hasBody:
		cl = 0
	case cl == 0: // net/http: zero with a body means unknown
		cl = -1
	}
	head, err := encodeRequestHead(req, cl)
	if err != nil {
		return nil, err
	}
	select {
	case m.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-m.done:
		return nil, &connError{m.ended()}
	}

	// The id is taken and the head written under the write lock, so that
	// heads reach the server in the order of their ids, as it requires.
	m.wmu.Lock()
	m.mu.Lock()
	if m.err != nil || m.goAway {
		err := m.err
		m.mu.Unlock()
		m.wmu.Unlock()
		<-m.slots
		if err == nil {
			err = errors.New("mux: the peer is going away")
		}
		return nil, &connError{err} // not sent: another connection will do
	}
	s := &clientStream{muxStream: newStream(m.muxConn, m.nextID), m: m, req: req}
	m.nextID += 2
	s.headReady = make(chan struct{})
	m.streams[s.id] = s.muxStream
	m.mu.Unlock()
	f := frame{typ: frameHeaders, id: s.id, payload: head}
	if !hasBody {
		f.flags = flagEnd
	}
	err = m.writeLocked(f)
	m.wmu.Unlock()
	if err != nil {
		m.fail(fmt.Errorf("mux: write: %w", err))
		s.finish()
		return nil, &connError{err}
	}
	if tr := httptrace.ContextClientTrace(ctx); tr != nil && tr.WroteHeaders != nil {
		tr.WroteHeaders()
	}
	if hasBody {
		m.wg.Go(func() { s.writeBody(cl) })
	}
	s.unwatch = context.AfterFunc(ctx, func() { s.reset(codeCancel, ctx.Err()) })

	<-s.headReady
	s.mu.Lock()
	b, end, err := s.head, s.headEnd, s.headErr
	s.mu.Unlock()
	if err != nil {
		s.finish()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	resp, err := decodeResponseHead(b)
	if err != nil {
		s.finish()
		m.fail(err)
		return nil, &connError{err}
	}
	resp.Request = req
	s.resp = resp
	if end {
		resp.Body = http.NoBody
		s.finish()
	} else {
		resp.Body = &clientBody{s: s}
	}
	return resp, nil
}

// finish ends the stream at this side: it leaves the connection's table,
// frees its slot, stops sending the request body (the server needs no
// more of it once it answered) and closes that body.
func (s *clientStream) finish() {
	s.finished.Do(func() {
		if s.unwatch != nil {
			s.unwatch()
		}
		s.c.remove(s.muxStream)
		s.abort(errStreamDone)
		<-s.m.slots
		s.closeRequestBody()
	})
}

func (s *clientStream) closeRequestBody() {
	s.closeReq.Do(func() {
		if s.req.Body != nil {
			s.req.Body.Close()
		}
	})
}

// writeBody sends the request body, and its trailers, until the body
// ends or the stream does.
func (s *clientStream) writeBody(cl int64) {
	defer s.closeRequestBody()
	bp := bodyBuffers.Get().(*[]byte)
	defer bodyBuffers.Put(bp)
	buf := *bp
	// Trailers are announced in the head, but a body may add unannounced
	// ones as it ends (as a proxy's body does with its client's): those
	// are looked for at the end.
	trailers := len(s.req.Trailer) > 0
	var sent int64
	for {
		if cl >= 0 {
			buf = (*bp)[:min(int64(len(*bp)), cl-sent)]
		}
		n, err := s.req.Body.Read(buf)
		sent += int64(n)
		whole := cl >= 0 && sent == cl
		if n > 0 {
			if cl >= 0 && sent > cl {
				s.reset(codeCancel, fmt.Errorf("request body longer than its ContentLength %d", cl))
				return
			}
			if s.sendData(buf[:n], whole && !trailers) != nil {
				return // the stream ended: nothing more to send
			}
		}
		if whole || err == io.EOF {
			if cl >= 0 && sent < cl {
				s.reset(codeCancel, fmt.Errorf("request body ended after %d of its %d bytes", sent, cl))
				return
			}
			switch {
			case trailers || len(s.req.Trailer) > 0:
				t := appendFields(nil, s.req.Trailer, nil)
				if err := headSizeError(t); err != nil {
					s.reset(codeCancel, fmt.Errorf("request trailers: %w", err))
					return
				}
				s.c.write(frame{typ: frameHeaders, flags: flagEnd, id: s.id, payload: t})
			case !whole || n == 0:
				s.sendData(nil, true)
			}
			return
		}
		if err != nil {
			s.reset(codeCancel, fmt.Errorf("reading the request body: %w", err))
			return
		}
	}
}

var bodyBuffers = sync.Pool{New: func() any { b := make([]byte, maxFrame); return &b }}

// clientBody is a response body.
type clientBody struct {
	s      *clientStream
	closed bool
}

func (b *clientBody) Read(p []byte) (int, error) {
	if b.closed {
		return 0, errors.New("http: read on closed response body")
	}
	n, err := b.s.read(p)
	if err == io.EOF {
		if t := b.s.trailerCopy(); t != nil {
			if b.s.resp.Trailer == nil {
				b.s.resp.Trailer = make(http.Header, len(t))
			}
			for k, vv := range t {
				b.s.resp.Trailer[k] = vv
			}
		}
		b.s.finish()
	}
	return n, err
}

func (b *clientBody) Close() error {
	if b.closed {
		return nil
	}
	b.closed = true
	b.s.mu.Lock()
	ended := b.s.recvEnd || b.s.recvErr != nil
	b.s.mu.Unlock()
	if !ended {
		b.s.reset(codeCancel, errors.New("response body closed"))
	}
	b.s.finish()
	return nil
}

func (s *muxStream) trailerCopy() http.Header {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.trailer
}

// encodeRequestHead encodes req's head, or says why it cannot be sent: a
// server ends the whole connection over a head that is too large, so such
// a request must fail here alone.
func encodeRequestHead(req *http.Request, cl int64) ([]byte, error) {
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	method := req.Method
	if method == "" {
		method = http.MethodGet
	}
	uri := req.URL.RequestURI()
	b := make([]byte, 0, headSize(req.Header)+len(method)+len(host)+len(uri))
	b = binary.AppendUvarint(b, uint64(cl+1))
	b = appendString(b, method)
	b = appendString(b, host)
	b = appendString(b, uri)
	h := req.Header
	if len(req.Trailer) > 0 {
		h = h.Clone()
		keys := make([]string, 0, len(req.Trailer))
		for k := range req.Trailer {
			keys = append(keys, k)
		}
		h["Trailer"] = []string{strings.Join(keys, ",")}
	}
	b = appendFields(b, h, nil)
	return b, headSizeError(b)
}

func decodeResponseHead(b []byte) (*http.Response, error) {
	r := headReader{s: string(b)}
	status := r.uvarint()
	cl := r.length()
	h := r.fields()
	if err := r.done(); err != nil {
		return nil, err
	}
	if status < 200 || status > 999 {
		return nil, protocolError("response status " + strconv.FormatUint(status, 10))
	}
	resp := &http.Response{
		Status:        strconv.Itoa(int(status)) + " " + http.StatusText(int(status)),
		StatusCode:    int(status),
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        h,
		ContentLength: cl,
	}
	resp.Trailer = announcedTrailers(h)
	return resp, nil
}

// announcedTrailers moves a head's Trailer field into a map of the keys
// it names, with nil values, as net/http does.
func announcedTrailers(h http.Header) http.Header {
	vv := h["Trailer"]
	if len(vv) == 0 {
		return nil
	}
	delete(h, "Trailer")
	t := make(http.Header)
	for _, v := range vv {
		for k := range strings.SplitSeq(v, ",") {
			if k = strings.TrimSpace(k); k != "" {
				t[http.CanonicalHeaderKey(k)] = nil
			}
		}
	}
	return t
}
