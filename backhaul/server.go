package backhaul

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// Server serves an http.Handler to peers: HTTP/3 over QUIC, or HTTP/2 over
// TLS, to clients whose certificate is pinned (or chains to the CA).
type Server struct {
	opts     Options
	addr     string
	handlers tracker      // handlers running, so Serve can wait for them
	accepted atomic.Int64 // connections accepted since Listen
	refusals limiter      // of the "refused a peer" log line

	// Exactly one protocol's fields are set.
	udp *net.UDPConn
	qt  *quic.Transport
	ln  *quic.Listener
	h3  *http3.Server

	tcp   net.Listener
	hs    *http.Server
	mux   *muxServer
	conns tracker // HTTP/2 and mux connections open

	mu    sync.Mutex
	state serverState
	stop  chan struct{} // closed by Close while serving
	done  chan struct{} // closed once everything is shut down
}

type serverState int

const (
	stateListening serverState = iota // bound, Serve not called
	stateServing
	stateClosed
)

// Listen binds addr (UDP for QUIC, TCP for HTTP/2) at once, so Addr is
// known before Serve, with port 0 meaning any free port. Requests from
// peers that pins admits (or whose certificate chains to opts.CAPool) go
// to h.
func Listen(addr string, id *Identity, pins Pins, h http.Handler, opts Options) (*Server, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if pins == nil && opts.CAPool == nil {
		return nil, errors.New("backhaul: listen: neither pins nor a CA pool: every peer would be refused")
	}
	s := &Server{
		opts: opts,
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	s.handlers.init()
	s.conns.init()
	tlsConf := serverTLS(id, pins, &s.opts, s.refused)
	handler := s.track(h)
	switch opts.Protocol {
	case ProtocolMux:
		err = s.listenMux(addr, tlsConf, handler)
	case ProtocolH2:
		err = s.listenH2(addr, tlsConf, handler)
	default:
		err = s.listenQUIC(addr, tlsConf, handler)
	}
	if err != nil {
		return nil, fmt.Errorf("backhaul: listen %s: %w", addr, err)
	}
	return s, nil
}

func (s *Server) listenQUIC(addr string, tlsConf *tls.Config, h http.Handler) error {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return err
	}
	udp, err := net.ListenUDP("udp", ua)
	if err != nil {
		return err
	}
	s.addr = udp.LocalAddr().String() // before handshakes can log it
	qt := &quic.Transport{Conn: udp}
	ln, err := qt.Listen(http3.ConfigureTLSConfig(tlsConf), quicConfig(&s.opts, true))
	if err != nil {
		qt.Close()
		udp.Close()
		return err
	}
	s.udp, s.qt, s.ln = udp, qt, ln
	s.h3 = &http3.Server{
		Handler: h,
		Logger:  s.opts.Log,
		ConnContext: func(ctx context.Context, _ *quic.Conn) context.Context {
			s.accepted.Add(1)
			return ctx
		},
	}
	return nil
}

// Addr is the address the server is bound to, with the actual port.
func (s *Server) Addr() string { return s.addr }

// Serve accepts peers and serves their requests until ctx ends or Close is
// called. Then it stops accepting, lets requests in flight finish for
// Options.DrainTimeout, cuts off the rest, and returns once every
// connection and handler has ended; handlers must return when their
// request context ends. It returns nil after such a stop, the listener's
// error if it failed, and ErrClosed if the server was closed or had
// already served.
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	if s.state != stateListening {
		s.mu.Unlock()
		return ErrClosed
	}
	s.state = stateServing
	s.mu.Unlock()
	defer close(s.done)

	errc := make(chan error, 1)
	go func() { errc <- s.serve() }() // ends after drain, below
	var err error
	select {
	case <-ctx.Done():
	case <-s.stop:
	case err = <-errc:
	}
	s.mu.Lock()
	s.state = stateClosed
	s.mu.Unlock()
	s.drain()
	if err == nil {
		if e := <-errc; !errors.Is(e, http.ErrServerClosed) {
			err = e
		}
	}
	s.closeSockets()
	s.conns.closeAndWait()
	s.handlers.closeAndWait()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("backhaul: serve %s: %w", s.addr, err)
	}
	return nil
}

func (s *Server) serve() error {
	if s.mux != nil {
		return s.mux.serve(s.tcp)
	}
	if s.hs != nil {
		return s.hs.ServeTLS(s.tcp, "", "")
	}
	return s.h3.ServeListener(s.ln)
}

// drain stops accepting, tells peers to go away (GOAWAY), waits for
// requests in flight up to the drain timeout and then closes every
// connection.
func (s *Server) drain() {
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.DrainTimeout)
	defer cancel()
	var err error
	switch {
	case s.mux != nil:
		err = s.mux.shutdown(ctx, s.tcp)
	case s.hs != nil:
		err = s.hs.Shutdown(ctx)
		s.hs.Close()
	default:
		// http3 leaves the listener to its owner. Closed first, it
		// refuses new handshakes at once rather than queueing them.
		s.ln.Close()
		err = s.h3.Shutdown(ctx)
		s.h3.Close()
	}
	if err != nil {
		s.opts.Log.Info("backhaul: requests still in flight after the drain timeout were cut off",
			"addr", s.addr, "drain_timeout", s.opts.DrainTimeout)
	}
}

func (s *Server) closeSockets() {
	if s.tcp != nil {
		s.tcp.Close() // usually closed by Shutdown already
		return
	}
	s.ln.Close()
	s.qt.Close()
	s.udp.Close()
}

// Close stops the server as the end of Serve's context would, and returns
// once it has stopped. Without Serve it just releases the socket. Close is
// idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	switch s.state {
	case stateListening:
		s.state = stateClosed
		s.mu.Unlock()
		s.closeSockets()
		close(s.done)
	case stateServing:
		s.state = stateClosed
		close(s.stop)
		s.mu.Unlock()
	default:
		s.mu.Unlock()
	}
	<-s.done
	return nil
}

// track wraps h so that Serve can wait for every handler to return.
func (s *Server) track(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.handlers.enter() {
			http.Error(w, "backhaul: server closing", http.StatusServiceUnavailable)
			return
		}
		defer s.handlers.exit()
		h.ServeHTTP(w, r)
	})
}

// refused logs a client the TLS handshake turned away. Anyone can trigger
// it, so it is rate-limited.
func (s *Server) refused(err error) {
	if ok, dropped := s.refusals.allow(time.Now()); ok {
		s.opts.Log.Warn("backhaul: refused a peer", "addr", s.addr, "error", err, "refusals_not_logged", dropped)
	}
}

// tracker counts work in flight (handlers, connections) so that shutdown
// can wait for the last of it. Once closed it admits nothing new.
type tracker struct {
	n    atomic.Int64  // the count, plus trackerClosed once closed
	zero chan struct{} // closed when closed and the count is zero
}

const trackerClosed = 1 << 62

func (t *tracker) init() { t.zero = make(chan struct{}) }

// enter admits one unit of work, unless the tracker is closed.
func (t *tracker) enter() bool {
	for {
		v := t.n.Load()
		if v&trackerClosed != 0 {
			return false
		}
		if t.n.CompareAndSwap(v, v+1) {
			return true
		}
	}
}

// exit ends a unit of work that enter admitted.
func (t *tracker) exit() {
	if t.n.Add(-1) == trackerClosed {
		close(t.zero)
	}
}

// closeAndWait closes the tracker and waits for the work in it to end. It
// is called once.
func (t *tracker) closeAndWait() {
	if t.n.Or(trackerClosed) == 0 {
		close(t.zero)
	}
	<-t.zero
}

// limiter lets one event through per interval and counts the others.
type limiter struct {
	mu      sync.Mutex
	next    time.Time
	dropped int
}

const logInterval = 10 * time.Second

func (l *limiter) allow(now time.Time) (ok bool, dropped int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Before(l.next) {
		l.dropped++
		return false, 0
	}
	l.next = now.Add(logInterval)
	dropped, l.dropped = l.dropped, 0
	return true, dropped
}

// errorLog adapts the logger for net/http, whose messages (TLS handshake
// errors, mostly) any peer can trigger: they go out at Debug.
func errorLog(l *slog.Logger) *log.Logger { return slog.NewLogLogger(l.Handler(), slog.LevelDebug) }
