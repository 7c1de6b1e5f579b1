package backhaul

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"golang.org/x/net/http/httpguts"
)

// Client sends requests to peers: one multiplexed connection per peer
// (address and expected fingerprint), dialled on first use, shared by all
// requests to that peer, and redialled after it fails. It is safe for
// concurrent use.
type Client struct {
	id   *Identity
	opts Options
	err  error // invalid Options: every RoundTrip fails with it

	ctx    context.Context // ends dials in progress when the client closes
	cancel context.CancelFunc

	// peers maps each peer to the connection its requests use. Requests
	// read it without a lock; a dial (rare) copies it under mu and swaps.
	peers atomic.Pointer[map[peerKey]*peer]

	mu      sync.Mutex
	closed  bool
	retired []*peer         // replaced connections that may still carry requests
	udp     *net.UDPConn    // quic: the one socket all connections share
	qt      *quic.Transport // quic: made on the first dial

	h3 http3.Transport // builds HTTP/3 client connections; never dials
	wg sync.WaitGroup  // dials and the stream loops of QUIC connections
}

// peerKey names a peer. The fingerprint is part of it so that a new node
// at an old address never gets a connection verified for the old one.
type peerKey struct{ addr, fp string }

// peer is one connection to a peer, or the dial of one.
type peer struct {
	key    peerKey
	ready  chan struct{} // closed when the dial ended; then conn or err is set
	conn   conn
	err    error       // the dial failed: ErrPeerUnreachable
	broken atomic.Bool // a request found it unusable: redial
}

// conn is an established connection to a peer, HTTP/3 or HTTP/2.
type conn interface {
	roundTrip(*http.Request) (*http.Response, error)
	alive() bool
	// lost reports whether err, from a request, means that the
	// connection itself failed.
	lost(err error) bool
	// rejected reports whether err is the peer's statement that it did
	// not process the request (HTTP/3's H3_REQUEST_REJECTED).
	rejected(err error) bool
	// cause is the error a connection that is no longer alive ended with.
	cause() error
	// retire is called when the connection is replaced by a new one: it
	// closes once its requests in flight have ended (mux), or is left to
	// its library's idle handling (h2, QUIC).
	retire()
	close()
}

// NewClient returns a client that authenticates as id. Invalid options
// (an unknown protocol) make every RoundTrip fail with the reason.
func NewClient(id *Identity, opts Options) *Client {
	opts, err := opts.withDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	c := &Client{
		id:     id,
		opts:   opts,
		err:    err,
		ctx:    ctx,
		cancel: cancel,
		h3:     http3.Transport{DisableCompression: true, Logger: opts.Log},
	}
	c.peers.Store(&map[peerKey]*peer{})
	return c
}

// RoundTrip sends req to the peer at peerAddr, whose certificate must have
// fingerprint peerFP (or chain to Options.CAPool), and returns its
// response. Like an http.RoundTripper it does not modify req and always
// closes its body.
//
// Both bodies stream: the request body is read while the response is
// already arriving, and the response body is read from the network as the
// caller reads it. The caller must close the response body. Canceling
// req.Context() resets the stream: the peer's handler sees its request
// context end.
//
// The request goes out as it is, with its Host as the authority; the
// URL's scheme becomes https and an empty URL host becomes peerAddr.
// Compression is not negotiated: bodies pass through unchanged.
//
// Errors: ErrPeerUnreachable if the request did not reach the peer (try
// another), ErrConnectionLost if the connection failed after it was sent,
// the context's error if req was canceled; anything else is a failure of
// this one request.
func (c *Client) RoundTrip(req *http.Request, peerAddr, peerFP string) (*http.Response, error) {
	resp, err := c.roundTrip(req, peerKey{addr: peerAddr, fp: peerFP})
	if err != nil && req.Body != nil {
		req.Body.Close()
	}
	return resp, err
}

func (c *Client) roundTrip(req *http.Request, key peerKey) (*http.Response, error) {
	if c.err != nil {
		return nil, c.err
	}
	if err := validRequest(req); err != nil {
		return nil, fmt.Errorf("backhaul: peer %s: %w", key.addr, err)
	}
	if key.fp == "" && c.opts.CAPool == nil {
		return nil, fmt.Errorf("backhaul: peer %s: no fingerprint to pin", key.addr)
	}
	ctx := req.Context()
	if err := c.delay(ctx, key.addr); err != nil {
		return nil, fmt.Errorf("backhaul: peer %s: %w", key.addr, err)
	}
	orig := req
	req = outbound(req, key.addr)
	for retried := false; ; retried = true {
		p, dialled, err := c.connected(ctx, key)
		if err != nil {
			return nil, err
		}
		resp, sent, err := send(p.conn, req)
		if err == nil {
			resp.Request = orig
			return resp, nil
		}
		retry, err := c.classify(ctx, p, err, sent)
		// A connection this call did not dial may simply have gone
		// stale: one more try, on a new one.
		if !retry || dialled || retried {
			if req.Body != orig.Body { // rewound: RoundTrip closes only the original
				req.Body.Close()
			}
			return nil, err
		}
		if req, err = rewind(req); err != nil {
			return nil, unreachable(key.addr, err)
		}
	}
}

// connected returns the connection to key, waiting for its dial.
func (c *Client) connected(ctx context.Context, key peerKey) (p *peer, dialled bool, err error) {
	p, dialled, err = c.peer(key)
	if err != nil {
		return nil, false, err
	}
	select {
	case <-p.ready:
	case <-ctx.Done():
		return nil, false, fmt.Errorf("backhaul: peer %s: %w", key.addr, ctx.Err())
	}
	if p.err != nil {
		return nil, false, p.err
	}
	return p, dialled, nil
}

// classify turns the failure of a request on p into RoundTrip's error.
// retry reports that the request was not delivered because the connection
// could not take it, so that another connection may be tried.
func (c *Client) classify(ctx context.Context, p *peer, err error, sent bool) (retry bool, _ error) {
	addr := p.key.addr
	switch {
	case ctx.Err() != nil:
		return false, fmt.Errorf("backhaul: peer %s: %w", addr, ctx.Err())
	case c.ctx.Err() != nil: // Close cut the connection, not the peer
		return false, fmt.Errorf("backhaul: peer %s: %w: %w", addr, ErrClosed, err)
	}
	lost := p.conn.lost(err)
	if lost {
		if cause := p.conn.cause(); refusedByPeer(cause) {
			err = cause
		}
	}
	switch {
	case refusedByPeer(err):
		// A peer accepts no request before it has accepted this
		// node's certificate, so nothing was delivered.
		p.broken.Store(true)
		return false, unreachable(addr, refusal(err))
	case sent && p.conn.rejected(err):
		// The peer said it did not process the request: it is going
		// away. As good as unsent.
		p.broken.Store(true)
		return true, unreachable(addr, err)
	case sent && lost:
		return false, connectionLost(addr, err)
	case sent:
		return false, fmt.Errorf("backhaul: peer %s: %w", addr, err)
	default:
		// Not sent: the connection is closed or going away (GOAWAY).
		p.broken.Store(true)
		return true, unreachable(addr, err)
	}
}

// send sends req on cn and reports whether any of it may have reached the
// peer: until the request's headers are written, a failure means the peer
// never saw it. That needs a trace hook per request (a few allocations);
// it is what lets a caller retry elsewhere without risking a duplicate.
func send(cn conn, req *http.Request) (resp *http.Response, sent bool, err error) {
	st := new(sendTrace)
	st.trace.WroteHeaders = func() { st.wrote.Store(true) }
	resp, err = cn.roundTrip(req.WithContext(httptrace.WithClientTrace(req.Context(), &st.trace)))
	return resp, st.wrote.Load(), err
}

// sendTrace is the trace of one request, in one allocation with its flag.
type sendTrace struct {
	trace httptrace.ClientTrace
	wrote atomic.Bool // the headers were written
}

// rewind returns req ready to be sent again, with a fresh body if it has
// one.
func rewind(req *http.Request) (*http.Request, error) {
	if req.Body == nil || req.Body == http.NoBody {
		return req, nil
	}
	if req.GetBody == nil {
		return nil, errors.New("connection went away before the request was sent, and its body cannot be replayed (no GetBody)")
	}
	body, err := req.GetBody()
	if err != nil {
		return nil, err
	}
	r := *req
	r.Body = body
	return &r, nil
}

// peer returns the connection to key, starting a dial if there is none or
// the one there failed. dialled reports whether this call started it.
func (c *Client) peer(key peerKey) (p *peer, dialled bool, err error) {
	if p := (*c.peers.Load())[key]; p != nil && p.usable() {
		return p, false, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, false, ErrClosed
	}
	old := *c.peers.Load()
	p = old[key]
	if p != nil && p.usable() { // another request redialled meanwhile
		return p, false, nil
	}
	if p != nil && p.err == nil {
		c.retired = append(c.retired, p)
		p.conn.retire()
	}
	next := make(map[peerKey]*peer, len(old)+1)
	for k, q := range old {
		if !q.dead() { // forget peers whose connection ended
			next[k] = q
		}
	}
	c.sweepRetiredLocked()
	p = &peer{key: key, ready: make(chan struct{})}
	next[key] = p
	c.peers.Store(&next)
	c.wg.Go(func() { c.dial(p) })
	return p, true, nil
}

// usable reports whether requests should use p: it is still dialling, or
// it is connected and no request found the connection unusable.
func (p *peer) usable() bool {
	select {
	case <-p.ready:
		return p.err == nil && !p.broken.Load() && p.conn.alive()
	default:
		return true
	}
}

// dead reports whether p has nothing left to close.
func (p *peer) dead() bool {
	select {
	case <-p.ready:
		return p.err != nil || !p.conn.alive()
	default:
		return false
	}
}

// sweepRetiredLocked forgets retired connections that have ended. Like
// the sweep of peers, it runs when a dial starts, which is rare, so that
// peers that left the fleet do not accumulate.
func (c *Client) sweepRetiredLocked() {
	live := c.retired[:0]
	for _, p := range c.retired {
		if !p.dead() {
			live = append(live, p)
		}
	}
	clear(c.retired[len(live):])
	c.retired = live
}

// dial connects p, bounded by the handshake timeout and by Close.
func (c *Client) dial(p *peer) {
	defer close(p.ready)
	ctx, cancel := context.WithTimeout(c.ctx, c.opts.HandshakeTimeout)
	defer cancel()
	var err error
	switch c.opts.Protocol {
	case ProtocolMux:
		p.conn, err = c.dialMux(ctx, p.key)
	case ProtocolH2:
		p.conn, err = c.dialH2(ctx, p.key)
	default:
		p.conn, err = c.dialQUIC(ctx, p.key)
	}
	if err == nil {
		return
	}
	if c.ctx.Err() != nil {
		p.err = fmt.Errorf("backhaul: peer %s: %w", p.key.addr, ErrClosed)
		return
	}
	var ne net.Error
	switch {
	case refusedByPeer(err):
		err = refusal(err)
	case errors.As(err, &ne) && ne.Timeout():
		err = fmt.Errorf("no answer within the handshake timeout (%v): %w", c.opts.HandshakeTimeout, err)
	default:
		err = localRefusal(err)
	}
	p.err = unreachable(p.key.addr, err)
	c.opts.Log.Debug("backhaul: dial failed", "peer", p.key.addr, "error", err)
}

// refusal explains a peer's TLS alert.
func refusal(err error) error {
	return fmt.Errorf("it refused this node's certificate (does it pin this node?): %w", err)
}

// delay waits the simulated distance to addr, if any, and adds the time
// it waited to the request's delay record (WithDelayRecord).
func (c *Client) delay(ctx context.Context, addr string) error {
	if c.opts.Delay == nil {
		return nil
	}
	d := c.opts.Delay(addr)
	if d <= 0 {
		return nil
	}
	start := time.Now()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		if rec, ok := ctx.Value(delayRecordKey{}).(*time.Duration); ok {
			*rec += time.Since(start)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

type delayRecordKey struct{}

// WithDelayRecord returns a context in which a Client adds to *d the
// simulated distance it waited before sending the request (Options.Delay):
// what it really waited, timer lateness included (a Go timer of 80 ms
// fires 0.3 ms late at the median), so that a measure of what the proxy
// adds can take the simulation out exactly. The request's goroutine owns
// *d: read it after RoundTrip returns.
func WithDelayRecord(ctx context.Context, d *time.Duration) context.Context {
	return context.WithValue(ctx, delayRecordKey{}, d)
}

// Close closes every connection, ending the requests still on them, and
// returns once the client's goroutines have ended. RoundTrip fails with
// ErrClosed afterwards. Close is idempotent.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		c.wg.Wait()
		return nil
	}
	c.closed = true
	c.cancel()
	all := c.retired
	for _, p := range *c.peers.Swap(&map[peerKey]*peer{}) {
		all = append(all, p)
	}
	c.retired = nil
	c.mu.Unlock()

	for _, p := range all {
		<-p.ready // prompt: the dial's context has ended
		if p.conn != nil {
			p.conn.close()
		}
	}
	c.wg.Wait()
	return c.closeQUICTransport()
}

// validRequest rejects what could not be sent, before a connection is
// involved: a failure here says nothing about the peer.
func validRequest(req *http.Request) error {
	switch {
	case req.URL == nil:
		return errors.New("request has no URL")
	case req.Header == nil:
		return errors.New("request has a nil Header")
	case req.Method != "" && !validMethod(req.Method):
		return fmt.Errorf("invalid method %q", req.Method)
	case req.Host != "" && !httpguts.ValidHostHeader(req.Host):
		return fmt.Errorf("invalid Host %q", req.Host)
	}
	for k, vv := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return fmt.Errorf("invalid header name %q", k)
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return fmt.Errorf("invalid value for header %q", k)
			}
		}
	}
	return nil
}

func validMethod(m string) bool {
	for i := 0; i < len(m); i++ {
		if !httpguts.IsTokenRune(rune(m[i])) {
			return false
		}
	}
	return true
}

// outbound returns req as it goes to the peer: an https URL with a host.
// It copies only when something must change.
func outbound(req *http.Request, addr string) *http.Request {
	if req.URL.Scheme == "https" && req.URL.Host != "" {
		return req
	}
	r := *req
	u := *req.URL
	u.Scheme = "https"
	if u.Host == "" {
		u.Host = addr
	}
	r.URL = &u
	return &r
}

var _ io.Closer = (*Client)(nil)
