package backhaul

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// quicConfig is the QUIC configuration of both ends. 0-RTT stays off:
// a replayed request could reach a machine twice, and connections between
// edges are long-lived, so the saved round trip is rare.
func quicConfig(o *Options, server bool) *quic.Config {
	qc := &quic.Config{
		HandshakeIdleTimeout: o.HandshakeTimeout,
		MaxIdleTimeout:       o.IdleTimeout,
		KeepAlivePeriod:      o.keepAlive(),
		MaxIncomingStreams:   maxStreams,
	}
	if !server {
		qc.MaxIncomingStreams = -1 // a server never opens request streams
	}
	return qc
}

// quicConn is an HTTP/3 connection to a peer.
type quicConn struct {
	qc *quic.Conn
	cc *http3.RawClientConn
}

func (q *quicConn) roundTrip(req *http.Request) (*http.Response, error) { return q.cc.RoundTrip(req) }
func (q *quicConn) alive() bool                                         { return q.qc.Context().Err() == nil }
func (q *quicConn) cause() error                                        { return context.Cause(q.qc.Context()) }

// lost checks the error as well as the connection: quic-go fails the
// streams of a closing connection before it marks the connection closed.
func (q *quicConn) lost(err error) bool {
	if !q.alive() {
		return true
	}
	_, app := errors.AsType[*quic.ApplicationError](err)
	_, transport := errors.AsType[*quic.TransportError](err)
	_, idle := errors.AsType[*quic.IdleTimeoutError](err)
	_, reset := errors.AsType[*quic.StatelessResetError](err)
	return app || transport || idle || reset
}

func (q *quicConn) rejected(err error) bool {
	e, ok := errors.AsType[*http3.Error](err)
	return ok && e.Remote && e.ErrorCode == http3.ErrCodeRequestRejected
}

func (q *quicConn) retire() {}

func (q *quicConn) close() {
	q.qc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
}

// dialQUIC connects to a peer over QUIC and returns once the peer has
// accepted this node: its HTTP/3 SETTINGS arrive only after its side of
// the handshake, where it checks this node's certificate, succeeded. (The
// client's side completes half a round trip earlier, so without the wait a
// refusal would surface only on the first request, looking like a
// connection lost mid-request.)
func (c *Client) dialQUIC(ctx context.Context, key peerKey) (conn, error) {
	qt, err := c.quicTransport()
	if err != nil {
		return nil, err
	}
	addr, err := resolveUDP(ctx, key.addr)
	if err != nil {
		return nil, err
	}
	qc, err := qt.Dial(ctx, addr, clientTLS(c.id, &c.opts, key.fp), quicConfig(&c.opts, false))
	if err != nil {
		return nil, err
	}
	cc := c.h3.NewRawClientConn(qc)
	c.wg.Go(func() { acceptStreams(qc, cc, &c.wg) })
	select {
	case <-cc.ReceivedSettings():
		return &quicConn{qc: qc, cc: cc}, nil
	case <-qc.Context().Done():
		return nil, context.Cause(qc.Context())
	case <-ctx.Done():
		qc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
		return nil, ctx.Err()
	}
}

// acceptStreams runs the peer's unidirectional streams (control and QPACK)
// until the connection ends. Their goroutines join wg, so Client.Close
// waits for them.
func acceptStreams(qc *quic.Conn, cc *http3.RawClientConn, wg interface{ Go(func()) }) {
	for {
		str, err := qc.AcceptUniStream(context.Background())
		if err != nil {
			return
		}
		wg.Go(func() { cc.HandleUnidirectionalStream(str) })
	}
}

// quicTransport returns the client's UDP socket and QUIC transport, made on
// first use.
func (c *Client) quicTransport() (*quic.Transport, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	if c.qt != nil {
		return c.qt, nil
	}
	udp, err := net.ListenUDP("udp", nil)
	if err != nil {
		return nil, fmt.Errorf("open UDP socket: %w", err)
	}
	c.udp, c.qt = udp, &quic.Transport{Conn: udp}
	return c.qt, nil
}

func (c *Client) closeQUICTransport() error {
	c.mu.Lock()
	qt, udp := c.qt, c.udp
	c.qt, c.udp = nil, nil
	c.mu.Unlock()
	if qt == nil {
		return nil
	}
	qt.Close()
	return udp.Close()
}

// resolveUDP turns host:port into a UDP address; peers are usually given
// as IP:port, which needs no lookup.
func resolveUDP(ctx context.Context, addr string) (*net.UDPAddr, error) {
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		return net.UDPAddrFromAddrPort(ap), nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	pn, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("invalid port in %q", addr)
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, err
	}
	ip := ips[0]
	for _, a := range ips { // IPv4 first, as net.ResolveUDPAddr does
		if a.Unmap().Is4() {
			ip = a
			break
		}
	}
	return net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip.Unmap(), uint16(pn))), nil
}
