package backhaul

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"
)

// h2Protocols is HTTP/2 over TLS and nothing else: a peer that cannot
// negotiate h2 fails the handshake instead of falling back to HTTP/1.1.
func h2Protocols() *http.Protocols {
	var p http.Protocols
	p.SetHTTP2(true)
	return &p
}

// h2Config turns on pings both ways so that a dead peer is noticed within
// the idle timeout, as QUIC's keep-alives do.
func h2Config(o *Options, server bool) *http.HTTP2Config {
	c := &http.HTTP2Config{
		SendPingTimeout: o.keepAlive(),
		PingTimeout:     o.keepAlive(),
	}
	if server {
		c.MaxConcurrentStreams = maxStreams
	}
	return c
}

func (s *Server) listenH2(addr string, tlsConf *tls.Config, h http.Handler) error {
	tcp, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	s.tcp, s.addr = lingerListener{tcp}, tcp.Addr().String()
	s.hs = &http.Server{
		Handler:           h,
		TLSConfig:         lingerOnRefusal(tlsConf),
		Protocols:         h2Protocols(),
		HTTP2:             h2Config(&s.opts, true),
		ReadHeaderTimeout: s.opts.HandshakeTimeout, // bounds the TLS handshake; HTTP/2 ignores it
		ErrorLog:          errorLog(s.opts.Log),
		ConnState:         s.connState,
	}
	return nil
}

// A refused client learns why from the TLS alert, which in TLS 1.3 it
// reads only after it has sent its first request. If the server then simply
// closed the connection, the unread request in its receive buffer would make
// the kernel answer with a reset, and the client would see "broken pipe" or
// "connection reset" instead of the alert (and could not tell that its
// request was never served). So a refused connection is closed gracefully:
// write side first, then the client's bytes are drained until it closes too,
// or for at most refusedLinger.
const refusedLinger = time.Second

// lingerListener hands out lingerConns.
type lingerListener struct{ net.Listener }

func (l lingerListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &lingerConn{Conn: c}, nil
}

// lingerConn is a connection that closes gracefully if its handshake
// refused the client.
type lingerConn struct {
	net.Conn
	refused atomic.Bool
}

func (c *lingerConn) Close() error {
	if tc, ok := c.Conn.(*net.TCPConn); ok && c.refused.Load() {
		tc.CloseWrite()
		tc.SetReadDeadline(time.Now().Add(refusedLinger))
		io.Copy(io.Discard, tc)
	}
	return c.Conn.Close()
}

// lingerOnRefusal makes each handshake mark its connection when it refuses
// the client, so that the connection lingers on close.
func lingerOnRefusal(base *tls.Config) *tls.Config {
	conf := base.Clone()
	conf.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		lc, ok := hello.Conn.(*lingerConn)
		if !ok {
			return nil, nil
		}
		c := base.Clone()
		verify := base.VerifyConnection
		c.VerifyConnection = func(cs tls.ConnectionState) error {
			err := verify(cs)
			if err != nil {
				lc.refused.Store(true)
			}
			return err
		}
		return c, nil
	}
	return conf
}

// connState counts HTTP/2 connections, so that Serve can wait for every
// connection's goroutine to end. Each connection reports StateNew once
// (before Serve returns) and StateClosed once.
func (s *Server) connState(_ net.Conn, st http.ConnState) {
	switch st {
	case http.StateNew:
		s.accepted.Add(1)
		s.conns.enter()
	case http.StateClosed, http.StateHijacked:
		s.conns.exit()
	}
}

// h2Conn is an HTTP/2 connection to a peer.
type h2Conn struct {
	cc *http.ClientConn
	tc *tls.Conn // under cc, for cause
}

func (h *h2Conn) roundTrip(req *http.Request) (*http.Response, error) { return h.cc.RoundTrip(req) }
func (h *h2Conn) alive() bool                                         { return h.cc.Err() == nil }
func (h *h2Conn) close()                                              { h.cc.Close() }
func (h *h2Conn) retire()                                             {}

// lost needs only the connection's state: net/http marks the connection
// closed before it fails the streams on it.
func (h *h2Conn) lost(error) bool { return !h.alive() }

// rejected recognises, by their text, net/http's two ways of saying the
// server did not process a stream: the stream was above the last one a
// GOAWAY acknowledged, or the server refused it. The errors are not
// exported (net/http's own Transport retries these requests itself).
func (h *h2Conn) rejected(err error) bool {
	msg := err.Error()
	return msg == "http2: Transport received Server's graceful shutdown GOAWAY" ||
		strings.HasPrefix(msg, "stream error: ") && strings.Contains(msg, "; REFUSED_STREAM")
}

// cause returns the error the connection died of. net/http reports only
// that the connection closed ("client conn could not be established"), but
// a TLS connection keeps the error that ended it and returns it from every
// later read, which is how a peer's refusal of this node's certificate (an
// alert on the first read, in TLS 1.3) becomes a clear error. It is called
// only on a connection that is no longer alive, so nothing else reads.
func (h *h2Conn) cause() error {
	if h.cc.Err() == nil {
		return nil
	}
	var b [1]byte
	_, err := h.tc.Read(b[:])
	return err
}

// dialH2 connects to a peer over TLS and HTTP/2. Each connection has a
// transport of its own, because the pinned fingerprint is part of its TLS
// configuration; the transport pools nothing.
func (c *Client) dialH2(ctx context.Context, key peerKey) (conn, error) {
	var tc *tls.Conn
	dialer := &net.Dialer{KeepAlive: c.opts.keepAlive()}
	tlsConf := clientTLS(c.id, &c.opts, key.fp)
	t := &http.Transport{
		// Dialling TLS here rather than in net/http keeps the handshake's
		// own error (a fingerprint mismatch, say) and the *tls.Conn.
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			nc, err := dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			conn := tls.Client(nc, tlsConf)
			if err := conn.HandshakeContext(ctx); err != nil {
				nc.Close()
				return nil, err
			}
			tc = conn
			return conn, nil
		},
		DisableCompression: true,
		Protocols:          h2Protocols(),
		HTTP2:              h2Config(&c.opts, false),
	}
	cc, err := t.NewClientConn(ctx, "https", key.addr)
	if err != nil {
		return nil, err
	}
	return &h2Conn{cc: cc, tc: tc}, nil
}
