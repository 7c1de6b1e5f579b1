package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

// tlsListener accepts TCP connections and runs their TLS handshakes, each
// in a goroutine of its own within timeout, so that a slow client holds up
// nobody else. Accept returns handshaken *tls.Conns only; the caller
// learns the negotiated protocol from them (net/http would otherwise
// handshake in its connection goroutine).
//
// It starts its accept loop when built; Close stops the loop and every
// pending handshake, and returns after they have ended.
type tlsListener struct {
	net.Listener // TCP
	conf         *tls.Config
	timeout      time.Duration // for a handshake; 0 means none
	log          *slog.Logger

	ctx       context.Context // ends on Close
	cancel    context.CancelFunc
	conns     chan *tls.Conn // handshaken, for Accept
	errs      chan error     // from the TCP listener's Accept, for Accept
	wg        sync.WaitGroup // the accept loop and handshakes
	closeOnce sync.Once
	closeErr  error
}

func newTLSListener(ln net.Listener, conf *tls.Config, timeout time.Duration, log *slog.Logger) *tlsListener {
	ctx, cancel := context.WithCancel(context.Background())
	l := &tlsListener{
		Listener: ln, conf: conf, timeout: timeout, log: log,
		ctx: ctx, cancel: cancel,
		conns: make(chan *tls.Conn),
		errs:  make(chan error),
	}
	l.wg.Go(l.acceptLoop)
	return l
}

// Accept returns the next handshaken connection, an error of the TCP
// listener, or net.ErrClosed after Close.
func (l *tlsListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case err := <-l.errs:
		return nil, err
	case <-l.ctx.Done():
		return nil, net.ErrClosed
	}
}

// Close stops accepting, aborts pending handshakes and waits for them.
// It may be called more than once.
func (l *tlsListener) Close() error {
	l.closeOnce.Do(func() {
		l.cancel()
		l.closeErr = l.Listener.Close()
		l.wg.Wait()
	})
	return l.closeErr
}

// acceptLoop hands every TCP connection to a handshake goroutine. An
// accept error goes to Accept's caller (http.Server backs off on a
// temporary one before it accepts again, which paces this loop).
func (l *tlsListener) acceptLoop() {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			select {
			case l.errs <- err:
			case <-l.ctx.Done():
				return
			}
			continue
		}
		l.wg.Go(func() { l.handshake(c) })
	}
}

func (l *tlsListener) handshake(c net.Conn) {
	ctx, cancel := l.ctx, context.CancelFunc(func() {})
	if l.timeout > 0 {
		ctx, cancel = context.WithTimeout(ctx, l.timeout)
	}
	tc := tls.Server(c, l.conf)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		// As net/http does: a client speaking plain HTTP learns why.
		var re tls.RecordHeaderError
		if errors.As(err, &re) && re.Conn != nil && looksLikeHTTP(re.RecordHeader) {
			io.WriteString(re.Conn, "HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
		}
		c.Close()
		l.log.Debug("tls handshake failed", "client", c.RemoteAddr().String(), "err", err)
		return
	}
	select {
	case l.conns <- tc:
	case <-l.ctx.Done():
		tc.Close()
	}
}

// looksLikeHTTP reports whether the first bytes of a TLS record header are
// the start of an HTTP/1 request line instead.
func looksLikeHTTP(hdr [5]byte) bool {
	switch string(hdr[:]) {
	case "GET /", "HEAD ", "POST ", "PUT /", "OPTIO":
		return true
	}
	return false
}

// smuggleListener wraps the connections its listener accepts in a
// smuggleConn, except TLS connections that negotiated HTTP/2: net/http
// serves HTTP/2 only on a bare *tls.Conn, and HTTP/2 frames its messages
// itself.
type smuggleListener struct {
	net.Listener
	maxHeaderBytes int
}

func (l smuggleListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*tls.Conn); ok && tc.ConnectionState().NegotiatedProtocol == "h2" {
		return tc, nil
	}
	return newSmuggleConn(c, l.maxHeaderBytes), nil
}
