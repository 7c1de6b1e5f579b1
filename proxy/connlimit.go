package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/godwit/godwit/config"
)

// Client connection limits.
//
// A connLimiter caps the client connections of the node
// (proxy.max_connections, over the http, https and http3 listeners
// together) and the connections serving each app
// (proxy.max_connections_per_app). Both are reported: the connections in
// use and the limits are gauges, each refusal is counted, and the first
// refusal of a burst is logged with the key that raises the limit. Fly
// caps an app at 2048 connections per edge, a number its users learnt
// from a staff post after connections were dropped from a full backlog;
// godwit's caps are configuration, and every refusal says which.
//
// A TCP connection takes its node slot when its listener accepts it,
// before any TLS handshake: pending handshakes hold sockets too. One over
// the limit is not left in the backlog: it is accepted and answered
// "503 PL05" with Connection: close (after the TLS handshake on https),
// then closed; see limitListener. The slot comes back when the connection
// is closed, by whoever closes it: net/http, the TLS listener after a
// failed handshake, or a tunnel that hijacked it.
//
// A connection takes a slot of an app at its first request for one of the
// app's hosts and keeps it until it closes; an HTTP/2 connection that
// carries requests for several apps holds one slot of each. A request
// that would take a slot the app does not have is answered "503 PL06"
// and its connection closed after the answer; requests of connections
// that hold a slot are never refused.
//
// Other listeners use the same API: acquire a connSlot per connection,
// refuse the connection when it returns nil, put the slot in the
// connection's context with withConnSlot so requests take app slots
// through it, and release it when the connection ends. HTTP/3 does so in
// limitQUICListener (http3.go): a QUIC connection is counted once its
// handshake completed, one over the node's limit is closed with
// H3_EXCESSIVE_LOAD, and a request refused for its app is answered
// "503 PL06" on a connection that serves on (quic-go has no GOAWAY for
// one connection).
type connLimiter struct {
	nodeLimit atomic.Int64 // > 0
	appLimit  atomic.Int64 // 0: none
	nodeFrom  string       // where the node's limit comes from, for logs

	total     atomic.Int64             // client connections of the node
	listeners map[string]*atomic.Int64 // connections per listener; fixed when built
	apps      sync.Map                 // app name → *appConns
	refusing  atomic.Int64             // node refusals being answered
	refusals  *prometheus.CounterVec   // scope, app
	nodeRefs  prometheus.Counter       // refusals{scope="node"}
	log       *slog.Logger             // for refusals, once per burst
	now       func() time.Time         // the clock of the burst log
	burstMu   sync.Mutex               // guards bursts
	bursts    map[string]*refusalBurst // "" (node) or an app name

	// writeTimeout bounds each write to a client connection
	// (proxy.body_write_timeout; 0: none); see countedConn.Write.
	writeTimeout time.Duration
}

// Scopes of connection limits, as the godwit_connection_rejections_total
// and godwit_connection_limit metrics name them.
const (
	scopeNode = "node"
	scopeApp  = "app"
)

// Config keys of the limits, named in the refusal log lines.
const (
	keyMaxConnections       = "proxy.max_connections"
	keyMaxConnectionsPerApp = "proxy.max_connections_per_app"
)

// appConns counts the client connections holding a slot of one app.
type appConns struct {
	name string
	n    atomic.Int64
}

// newConnLimiter builds a limiter for the client listeners named (of
// "http", "https", "http3"). nodeLimit must be positive (see
// nodeConnLimit), appLimit 0 or positive; nodeFrom says where nodeLimit
// comes from ("proxy.max_connections", "RLIMIT_NOFILE"). refusals is
// godwit_connection_rejections_total.
func newConnLimiter(nodeLimit, appLimit int64, nodeFrom string, listeners []string, refusals *prometheus.CounterVec, log *slog.Logger) *connLimiter {
	l := &connLimiter{
		nodeFrom:  nodeFrom,
		listeners: make(map[string]*atomic.Int64, len(listeners)),
		refusals:  refusals,
		nodeRefs:  refusals.WithLabelValues(scopeNode, ""),
		log:       log,
		now:       time.Now,
		bursts:    make(map[string]*refusalBurst),
	}
	l.setLimits(nodeLimit, appLimit)
	for _, name := range listeners {
		l.listeners[name] = new(atomic.Int64)
	}
	return l
}

// setLimits changes the limits. Connections over a lowered limit stay;
// new ones are refused until enough have closed.
func (l *connLimiter) setLimits(node, perApp int64) {
	l.nodeLimit.Store(max(node, 1))
	l.appLimit.Store(max(perApp, 0))
}

// The node's limit when proxy.max_connections is 0: derived from the
// process's open-file limit (RLIMIT_NOFILE, which Go raises to its hard
// limit at start). Each client connection with a request in flight holds
// a connection to a machine too, so a client connection counts as two
// files; fdReserve files (at most a quarter of the limit) stay for
// everything else: idle pooled machine connections, gossip, the backhaul,
// the admin listener, config and certificate files. A cap reached is a
// clear 503; files run out is accept failing with EMFILE and connections
// piling up in the backlog, which is what the cap is there to prevent.
const (
	fdReserve             = 1024
	maxDerivedConnLimit   = 1 << 20
	fallbackNodeConnLimit = 10000 // the open-file limit is unknown (not Unix)
)

// nodeConnLimit returns the node's client connection limit: configured
// when it is set (> 0), else the one derived from nofile, the open-file
// limit (0: unknown), else fallbackNodeConnLimit. safe is the limit nofile
// allows (0: unknown), to warn about a configured one above it.
func nodeConnLimit(configured int, nofile uint64) (limit, safe int64) {
	if nofile > 0 {
		reserve := min(nofile/4, fdReserve)
		safe = max(int64(min((nofile-reserve)/2, maxDerivedConnLimit)), 1)
	}
	switch {
	case configured > 0:
		return int64(configured), safe
	case safe > 0:
		return safe, safe
	}
	return fallbackNodeConnLimit, 0
}

// acquire takes a node slot for a new client connection on the named
// listener. It returns nil when the node is at its limit; the refusal is
// then counted and logged already, and the caller refuses the connection.
// The slot must be released when the connection ends.
func (l *connLimiter) acquire(listener string) *connSlot {
	ln := l.listeners[listener]
	if ln == nil {
		panic("proxy: connection limiter: unknown listener " + listener)
	}
	limit := l.nodeLimit.Load()
	for {
		n := l.total.Load()
		if n >= limit {
			l.refused(scopeNode, "", limit)
			return nil
		}
		if l.total.CompareAndSwap(n, n+1) {
			break
		}
	}
	ln.Add(1)
	return &connSlot{lim: l, listener: ln}
}

// appConnsOf returns the count of app, creating it.
func (l *connLimiter) appConnsOf(app string) *appConns {
	if a, ok := l.apps.Load(app); ok {
		return a.(*appConns)
	}
	a, _ := l.apps.LoadOrStore(app, &appConns{name: app})
	return a.(*appConns)
}

// takeApp counts one more connection for app unless it is at its limit.
func (l *connLimiter) takeApp(app string) (*appConns, int64, bool) {
	a := l.appConnsOf(app)
	limit := l.appLimit.Load()
	for {
		n := a.n.Load()
		if limit > 0 && n >= limit {
			return nil, limit, false
		}
		if a.n.CompareAndSwap(n, n+1) {
			return a, limit, true
		}
	}
}

// connSlot is one client connection's hold on the limits: its node slot
// and the app slots it took. It is safe for concurrent use (the requests
// of an HTTP/2 connection run at once).
type connSlot struct {
	lim      *connLimiter
	listener *atomic.Int64
	idle     *h3Idle // an HTTP/3 connection's idle watch; nil otherwise

	mu       sync.Mutex
	apps     []*appConns // the apps the connection holds a slot of
	released bool
}

// admitApp reports whether the connection may carry a request for app:
// it holds a slot of app already or could take one. A refusal is counted
// and logged.
func (s *connSlot) admitApp(app string) bool {
	s.mu.Lock()
	for _, a := range s.apps {
		if a.name == app {
			s.mu.Unlock()
			return true
		}
	}
	if s.released { // closing: nothing to hold
		s.mu.Unlock()
		return true
	}
	a, limit, ok := s.lim.takeApp(app)
	if ok {
		s.apps = append(s.apps, a)
	}
	s.mu.Unlock()
	if !ok {
		s.lim.refused(scopeApp, app, limit)
	}
	return ok
}

// release gives back the node slot and the app slots of the connection.
// Only the first call does anything.
func (s *connSlot) release() {
	s.mu.Lock()
	if s.released {
		s.mu.Unlock()
		return
	}
	s.released = true
	apps := s.apps
	s.apps = nil
	s.mu.Unlock()
	for _, a := range apps {
		a.n.Add(-1)
	}
	s.listener.Add(-1)
	s.lim.total.Add(-1)
}

type connSlotKey struct{}

// withConnSlot puts a connection's slot into the context of its requests.
func withConnSlot(ctx context.Context, s *connSlot) context.Context {
	return context.WithValue(ctx, connSlotKey{}, s)
}

// connSlotFrom returns the slot of the connection a request came on, or
// nil when it is not counted (a backhaul request, a test's handler).
func connSlotFrom(ctx context.Context) *connSlot {
	s, _ := ctx.Value(connSlotKey{}).(*connSlot)
	return s
}

// withClientConn is the client listeners' http.Server ConnContext: it
// puts the connection's smuggleConn (withSmuggleConn) and connSlot into
// the context of its requests.
func withClientConn(ctx context.Context, c net.Conn) context.Context {
	ctx = withSmuggleConn(ctx, c)
	if s := connSlotOf(c); s != nil {
		ctx = withConnSlot(ctx, s)
	}
	return ctx
}

// connSlotOf finds the slot of a connection under its smuggleConn and TLS
// wrappers, or nil.
func connSlotOf(c net.Conn) *connSlot {
	for {
		switch v := c.(type) {
		case *countedConn:
			return v.slot
		case *tls.Conn:
			c = v.NetConn()
		case interface{ guard() *smuggleConn }:
			c = v.guard().Conn
		default:
			return nil
		}
	}
}

// countedConn is a client connection that holds a node slot until it is
// closed. Each write must complete within writeTimeout (0: none), see
// Write (slowclient.go).
type countedConn struct {
	net.Conn
	slot         *connSlot
	writeTimeout time.Duration
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.slot.release()
	return err
}

// CloseWrite half-closes the connection, as net/http and tunnels do.
func (c *countedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// Refusal bursts: a refusal is logged when it starts a burst (none in the
// burstGap before it), and a burst that goes on is logged again every
// burstLogEvery, with the refusals since the last line. The metric counts
// every one.
const (
	burstGap      = 10 * time.Second
	burstLogEvery = time.Minute
)

type refusalBurst struct {
	last    time.Time // the last refusal
	logged  time.Time // the last log line
	refused int64     // refusals since the last log line
}

// refused counts a refusal of scope (for app) at limit, and logs it if it
// starts a burst.
func (l *connLimiter) refused(scope, app string, limit int64) {
	if scope == scopeNode {
		l.nodeRefs.Inc()
	} else {
		l.refusals.WithLabelValues(scope, app).Inc()
	}
	now := l.now()
	l.burstMu.Lock()
	b := l.bursts[app]
	if b == nil {
		b = new(refusalBurst)
		l.bursts[app] = b
	}
	b.refused++
	start := b.last.IsZero() || now.Sub(b.last) >= burstGap
	b.last = now
	n := b.refused
	logIt := start || now.Sub(b.logged) >= burstLogEvery
	if logIt {
		b.refused, b.logged = 0, now
	}
	l.burstMu.Unlock()
	if !logIt {
		return
	}
	if scope == scopeNode {
		l.log.Warn("client connection limit of the node reached: new connections are answered 503 "+string(CodeNodeConnLimit)+" and closed",
			"limit", limit, "key", keyMaxConnections, "limit_from", l.nodeFrom, "connections", l.total.Load(), "refused", n)
		return
	}
	l.log.Warn("client connection limit of an app reached: its requests on new connections are answered 503 "+string(CodeAppConnLimit),
		"app", app, "limit", limit, "key", keyMaxConnectionsPerApp, "refused", n)
}

// Refusing a connection over the node's limit: the TLS handshake (on
// https), the request head, the answer and a lingering close together get
// refuseTimeout. At most maxRefusing refusals are answered at once; one
// more connection is closed at once, unanswered (and still counted), so a
// flood over the limit costs a bounded number of sockets and goroutines.
const (
	refuseTimeout = 5 * time.Second
	maxRefusing   = 64
	refuseDrain   = 64 << 10 // bytes read after the answer before closing
)

// refusedResponse is the answer to a connection over the node's limit.
var refusedResponse = func() string {
	body := "godwit " + string(CodeNodeConnLimit) + ": too many connections to this edge; try again later\n"
	return "HTTP/1.1 503 Service Unavailable\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\n" +
		"X-Content-Type-Options: nosniff\r\n" +
		HeaderError + ": " + string(CodeNodeConnLimit) + "\r\n" +
		"Retry-After: 1\r\n" +
		"Connection: close\r\n" +
		"Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
}()

// limitListener counts the connections its listener accepts against the
// node's limit (a countedConn holds each slot) and refuses those over it
// itself: Accept never returns them.
//
// A refused connection is answered with refusedResponse: after reading
// the request head, so that a client that has not sent its request yet
// does not take the answer for an unsolicited one. On a TLS listener
// (tls set) the refusal completes the handshake first, offering only
// HTTP/1.1 by ALPN, so that clients see the 503 and its code rather than
// a reset they would retry at once; a client that insists on HTTP/2 is
// closed after its handshake instead.
type limitListener struct {
	net.Listener
	lim  *connLimiter
	name string
	tls  *tls.Config // nil: plain HTTP

	ctx       context.Context // ends on Close: refusals stop
	cancel    context.CancelFunc
	mu        sync.Mutex
	closed    bool
	wg        sync.WaitGroup // refusals
	closeOnce sync.Once
	closeErr  error
}

// listen wraps ln, the client listener name. conf is the listener's TLS
// config, nil for plain HTTP.
func (l *connLimiter) listen(ln net.Listener, name string, conf *tls.Config) *limitListener {
	if l.listeners[name] == nil {
		panic("proxy: connection limiter: unknown listener " + name)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ll := &limitListener{Listener: ln, lim: l, name: name, ctx: ctx, cancel: cancel}
	if conf != nil {
		ll.tls = conf.Clone()
		ll.tls.NextProtos = []string{"http/1.1"}
	}
	return ll
}

// Accept returns the next connection within the node's limit.
func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if slot := l.lim.acquire(l.name); slot != nil {
			return &countedConn{Conn: c, slot: slot, writeTimeout: l.lim.writeTimeout}, nil
		}
		l.refuse(c)
	}
}

// Close stops accepting, ends the refusals under way and waits for them.
func (l *limitListener) Close() error {
	l.closeOnce.Do(func() {
		l.mu.Lock()
		l.closed = true
		l.mu.Unlock()
		l.cancel()
		l.closeErr = l.Listener.Close()
		l.wg.Wait()
	})
	return l.closeErr
}

// refuse answers c in a goroutine of its own, or closes it at once when
// maxRefusing refusals are under way or the listener is closed.
func (l *limitListener) refuse(c net.Conn) {
	if l.lim.refusing.Add(1) > maxRefusing {
		l.lim.refusing.Add(-1)
		c.Close()
		return
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		l.lim.refusing.Add(-1)
		c.Close()
		return
	}
	l.wg.Add(1)
	l.mu.Unlock()
	go func() {
		defer l.wg.Done()
		defer l.lim.refusing.Add(-1)
		refuseConn(l.ctx, c, l.tls)
	}()
}

// refuseConn answers c with refusedResponse and closes it, within
// refuseTimeout or until ctx ends. conf, if not nil, is the TLS config
// of the handshake that comes first.
func refuseConn(ctx context.Context, c net.Conn, conf *tls.Config) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(refuseTimeout))
	// Set once, after the deadline above: nothing moves it back.
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(aLongTimeAgo) })
	defer stop()
	rw := c
	if conf != nil {
		tc := tls.Server(c, conf)
		if err := tc.Handshake(); err != nil || tc.ConnectionState().NegotiatedProtocol == "h2" {
			return
		}
		rw = tc
	}
	skipRequestHead(rw)
	if _, err := io.WriteString(rw, refusedResponse); err != nil {
		return
	}
	// Close only once the client has read the answer: closing a socket
	// with unread bytes sends a reset, which may destroy it in flight.
	if cw, ok := rw.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	io.Copy(io.Discard, io.LimitReader(rw, refuseDrain))
}

// skipRequestHead reads r up to the blank line that ends an HTTP/1 request
// head, or until a read fails or a line is longer than 4 KiB (100 lines
// at most).
func skipRequestHead(r io.Reader) {
	br := bufio.NewReaderSize(r, 4096)
	seen := false // a non-empty line: empty lines before the request line do not end it
	for range 100 {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return
		}
		if len(line) <= 2 && (len(line) == 1 || line[0] == '\r') {
			if seen {
				return
			}
			continue
		}
		seen = true
	}
}

// newNodeConnLimiter builds the node's limiter from the [proxy] limits of
// cfg, for its client listeners, registers its gauges on reg and logs the
// limits in force.
func newNodeConnLimiter(cfg *config.Config, m *metrics, reg prometheus.Registerer, log *slog.Logger) *connLimiter {
	nofile := openFileLimit()
	configured := cfg.Proxy.MaxConnections
	limit, safe := nodeConnLimit(configured, nofile)
	from := keyMaxConnections
	switch {
	case configured > 0:
	case safe > 0:
		from = "RLIMIT_NOFILE"
	default:
		from = "default"
	}
	var listeners []string
	for _, ln := range []struct{ name, addr string }{
		{"http", cfg.Listen.HTTP}, {"https", cfg.Listen.HTTPS}, {"http3", cfg.Listen.HTTP3},
	} {
		if ln.addr != "" {
			listeners = append(listeners, ln.name)
		}
	}
	l := newConnLimiter(limit, int64(cfg.Proxy.MaxConnectionsPerApp), from, listeners, m.connRefusals, log.With("component", "connlimit"))
	l.writeTimeout = cfg.Proxy.BodyWriteTimeout
	reg.MustRegister(&connCollector{lim: l})
	log.Info("client connection limits", "max_connections", limit, "limit_from", from,
		"max_connections_per_app", cfg.Proxy.MaxConnectionsPerApp, "open_files", nofile)
	if configured > 0 && safe > 0 && int64(configured) > safe {
		log.Warn("proxy.max_connections is more than the open-file limit allows: the node may run out of files (accept failing with \"too many open files\") before the cap applies; raise RLIMIT_NOFILE or lower the cap",
			"max_connections", configured, "open_files", nofile, "connections_it_allows", safe)
	}
	return l
}
