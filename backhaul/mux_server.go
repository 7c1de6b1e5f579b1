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
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/http/httpguts"
)

// muxServer is the mux side of a Server.
type muxServer struct {
	srv     *Server
	tlsConf *tls.Config
	handler http.Handler
	closing atomic.Bool

	mu    sync.Mutex
	conns map[*muxServerConn]struct{}
}

func (s *Server) listenMux(addr string, tlsConf *tls.Config, h http.Handler) error {
	tcp, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	s.tcp, s.addr = lingerListener{tcp}, tcp.Addr().String()
	s.mux = &muxServer{srv: s, tlsConf: lingerOnRefusal(tlsConf), handler: h, conns: map[*muxServerConn]struct{}{}}
	return nil
}

// serve accepts connections until the listener closes.
func (m *muxServer) serve(ln net.Listener) error {
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if m.closing.Load() {
				return http.ErrServerClosed
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() || errors.Is(err, syscall.EMFILE) {
				// Out of descriptors, say: wait, as net/http does.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				t := time.NewTimer(backoff)
				<-t.C
				continue
			}
			return err
		}
		backoff = 0
		if !m.srv.conns.enter() {
			nc.Close()
			continue
		}
		m.srv.accepted.Add(1)
		go func() {
			defer m.srv.conns.exit()
			m.serveConn(nc)
		}()
	}
}

// muxServerConn is the server end of one mux connection.
type muxServerConn struct {
	*muxConn
	m    *muxServer
	tls  tls.ConnectionState
	ctx  context.Context // ends with the connection
	wg   sync.WaitGroup  // the connection's workers and keep-alive
	jobs chan streamJob  // new streams, to idle workers

	// serving counts the requests admitted whose handler has not returned
	// or whose answer is not all written. (A stream leaves the table
	// before its last frame; see writeFrames.)
	serving atomic.Int64

	// Guarded by muxConn.mu.
	lastID   uint32 // the highest stream id the client opened
	draining bool   // GOAWAY sent: no new streams
}

func (m *muxServer) serveConn(nc net.Conn) {
	tc := tls.Server(nc, m.tlsConf)
	ctx, cancel := context.WithTimeout(context.Background(), m.srv.opts.HandshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		m.srv.opts.Log.Debug("backhaul: handshake failed", "addr", m.srv.addr, "peer", nc.RemoteAddr().String(), "error", err)
		tc.Close()
		return
	}
	connCtx, cancelConn := context.WithCancel(context.Background())
	defer cancelConn()
	sc := &muxServerConn{muxConn: newMuxConn(tc, &m.srv.opts), m: m, tls: tc.ConnectionState(), ctx: connCtx, jobs: make(chan streamJob)}
	if !m.add(sc) {
		tc.Close()
		return
	}
	defer m.remove(sc)
	var b [8]byte
	binary.BigEndian.PutUint32(b[:], muxVersion)
	binary.BigEndian.PutUint32(b[4:], maxStreams)
	if sc.write(frame{typ: frameSettings, payload: b[:]}) == nil {
		sc.wg.Go(sc.keepAlive)
		sc.fail(sc.readFrames())
		// The first failure, which a handler's goroutine may have
		// found (a malformed request head) before the read loop did.
		if err, ok := errors.AsType[protocolError](sc.ended()); ok {
			m.srv.opts.Log.Warn("backhaul: peer broke the protocol", "addr", m.srv.addr, "peer", nc.RemoteAddr().String(), "error", err)
		}
	}
	sc.fail(ErrClosed)
	cancelConn() // every handler's request ends with the connection
	sc.wg.Wait()
}

func (m *muxServer) add(sc *muxServerConn) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closing.Load() {
		return false
	}
	m.conns[sc] = struct{}{}
	return true
}

func (m *muxServer) remove(sc *muxServerConn) {
	m.mu.Lock()
	delete(m.conns, sc)
	m.mu.Unlock()
}

// shutdown stops accepting, sends every connection GOAWAY, waits until
// their streams have ended or ctx has, and closes them.
func (m *muxServer) shutdown(ctx context.Context, ln net.Listener) error {
	m.mu.Lock()
	m.closing.Store(true)
	conns := make([]*muxServerConn, 0, len(m.conns))
	for sc := range m.conns {
		conns = append(conns, sc)
	}
	m.mu.Unlock()
	ln.Close()
	for _, sc := range conns {
		sc.goAway()
	}
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	var err error
wait:
	for _, sc := range conns {
		for sc.serving.Load() > 0 {
			select {
			case <-ctx.Done():
				err = ctx.Err()
				break wait
			case <-t.C:
			}
		}
	}
	for _, sc := range conns {
		sc.fail(ErrClosed)
	}
	return err
}

// goAway tells the client that no stream after the last one it opened will
// be served.
func (sc *muxServerConn) goAway() {
	sc.mu.Lock()
	sc.draining = true
	last := sc.lastID
	sc.mu.Unlock()
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], last)
	sc.write(frame{typ: frameGoAway, payload: b[:]})
}

func (sc *muxServerConn) readFrames() error { return sc.serveFrames(sc.headers, nil) }

// headers opens a stream, or takes a request's trailers.
func (sc *muxServerConn) headers(id uint32, b []byte, end bool) error {
	sc.mu.Lock()
	if st := sc.streams[id]; st != nil {
		sc.mu.Unlock()
		if !end {
			return protocolError("trailers without the end of stream " + strconv.Itoa(int(id)))
		}
		r := headReader{s: string(b)}
		h := r.fields()
		if err := r.done(); err != nil {
			return err
		}
		st.receiveTrailer(h)
		return nil
	}
	if id <= sc.lastID { // trailers of a stream whose handler returned
		sc.mu.Unlock()
		return nil
	}
	if id%2 == 0 {
		sc.mu.Unlock()
		return protocolError("even stream id " + strconv.Itoa(int(id)))
	}
	sc.lastID = id
	if sc.err != nil || sc.draining || len(sc.streams) >= maxStreams {
		sc.mu.Unlock()
		sc.wg.Go(func() { // not from the read loop, which must not write
			var b [4]byte
			binary.BigEndian.PutUint32(b[:], codeRefused)
			sc.write(frame{typ: frameReset, id: id, payload: b[:]})
		})
		return nil
	}
	st := newStream(sc.muxConn, id)
	st.recvEnd = end
	st.leave = true
	sc.streams[id] = st
	sc.serving.Add(1) // under mu: goAway then sees it
	sc.mu.Unlock()
	j := streamJob{st, b, end}
	select {
	case sc.jobs <- j: // an idle worker takes it
	default:
		sc.wg.Go(func() { sc.work(j) })
	}
	return nil
}

// streamJob is a stream for a worker to serve.
type streamJob struct {
	st     *muxStream
	head   []byte
	noBody bool
}

// workerIdle is how long a worker waits for another stream before it
// ends.
const workerIdle = 10 * time.Second

// work serves j, then waits for more streams, up to workerIdle each time.
// A worker that served a request keeps the stack the proxy's handler grew
// it to; a goroutine per stream paid for growing it on every request.
func (sc *muxServerConn) work(j streamJob) {
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		sc.serveStream(j.st, j.head, j.noBody)
		sc.serving.Add(-1)
		idle.Reset(workerIdle)
		select {
		case j = <-sc.jobs:
		case <-idle.C:
			return
		case <-sc.done:
			return
		}
	}
}

// serveStream runs the handler for one request; noBody: its head ended
// the client's side of the stream.
func (sc *muxServerConn) serveStream(st *muxStream, head []byte, noBody bool) {
	defer sc.remove(st)
	req, err := decodeRequestHead(head)
	if _, ok := err.(*requestURIError); ok { // the head is sound; its request is not
		st.reset(codeProtocol, err)
		return
	}
	if err != nil {
		sc.fail(err)
		return
	}
	ctx, cancel := context.WithCancel(sc.ctx)
	defer cancel()
	st.mu.Lock()
	st.cancel = cancel
	// A reset, or the end of the connection, that came before the cancel
	// was set had none to call.
	aborted := st.sendErr != nil
	st.mu.Unlock()
	if aborted {
		cancel()
	}
	req = req.WithContext(ctx)
	req.RemoteAddr = sc.nc.RemoteAddr().String()
	req.TLS = &sc.tls
	if noBody {
		req.Body = http.NoBody
	} else {
		req.Body = &serverBody{st: st, req: req}
	}
	w := &responseWriter{st: st, header: make(http.Header), req: req}
	defer func() {
		if w.readTimer != nil {
			w.readTimer.Stop()
		}
		if p := recover(); p != nil {
			if p != http.ErrAbortHandler {
				sc.m.srv.opts.Log.Error("backhaul: handler panicked", "addr", sc.m.srv.addr, "panic", p)
			}
			st.reset(codeInternal, errStreamInternal)
		}
	}()
	sc.m.handler.ServeHTTP(w, req)
	if err := w.finish(); err != nil && sc.ended() == nil {
		st.reset(codeInternal, err)
	}
}

func decodeRequestHead(b []byte) (*http.Request, error) {
	r := headReader{s: string(b)}
	cl := r.length()
	method := r.string()
	host := r.string()
	uri := r.string()
	h := r.fields()
	if err := r.done(); err != nil {
		return nil, err
	}
	// A client checks both before it sends (validRequest): a peer that
	// sends a method or Host a handler could not forward safely (CR LF,
	// spaces) is broken or hostile.
	if !validMethod(method) {
		return nil, protocolError(fmt.Sprintf("malformed head: method %q", method))
	}
	if host != "" && !httpguts.ValidHostHeader(host) {
		return nil, protocolError(fmt.Sprintf("malformed head: Host %q", host))
	}
	u, err := url.ParseRequestURI(uri)
	if err != nil {
		return nil, &requestURIError{err}
	}
	req := &http.Request{
		Method:        method,
		URL:           u,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        h,
		Host:          host,
		RequestURI:    uri,
		ContentLength: cl,
	}
	req.Trailer = announcedTrailers(h)
	return req, nil
}

// requestURIError is a well-formed head whose request URI does not parse:
// a client can send one (url.URL.RequestURI of a relative or opaque URL is
// not always a request URI), and only its stream fails.
type requestURIError struct{ err error }

func (e *requestURIError) Error() string { return "mux: request URI: " + e.err.Error() }
func (e *requestURIError) Unwrap() error { return e.err }

// serverBody is a request body. Closing it ends reads in progress too, as
// net/http's do: a handler that copies the body in another goroutine stops
// it that way.
type serverBody struct {
	st  *muxStream
	req *http.Request
}

func (b *serverBody) Read(p []byte) (int, error) {
	n, err := b.st.read(p)
	if err == io.EOF {
		if t := b.st.trailerCopy(); t != nil {
			if b.req.Trailer == nil {
				b.req.Trailer = make(http.Header, len(t))
			}
			for k, vv := range t {
				b.req.Trailer[k] = vv
			}
		}
	}
	return n, err
}

func (b *serverBody) Close() error {
	b.st.failRead(http.ErrBodyReadAfterClose)
	return nil
}

// responseWriter is the http.ResponseWriter of a mux stream. It buffers
// the head and up to writeBuffer bytes of body, so that a small answer
// goes out in one write when the handler returns; Flush sends what it has.
type responseWriter struct {
	st        *muxStream
	req       *http.Request
	header    http.Header
	status    int // 0 until WriteHeader
	headSent  bool
	buf       []byte
	err       error // the stream failed: every later write fails
	readTimer *time.Timer
}

func (w *responseWriter) Header() http.Header { return w.header }

func (w *responseWriter) WriteHeader(code int) {
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if w.status != 0 || code < 200 { // informational answers are not carried
		return
	}
	w.status = code
}

func (w *responseWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !bodyAllowed(w.status) || w.req.Method == http.MethodHead {
		return 0, http.ErrBodyNotAllowed
	}
	if w.err != nil {
		return 0, w.err
	}
	if len(w.buf)+len(p) <= writeBuffer {
		w.buf = append(w.buf, p...)
		return len(p), nil
	}
	if err := w.send(p, false); err != nil {
		return 0, err
	}
	return len(p), nil
}

func bodyAllowed(status int) bool {
	return status >= 200 && status != http.StatusNoContent && status != http.StatusNotModified
}

// Flush sends the head and the buffered body.
func (w *responseWriter) Flush() { w.FlushError() }

// FlushError is Flush with its error, for http.ResponseController.
func (w *responseWriter) FlushError() error {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return w.err
	}
	if w.headSent && len(w.buf) == 0 {
		return nil
	}
	return w.send(nil, false)
}

// EnableFullDuplex is a no-op: a mux stream always is.
func (w *responseWriter) EnableFullDuplex() error { return nil }

// SetReadDeadline makes reads of the request body fail at t.
func (w *responseWriter) SetReadDeadline(t time.Time) error {
	if w.readTimer != nil {
		w.readTimer.Stop()
		w.readTimer = nil
	}
	if t.IsZero() {
		return nil
	}
	if d := time.Until(t); d > 0 {
		w.readTimer = time.AfterFunc(d, func() { w.st.failRead(os.ErrDeadlineExceeded) })
		return nil
	}
	w.st.failRead(os.ErrDeadlineExceeded)
	return nil
}

// send sends the head if it has not gone yet, the buffered body and then
// p; end ends the stream with the last of them.
func (w *responseWriter) send(p []byte, end bool) error {
	var fs [3]frame
	n := 0
	if !w.headSent {
		head := w.encodeHead(end && len(p) == 0)
		if err := headSizeError(head); err != nil {
			w.st.reset(codeInternal, err)
			return w.fail(err)
		}
		fs[n] = frame{typ: frameHeaders, id: w.st.id, payload: head}
		if end && len(w.buf)+len(p) == 0 {
			fs[n].flags = flagEnd
		}
		n++
		w.headSent = true
	} else if end && len(w.buf)+len(p) == 0 {
		fs[n] = frame{typ: frameData, flags: flagEnd, id: w.st.id}
		n++
	}
	// The buffered body goes with the head when the window allows (it
	// always does for a stream's first bytes).
	if len(w.buf) > 0 {
		k, err := w.st.reserve(len(w.buf))
		if err != nil {
			return w.fail(err)
		}
		fs[n] = frame{typ: frameData, id: w.st.id, payload: w.buf[:k]}
		if end && len(p) == 0 && k == len(w.buf) {
			fs[n].flags = flagEnd
		}
		n++
		if err := w.st.writeFrames(fs[:n]...); err != nil {
			return w.fail(&connError{err})
		}
		n = 0
		if k < len(w.buf) {
			if err := w.st.sendData(w.buf[k:], end && len(p) == 0); err != nil {
				return w.fail(err)
			}
		}
		w.buf = w.buf[:0]
	}
	if n > 0 {
		if err := w.st.writeFrames(fs[:n]...); err != nil {
			return w.fail(&connError{err})
		}
	}
	if len(p) > 0 {
		if err := w.st.sendData(p, end); err != nil {
			return w.fail(err)
		}
	}
	return nil
}

func (w *responseWriter) fail(err error) error {
	w.err = err
	return err
}

// encodeHead encodes the response head, without the trailers the handler
// announced (it sets them after the head). A handler that set no
// Content-Length and is done (whole: its body is the buffer) gets the
// buffer's length, as net/http does for small answers.
func (w *responseWriter) encodeHead(whole bool) []byte {
	cl := contentLength(w.header)
	if cl < 0 && whole && bodyAllowed(w.status) && w.req.Method != http.MethodHead {
		cl = int64(len(w.buf))
		w.header["Content-Length"] = []string{strconv.Itoa(len(w.buf))}
	}
	announced := w.header["Trailer"]
	skip := func(k string) bool {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			return true
		}
		for _, v := range announced {
			for a := range strings.SplitSeq(v, ",") {
				if http.CanonicalHeaderKey(strings.TrimSpace(a)) == k {
					return true
				}
			}
		}
		return false
	}
	b := make([]byte, 0, headSize(w.header)+16)
	b = binary.AppendUvarint(b, uint64(w.status))
	b = binary.AppendUvarint(b, uint64(cl+1))
	return appendFields(b, w.header, skip)
}

// finish ends the stream when the handler has returned: the head if it has
// not gone, the buffered body, and the trailers.
func (w *responseWriter) finish() error {
	if w.err != nil {
		return nil // the stream failed already
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	t := w.trailers()
	if len(t) == 0 {
		return w.send(nil, true)
	}
	b := appendFields(nil, t, nil)
	if err := headSizeError(b); err != nil {
		return fmt.Errorf("trailers: %w", err) // the caller resets the stream
	}
	if err := w.send(nil, false); err != nil {
		return err
	}
	return w.st.writeFrames(frame{typ: frameHeaders, flags: flagEnd, id: w.st.id, payload: b})
}

// trailers collects the trailers the handler set: keys it announced in
// the Trailer header, and keys with http.TrailerPrefix.
func (w *responseWriter) trailers() http.Header {
	var t http.Header
	for _, v := range w.header["Trailer"] {
		for k := range strings.SplitSeq(v, ",") {
			k = http.CanonicalHeaderKey(strings.TrimSpace(k))
			if vv, ok := w.header[k]; ok && k != "" {
				if t == nil {
					t = make(http.Header)
				}
				t[k] = vv
			}
		}
	}
	for k, vv := range w.header {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			if t == nil {
				t = make(http.Header)
			}
			t[http.CanonicalHeaderKey(strings.TrimPrefix(k, http.TrailerPrefix))] = vv
		}
	}
	return t
}
