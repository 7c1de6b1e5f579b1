package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"golang.org/x/sync/errgroup"

	"github.com/godwit/godwit/config"
)

// HTTP/3 at the edge: listen.http3 serves the request pipeline over QUIC
// (quic-go's http3), with the TLS settings of listen.https, and the https
// listener's responses advertise it with Alt-Svc. Server.Listen binds the
// UDP socket; Run starts QUIC on it, serves, and drains it with the other
// listeners. Its connections count against the client connection limits
// (connlimit.go) as TCP ones do: see limitQUICListener.

// hdrAltSvc advertises listen.http3 (RFC 7838) on responses of the https
// and http3 listeners.
const hdrAltSvc = "Alt-Svc"

// altSvcMaxAge is how long, in seconds, a client may remember that
// listen.http3 serves HTTP/3: a day, as is common. quic-go's own
// Server.SetQUICHeaders would say 30 days; an edge that loses its UDP port
// (a firewall change) should not leave clients trying it for a month.
const altSvcMaxAge = "86400"

// altSvc returns the Alt-Svc value advertising HTTP/3 on the UDP port of
// udp, as a header value slice of capacity 1 (shared by every response:
// an append copies it); nil when udp is nil (listen.http3 is off).
func altSvc(udp *net.UDPConn) []string {
	if udp == nil {
		return nil
	}
	return []string{`h3=":` + portOf(udp.LocalAddr()) + `"; ma=` + altSvcMaxAge}
}

// quicBufferSize is the size quic-go tries to raise a UDP socket's
// receive and send buffers to when it starts on it (desiredBufferSize in
// its sys_conn_buffers_nonopenbsd.go, v0.65.0), compared, as quic-go
// does, with what getsockopt reports. Below it, bursts of packets are
// dropped by the kernel and transfers slow down.
const quicBufferSize = 7 << 20

// quicBufferAdvice is quic-go's advice for Linux
// (https://github.com/quic-go/quic-go/wiki/UDP-Buffer-Sizes): the kernel
// caps what a process may ask for at these limits.
const quicBufferAdvice = "sysctl -w net.core.rmem_max=7500000 net.core.wmem_max=7500000"

// h3BodyProbe is how long an HTTP/3 request of a method that usually has
// no body (GET, HEAD, DELETE, ...) and no Content-Length may take to show
// whether it has one: see probedBody.
const h3BodyProbe = 25 * time.Millisecond

// listenHTTP3 binds the UDP socket of listen.http3, if it is on and not
// bound yet. s.mu is held. QUIC starts on the socket in Run.
func (s *Server) listenHTTP3() error {
	addr := s.cfg.Listen.HTTP3
	if addr == "" || s.h3udp != nil {
		return nil
	}
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err == nil {
		s.h3udp, err = net.ListenUDP("udp", ua)
	}
	if err != nil {
		return fmt.Errorf("listen.http3 %s: %w", addr, err)
	}
	return nil
}

// edgeHTTP3 is the listen.http3 listener: the UDP socket, the QUIC
// transport and listener on it, and the HTTP/3 server. It owns all of
// them: shutdown closes them in order and returns once every connection
// and handler has ended.
type edgeHTTP3 struct {
	udp *net.UDPConn
	qt  *quic.Transport
	ln  *limitQUICListener
	srv *http3.Server
	log *slog.Logger

	inflight atomic.Int64 // requests whose handler has not returned
}

// serveHTTP3 starts QUIC on udp and serves h on it in g. It returns nil,
// with the error handed to g (which ends Run), if QUIC could not start;
// udp is closed then.
func (s *Server) serveHTTP3(g *errgroup.Group, udp *net.UDPConn, h http.Handler) *edgeHTTP3 {
	e, err := newEdgeHTTP3(udp, s.tlsConf, s.cfg.Proxy, s.conns, h, s.log.With("listener", "http3"))
	if err != nil {
		g.Go(func() error { return fmt.Errorf("serve http3: %w", err) })
		return nil
	}
	g.Go(e.serve)
	return e
}

// newEdgeHTTP3 starts QUIC on udp with the certificates of tlsConf and
// checks the socket's buffers. Its connections count against lim, whose
// listeners include "http3". Nothing is served until serve.
func newEdgeHTTP3(udp *net.UDPConn, tlsConf *tls.Config, pc config.Proxy, lim *connLimiter, h http.Handler, log *slog.Logger) (*edgeHTTP3, error) {
	if tlsConf == nil {
		udp.Close()
		return nil, errors.New("no TLS configuration")
	}
	e := &edgeHTTP3{udp: udp, qt: &quic.Transport{Conn: udp}, log: log}
	qc := &quic.Config{
		// As the https listener's TLS handshake must end within the
		// read header timeout, so must QUIC's.
		HandshakeIdleTimeout: pc.ReadHeaderTimeout,
		// QUIC's idle timeout ends a connection that carried no packet
		// for that long, requests in flight or not: a long poll whose
		// answer takes longer than idle_timeout would be cut, as would
		// the answer to a client that sends no PINGs of its own. So the
		// edge PINGs (every half of it), and QUIC's timeout only finds
		// peers that vanished; an idle connection (no request in a
		// handler for idle_timeout) is closed by h3Idle and http3.
		MaxIdleTimeout:  pc.IdleTimeout,
		KeepAlivePeriod: pc.IdleTimeout / 2,
		// 0-RTT stays off. Early data is replayable: an attacker who
		// captured a client's first flight can send it again, and the
		// edge would forward its requests to the machine once more. A
		// POST (a payment, an order) must not run twice, and replay
		// protection across a fleet of edges (a shared strike register)
		// costs more than the round trip saved on a resumed connection.
		// (Transport.Listen, rather than ListenEarly, also only returns
		// connections whose handshake completed.)
		Allow0RTT: false,
	}
	// ConfigureTLSConfig clones tlsConf (certificates, GetCertificate and
	// all) and offers ALPN "h3" only.
	ln, err := e.qt.Listen(http3.ConfigureTLSConfig(tlsConf), qc)
	if err != nil {
		e.qt.Close()
		udp.Close()
		return nil, err
	}
	e.ln = lim.listenQUIC(ln)
	e.ln.idle = pc.IdleTimeout
	// quic-go raised the socket's buffers when it started on it above,
	// and, if it could not, said so once per process on the standard
	// logger, which godwit's log does not see.
	e.checkBuffers()
	e.srv = &http3.Server{
		Handler:        e.handler(h),
		MaxHeaderBytes: pc.MaxHeaderBytes,
		IdleTimeout:    pc.IdleTimeout,
		ConnContext:    e.ln.connContext,
		Logger:         log,
	}
	return e, nil
}

// checkBuffers logs a warning, with quic-go's advice, when the socket's
// receive or send buffer is smaller than quic-go asked for.
func (e *edgeHTTP3) checkBuffers() {
	rcv, snd, err := udpBufferSizes(e.udp)
	if err != nil {
		if !errors.Is(err, errors.ErrUnsupported) {
			e.log.Debug("cannot read the UDP socket's buffer sizes", "err", err)
		}
		return
	}
	e.warnBuffers(rcv, snd)
}

// warnBuffers logs the warning of checkBuffers for buffers of rcv and snd
// bytes, if they are too small.
func (e *edgeHTTP3) warnBuffers(rcv, snd int) {
	if rcv >= quicBufferSize && snd >= quicBufferSize {
		return
	}
	e.log.Warn("the UDP socket of listen.http3 has small buffers: the kernel will drop bursts of packets and HTTP/3 transfers will be slower; raise the limits",
		"receive_buffer_kib", rcv/1024, "send_buffer_kib", snd/1024, "want_kib", quicBufferSize/1024,
		"fix", quicBufferAdvice, "see", "https://github.com/quic-go/quic-go/wiki/UDP-Buffer-Sizes")
}

// serve serves HTTP/3 until shutdown. It returns nil after shutdown.
func (e *edgeHTTP3) serve() error {
	err := e.srv.ServeListener(e.ln)
	if errors.Is(err, http.ErrServerClosed) || errors.Is(err, quic.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("serve http3: %w", err)
}

// shutdown stops accepting connections, sends GOAWAY on every connection
// and lets the requests in flight finish until ctx ends; clients close
// their connections once their last request is answered. At ctx's end
// the connections left are closed. Then the socket closes. It returns
// ctx's error when requests were still in flight then, and were cut.
func (e *edgeHTTP3) shutdown(ctx context.Context) error {
	// http3 leaves a listener given to ServeListener to its owner. Closed
	// first, it refuses new handshakes at once rather than completing
	// them only to send GOAWAY.
	e.ln.Close()
	// Shutdown closes the server itself when its context ends; the
	// requests in flight are counted first, so that connections left
	// idle by clients that ignore GOAWAY do not count as cut requests.
	sctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- e.srv.Shutdown(sctx) }()
	var err error
	select {
	case err = <-done: // every client closed its connection
	case <-ctx.Done():
		cut := e.inflight.Load() > 0
		cancel()
		<-done
		if cut {
			err = ctx.Err()
		} else {
			e.log.Debug("closed idle HTTP/3 connections whose clients ignored GOAWAY at the end of the drain")
		}
	}
	e.srv.Close()
	e.qt.Close() // closes the connections left; waits for the transport's read loop
	e.ln.wait()  // their slots are back
	e.udp.Close()
	return err
}

// h3RefusedReason is the reason phrase of the CONNECTION_CLOSE
// (H3_EXCESSIVE_LOAD) that refuses a QUIC connection over the node's
// limit: HTTP/3's answer "503 PL05".
const h3RefusedReason = "godwit " + string(CodeNodeConnLimit) + ": too many connections to this edge"

// limitQUICListener counts the QUIC connections its listener accepts
// against the node's limit, as limitListener does TCP ones, and refuses
// those over it itself: Accept never returns them.
//
// A connection is counted once its handshake has completed: the listener
// (Transport.Listen, 0-RTT off) returns no other, and a QUIC handshake in
// progress holds no socket of its own (quic-go bounds how many it runs),
// so a handshake that fails is never counted. One over the limit is
// closed at once with H3_EXCESSIVE_LOAD and h3RefusedReason, which its
// client reports; the refusal is counted and logged by acquire.
//
// Each connection Accept returns holds its slot until it ends, however it
// ends (the client closes it, the idle timeout, http3's Close, the
// transport's Close at the end of shutdown): a context.AfterFunc on the
// connection's context releases it. connContext, the http3.Server's
// ConnContext, puts the slot into the context of the connection's
// requests, so that they take app slots through it.
type limitQUICListener struct {
	ln   *quic.Listener
	lim  *connLimiter
	idle time.Duration // proxy.idle_timeout: see h3Idle; 0: none

	mu      sync.Mutex
	closed  bool                     // by Close: no more slots
	slots   map[*quic.Conn]*connSlot // of the connections open
	pending sync.WaitGroup           // slots not released yet
}

// listenQUIC wraps ln, the QUIC listener of listen.http3.
func (l *connLimiter) listenQUIC(ln *quic.Listener) *limitQUICListener {
	if l.listeners["http3"] == nil {
		panic("proxy: connection limiter: unknown listener http3")
	}
	return &limitQUICListener{ln: ln, lim: l, slots: make(map[*quic.Conn]*connSlot)}
}

// Accept returns the next connection within the node's limit.
func (l *limitQUICListener) Accept(ctx context.Context) (*quic.Conn, error) {
	for {
		c, err := l.ln.Accept(ctx)
		if err != nil {
			return nil, err
		}
		if l.admit(c) {
			return c, nil
		}
	}
}

// admit takes a slot for c, released when c ends, or closes c.
func (l *limitQUICListener) admit(c *quic.Conn) bool {
	l.mu.Lock()
	if l.closed { // shutdown began after its handshake
		l.mu.Unlock()
		c.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
		return false
	}
	slot := l.lim.acquire("http3")
	if slot == nil {
		l.mu.Unlock()
		c.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeExcessiveLoad), h3RefusedReason)
		return false
	}
	if l.idle > 0 {
		slot.idle = watchH3Idle(c, l.idle)
	}
	l.slots[c] = slot
	l.pending.Add(1)
	l.mu.Unlock()
	context.AfterFunc(c.Context(), func() {
		l.mu.Lock()
		delete(l.slots, c)
		l.mu.Unlock()
		slot.release()
		l.pending.Done()
	})
	return true
}

// connContext is the http3.Server's ConnContext: it puts c's slot into
// the context of its requests.
func (l *limitQUICListener) connContext(ctx context.Context, c *quic.Conn) context.Context {
	l.mu.Lock()
	slot := l.slots[c]
	l.mu.Unlock()
	if slot == nil { // c ended already
		return ctx
	}
	return withConnSlot(ctx, slot)
}

// Addr is the listener's UDP address.
func (l *limitQUICListener) Addr() net.Addr { return l.ln.Addr() }

// Close stops accepting. The connections accepted go on; wait waits for
// their end.
func (l *limitQUICListener) Close() error {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	return l.ln.Close()
}

// wait returns once every connection Accept returned has ended and given
// its slot back. It is called after Close, once the connections are
// closed (by the transport's Close).
func (l *limitQUICListener) wait() {
	l.pending.Wait()
}

// handler wraps the request pipeline for HTTP/3: it counts requests in
// flight, drops the connection-specific header fields of its responses
// (see h3ResponseWriter) and gives requests of unknown length that have
// no body an empty one (see probedBody).
func (e *edgeHTTP3) handler(h http.Handler) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		e.inflight.Add(1)
		defer e.inflight.Add(-1)
		if s := connSlotFrom(r.Context()); s != nil && s.idle != nil {
			s.idle.begin()
			defer s.idle.end()
		}
		w := &h3ResponseWriter{ResponseWriter: rw}
		if r.ContentLength < 0 && !methodExpectsBody(r.Method) && r.Method != http.MethodConnect {
			pb := probeBody(r.Body, h3BodyProbe)
			defer pb.stop()
			if pb.empty() {
				r.Body, r.ContentLength = http.NoBody, 0
			} else {
				r.Body = pb
			}
		}
		h.ServeHTTP(w, r)
		w.drop() // nothing written: quic-go sends the header now
	})
}

// h3ConnectionFields are the header fields that are connection-specific
// in HTTP/1 and make an HTTP/3 message malformed (RFC 9114, section
// 4.2), as quic-go's client rejects them, in canonical form.
var h3ConnectionFields = [...]string{"Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Upgrade"}

// h3ResponseWriter drops the connection-specific header fields of a
// response before quic-go sends its header, as net/http's HTTP/2 server
// does; quic-go's server sends every field it is given. The pipeline sets
// "Connection: close" on refusals for HTTP/1 (and HTTP/2, where net/http
// turns it into GOAWAY): an HTTP/3 connection has no per-connection
// GOAWAY in quic-go, so a refused request ("503 PL06") is answered and
// its connection serves on.
type h3ResponseWriter struct {
	http.ResponseWriter
	sent bool // the final header was sent: nothing to drop any more
}

// drop deletes the connection-specific fields of the header to send.
func (w *h3ResponseWriter) drop() {
	if w.sent {
		return
	}
	h := w.ResponseWriter.Header()
	for _, k := range h3ConnectionFields {
		delete(h, k)
	}
}

func (w *h3ResponseWriter) WriteHeader(code int) {
	w.drop()
	w.ResponseWriter.WriteHeader(code)
	if code >= 200 {
		w.sent = true
	}
}

func (w *h3ResponseWriter) Write(p []byte) (int, error) {
	w.drop()
	w.sent = true
	return w.ResponseWriter.Write(p)
}

// FlushError sends the header (if not sent yet) and what was written.
func (w *h3ResponseWriter) FlushError() error {
	w.drop()
	w.sent = true
	return http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *h3ResponseWriter) Flush() { _ = w.FlushError() }

// Unwrap gives http.ResponseController the methods of quic-go's writer
// (deadlines).
func (w *h3ResponseWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// probedBody is an HTTP/3 request body of unknown length (no
// Content-Length) whose first read starts as the request arrives, to
// learn whether there is a body at all. HTTP/2 marks a request without
// one (END_STREAM on its HEADERS), and net/http gives it http.NoBody;
// HTTP/3 ends the request stream instead, which quic-go's request does not
// report. Without the probe every GET over HTTP/3 would reach the machine
// with an empty chunked body. The stream's end usually arrives in the
// same packet as the request head, so the probe returns at once; a body
// that takes longer than the probe's wait is forwarded as one of unknown
// length (chunked), which is always correct.
type probedBody struct {
	src  io.ReadCloser
	done chan struct{} // closed once the first read returned
	buf  [1]byte
	n    int   // bytes of buf read, set before done closes
	err  error // of the first read, set before done closes
	off  int   // bytes of buf handed to Read
}

// probeBody starts the first read of src and waits up to wait for it.
func probeBody(src io.ReadCloser, wait time.Duration) *probedBody {
	pb := &probedBody{src: src, done: make(chan struct{})}
	go func() {
		defer close(pb.done)
		for pb.n == 0 && pb.err == nil {
			pb.n, pb.err = src.Read(pb.buf[:])
		}
	}()
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-pb.done:
	case <-t.C:
	}
	return pb
}

// empty reports whether the body is known to have ended without a byte.
func (pb *probedBody) empty() bool {
	select {
	case <-pb.done:
		return pb.n == 0 && pb.err == io.EOF
	default:
		return false
	}
}

func (pb *probedBody) Read(p []byte) (int, error) {
	<-pb.done
	if pb.off < pb.n {
		n := copy(p, pb.buf[pb.off:pb.n])
		pb.off += n
		return n, nil
	}
	if pb.err != nil {
		return 0, pb.err
	}
	return pb.src.Read(p)
}

// Close closes the stream's read side and waits for the first read.
func (pb *probedBody) Close() error {
	err := pb.src.Close()
	<-pb.done
	return err
}

// stop ends a first read still waiting for the client when the handler
// returns (the request was answered without its body), and waits for it.
func (pb *probedBody) stop() {
	select {
	case <-pb.done:
	default:
		pb.Close()
	}
}

// extendedConnect reports whether r is an extended CONNECT (RFC 8441,
// RFC 9220: WebSocket and other protocols over one HTTP/2 or HTTP/3
// stream). godwit tunnels upgrades only from HTTP/1.1, and quic-go's
// server offers extended CONNECT to every client (its SETTINGS always
// carry ENABLE_CONNECT_PROTOCOL), so such a request is answered with
// CodeUpgradeRejected. quic-go puts the :protocol in r.Proto; net/http's
// HTTP/2, when enabled, in the :protocol header.
func extendedConnect(r *http.Request) bool {
	if r.Method != http.MethodConnect {
		return false
	}
	return (r.ProtoMajor == 3 && r.Proto != "HTTP/3.0") || r.Header.Get(":protocol") != ""
}
