package proxy

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

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/godwit/godwit/autostart"
	"github.com/godwit/godwit/config"
	"github.com/godwit/godwit/gossip"
	"github.com/godwit/godwit/health"
	"github.com/godwit/godwit/replay"
	"github.com/godwit/godwit/routing"
)

// Server is one edge node: its listeners, routing table, health checker and
// admin API. Build it with New, bind with Listen (optional: Run binds too)
// and serve with Run.
type Server struct {
	cfg     *config.Config
	log     *slog.Logger
	table   *routing.Table
	health  *health.Checker
	handler *Handler
	conns   *connLimiter // client connection limits (connlimit.go)
	tracked *connTracker // client connections' states, for the drain (drain.go)
	reg     *prometheus.Registry

	mu        sync.Mutex
	listeners map[string]net.Listener // "http", "https", "admin"
	fleet     *fleet                  // nil: a single node (or not running yet)
	tlsConf   *tls.Config
	h3udp     *net.UDPConn // listen.http3's socket, bound by Listen (http3.go)
	certs     *certStore   // of tlsConf; nil when listen.https and listen.http3 are off
	// drivers run this node's machines (exec: child processes, stopped
	// when the node stops).
	drivers *autostart.Drivers
	specs   []autostart.Spec

	reload     reloader
	adminToken atomic.Pointer[string] // "" : mutating admin calls are open (loopback)
	watch      *watchdog              // stuck loops (watchdog.go)
	// testFleetSync, for tests only, is called at the start of every
	// fleet sync (a stuck consumer of gossip); set it before Run.
	testFleetSync func()

	// testGossip, for tests only, may change the gossip configuration
	// (its transport, its timings) before Run starts gossip; set it
	// before Run. Nil in production.
	testGossip func(*gossip.Config)
}

// New builds a node from validated config. Metrics go to reg (which /metrics
// serves); log receives structured logs.
func New(cfg *config.Config, log *slog.Logger, reg *prometheus.Registry) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	table := routing.NewTable(cfg.Node.Region, cfg.Apps, cfg.Machines)
	s := &Server{cfg: cfg, log: log, table: table, reg: reg, listeners: make(map[string]net.Listener)}
	s.watch = newWatchdog(log.With("component", "watchdog"), reg)
	s.health = health.NewChecker(log.With("component", "health"), reg, func(id string, passing bool, reason string) {
		s.watch.health.enter()
		defer s.watch.health.exit()
		if m := table.Machine(id); m != nil {
			m.SetHealthy(passing)
		}
	})
	s.handler = &Handler{
		table:       table,
		region:      cfg.Node.Region,
		cfg:         cfg.Proxy,
		log:         log,
		access:      cfg.Log.Access,
		metrics:     newMetrics(reg, table),
		ids:         newRequestIDs(cfg.Node.Region),
		dialer:      &net.Dialer{Timeout: cfg.Proxy.ConnectTimeout, KeepAlive: 30 * time.Second},
		markFailing: s.health.MarkFailing,
	}
	s.tracked = newConnTracker()
	s.conns = newNodeConnLimiter(cfg, s.handler.metrics, reg, log)
	drivers, specs, err := machineDrivers(cfg, log.With("component", "autostart"))
	if err != nil {
		return nil, err
	}
	s.drivers, s.specs = drivers, specs
	s.handler.noWakeWait = cfg.Autostart.MaxWaiters == 0
	if cfg.Proxy.ReplayCacheEntries > 0 {
		cache := replay.NewCache(cfg.Proxy.ReplayCacheEntries)
		s.handler.cache = cache
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "godwit_replay_cache_entries",
			Help: "Entries in the replay cache (expired ones not yet dropped included); at most proxy.replay_cache_entries.",
		}, func() float64 { return float64(cache.Len()) }))
	}
	if cfg.Listen.HTTPS != "" || cfg.Listen.HTTP3 != "" {
		certs, selfSigned, err := newCertStore(cfg.TLS, cfg.Apps, log.With("component", "tls"), reg)
		if err != nil {
			drivers.Close()
			return nil, err
		}
		if selfSigned {
			log.Warn("no tls certificate configured: serving a self-signed development certificate on listen.https and listen.http3; clients will not trust it")
		}
		s.certs = certs
		s.tlsConf = tlsConfig(certs) // GetCertificate reads certs: clones serve reloads too
	}
	s.reload.cur = cfg
	s.reload.started = make(map[string]time.Time)
	s.health.Set(healthTargetsSince(cfg, s.reload.started, time.Now(), s.machineRunning))
	token, err := readAdminToken(cfg.Admin.TokenFile)
	if err != nil {
		drivers.Close()
		return nil, err
	}
	s.adminToken.Store(&token)
	return s, nil
}

// Table is the node's routing table.
func (s *Server) Table() *routing.Table { return s.table }

// Listen binds every configured listener. It is separate from Run so that
// callers (tests, the demo) learn bound addresses, including port 0 ones,
// before serving.
func (s *Server) Listen() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range []struct{ name, addr string }{
		{"http", s.cfg.Listen.HTTP}, {"https", s.cfg.Listen.HTTPS}, {"admin", s.cfg.Listen.Admin},
	} {
		if l.addr == "" || s.listeners[l.name] != nil {
			continue
		}
		ln, err := net.Listen("tcp", l.addr)
		if err != nil {
			for _, o := range s.listeners {
				o.Close()
			}
			clear(s.listeners)
			return fmt.Errorf("listen.%s %s: %w", l.name, l.addr, err)
		}
		s.listeners[l.name] = ln
	}
	if err := s.listenHTTP3(); err != nil {
		for _, o := range s.listeners {
			o.Close()
		}
		clear(s.listeners)
		return err
	}
	return nil
}

// Addr returns the bound address of listener "http", "https", "http3"
// (UDP) or "admin", or "" when it is off or not bound yet.
func (s *Server) Addr(name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if name == "http3" && s.h3udp != nil {
		return s.h3udp.LocalAddr().String()
	}
	if ln := s.listeners[name]; ln != nil {
		return ln.Addr().String()
	}
	return ""
}

// closeMachines ends the autostart Manager and stops the machines this
// node runs as processes: they stop with it.
func (s *Server) closeMachines() {
	if s.handler.wakes != nil {
		s.handler.wakes.Close()
	}
	s.drivers.Close()
}

// Run serves until ctx ends, then drains: listeners stop accepting, idle
// connections close, and in-flight requests get proxy.drain_timeout to
// finish. It returns nil after a clean drain.
func (s *Server) Run(ctx context.Context) error {
	if err := s.Listen(); err != nil {
		s.closeMachines()
		return err
	}
	for _, m := range s.cfg.Machines {
		// A machine this node runs as a process is not running before
		// this node starts it, whatever the config says it should be.
		if rm := s.table.Machine(m.ID); rm != nil && m.Driver.Kind == config.DriverExec {
			rm.SetState(routing.StateStopped)
		}
	}
	wakes, err := newWakes(s.cfg, s.table, s.drivers, s.specs, s.handler, s.log.With("component", "autostart"), s.reg)
	if err != nil {
		s.closeListeners()
		s.closeMachines()
		return err
	}
	s.handler.wakes = wakes
	s.log.Info("godwit edge running", "node", s.cfg.Node.Name, "region", s.cfg.Node.Region,
		"http", s.Addr("http"), "https", s.Addr("https"), "http3", s.Addr("http3"), "admin", s.Addr("admin"),
		"apps", len(s.cfg.Apps), "machines", len(s.cfg.Machines))

	healthCtx, stopHealth := context.WithCancel(context.Background())
	defer stopHealth()
	// The fleet outlives the drain: requests in flight may still need
	// other edges' machines.
	fleetCtx, stopFleet := context.WithCancel(context.Background())
	defer stopFleet()
	f, err := newFleet(s.cfg, s.table, s.handler, s.log, s.reg, s.testGossip)
	if err != nil {
		s.closeListeners()
		s.closeMachines()
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	if f != nil {
		s.mu.Lock()
		s.fleet = f
		s.mu.Unlock()
		s.handler.fleet = f
		s.handler.warmup = f.warmup
		s.handler.simulatedRTT = len(s.cfg.Backhaul.SimulatedRTT) > 0
		f.watched, f.syncHook = s.watch.fleet, s.testFleetSync
		s.watch.watch(f.watched, nil)
		g.Go(func() error { return f.run(fleetCtx) })
		s.log.Info("fleet joined", "gossip", f.node.Addr(), "backhaul", f.backhaulAddr(), "protocol", s.cfg.Backhaul.Protocol)
	}
	g.Go(func() error { return s.health.Run(healthCtx) })
	g.Go(func() error { return s.handler.wakes.Run(healthCtx) }) // autostop
	s.watchLoops(healthCtx, g)
	s.reload.mu.Lock()
	s.reload.ctx = healthCtx // reloads may start and stop machines from now on
	for _, m := range s.cfg.Machines {
		// A machine this node runs as a process and that the config says
		// is started is started now; requests meanwhile wait for it as
		// for any wake.
		if m.Driver.Kind == config.DriverExec && m.State != config.StateStopped {
			s.startMachine(m.ID)
		}
	}
	s.reload.mu.Unlock()
	g.Go(func() error { s.janitor(gctx); return nil })
	if s.certs != nil {
		g.Go(func() error { s.certs.run(gctx); return nil }) // polls tls.reload_interval
	}

	var (
		servers []*http.Server
		closers []net.Listener // closed first in the drain
	)
	serve := func(name string, srv *http.Server, ln net.Listener) {
		servers = append(servers, srv)
		closers = append(closers, ln)
		g.Go(func() error {
			err := srv.Serve(ln)
			if errors.Is(err, http.ErrServerClosed) || errors.Is(err, net.ErrClosed) && s.handler.draining.Load() {
				return nil
			}
			return fmt.Errorf("serve %s: %w", name, err)
		})
	}
	s.mu.Lock()
	lns := s.listeners
	h3udp := s.h3udp
	s.mu.Unlock()
	errLog := slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)
	// HTTP/1 connections are watched for request smuggling (smuggle.go):
	// every client connection is a smuggleConn but those of HTTP/2 over
	// TLS, so the https listener completes TLS handshakes itself to learn
	// the protocol before net/http sees the connection.
	if ln := lns["http"]; ln != nil {
		li := &listenerInfo{proto: "http", port: portOf(ln.Addr()), ssl: "off"}
		srv := s.httpServer(s.handler.handlerFor(li), errLog)
		srv.Protocols = new(http.Protocols)
		srv.Protocols.SetHTTP1(true)
		srv.Protocols.SetUnencryptedHTTP2(true)
		serve("http", srv, smuggleListener{s.conns.listen(ln, "http", nil), srv.MaxHeaderBytes})
	}
	if ln := lns["https"]; ln != nil {
		li := &listenerInfo{proto: "https", port: portOf(ln.Addr()), ssl: "on", altSvc: altSvc(h3udp)}
		srv := s.httpServer(s.handler.handlerFor(li), errLog)
		// Serve sets up HTTP/2 from (and writes to) its own copy; the
		// listener's handshakes may already be reading s.tlsConf.
		srv.TLSConfig = s.tlsConf.Clone()
		// Counted (and refused over the limit) before the handshake.
		tln := newTLSListener(s.conns.listen(ln, "https", s.tlsConf), s.tlsConf, s.cfg.Proxy.ReadHeaderTimeout, s.log.With("listener", "https"))
		serve("https", srv, smuggleListener{tln, srv.MaxHeaderBytes})
	}
	var h3 *edgeHTTP3 // nil: off, or QUIC failed to start (g has the error)
	if h3udp != nil {
		li := &listenerInfo{proto: "https", port: portOf(h3udp.LocalAddr()), ssl: "on", altSvc: altSvc(h3udp)}
		h3 = s.serveHTTP3(g, h3udp, s.handler.handlerFor(li))
	}
	var admin *http.Server
	if ln := lns["admin"]; ln != nil {
		admin = &http.Server{Handler: s.adminHandler(s.reg), ReadHeaderTimeout: 10 * time.Second, ErrorLog: errLog}
		g.Go(func() error {
			if err := admin.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("serve admin: %w", err)
			}
			return nil
		})
	}

	<-gctx.Done()
	s.reload.mu.Lock() // waits for a reload under way
	s.reload.ctx = nil
	s.reload.mu.Unlock()
	s.handler.draining.Store(true)
	if f != nil {
		f.leave() // peers stop sending requests here while it drains
	}
	if d := s.cfg.Proxy.DrainDelay; d > 0 {
		// Lame duck: /healthz says draining and gossip peers have
		// rerouted; a load balancer in front needs a moment to notice
		// before the listeners close.
		s.log.Info("draining: still accepting for proxy.drain_delay", "drain_delay", d)
		t := time.NewTimer(d)
		<-t.C
	}
	s.log.Info("draining", "timeout", s.cfg.Proxy.DrainTimeout)
	drainCtx, cancel := context.WithTimeout(context.Background(), s.cfg.Proxy.DrainTimeout)
	defer cancel()
	// New connections are refused (they go to another edge); requests on
	// open ones are answered "Connection: close" (closeAfterDrain) until
	// every connection left has been idle for a while (drain.go).
	began := time.Now()
	for _, ln := range closers {
		ln.Close()
	}
	open := s.tracked.count()
	s.tracked.quiesce(drainCtx, began, min(drainIdleGrace, s.cfg.Proxy.DrainTimeout/2))
	s.log.Info("stopped accepting; open client connections told to close", "connections", open, "left", s.tracked.count(), "took", time.Since(began).Round(time.Millisecond))
	var wg sync.WaitGroup
	var drainErr error
	var drainMu sync.Mutex
	for _, srv := range servers {
		wg.Go(func() {
			if err := srv.Shutdown(drainCtx); err != nil {
				drainMu.Lock()
				drainErr = errors.Join(drainErr, err)
				drainMu.Unlock()
				srv.Close()
			}
		})
	}
	if h3 != nil {
		wg.Go(func() {
			if err := h3.shutdown(drainCtx); err != nil { // GOAWAY, then the socket closes
				drainMu.Lock()
				drainErr = errors.Join(drainErr, err)
				drainMu.Unlock()
			}
		})
	}
	wg.Wait()
	s.handler.tunnels.closeAll()
	s.handler.tunnels.wait()
	if admin != nil {
		admin.Close()
	}
	stopHealth()
	stopFleet()
	s.handler.closePools()
	err = g.Wait()
	s.reload.wg.Wait() // machine starts, ended by stopHealth
	s.closeMachines()
	if drainErr != nil {
		s.log.Warn("drain timeout passed with requests still in flight; they were cut", "timeout", s.cfg.Proxy.DrainTimeout)
	} else {
		s.log.Info("drained")
	}
	return err
}

func (s *Server) httpServer(h http.Handler, errLog *log.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: s.cfg.Proxy.ReadHeaderTimeout,
		IdleTimeout:       s.cfg.Proxy.IdleTimeout,
		MaxHeaderBytes:    s.cfg.Proxy.MaxHeaderBytes,
		ErrorLog:          errLog,
		ConnContext:       withClientConn,
		ConnState:         s.tracked.hook,
		// HTTP/2 frames of at most 16 KiB, the protocol's default,
		// rather than net/http's 1 MiB: a client's frame is read whole
		// into a buffer that its connection keeps, so one large frame
		// would pin 1 MiB per connection.
		HTTP2: &http.HTTP2Config{MaxReadFrameSize: h2MaxReadFrameSize},
	}
}

// h2MaxReadFrameSize is the SETTINGS_MAX_FRAME_SIZE client connections
// are told, in bytes: larger frames are a connection error.
const h2MaxReadFrameSize = 16 << 10

// janitor closes pooled upstream connections that stayed idle too long.
func (s *Server) janitor(ctx context.Context) {
	period := max(s.cfg.Proxy.UpstreamIdleTimeout/2, time.Second)
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.handler.pools.Range(func(_, u any) bool {
				u.(*upstream).closeIdle(now, false)
				return true
			})
		}
	}
}

// closePools closes every pooled upstream connection.
func (h *Handler) closePools() {
	h.pools.Range(func(_, u any) bool {
		u.(*upstream).closeIdle(time.Time{}, true)
		return true
	})
}

func portOf(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return fmt.Sprint(ta.Port)
	}
	_, p, _ := net.SplitHostPort(a.String())
	return p
}

// closeListeners closes the bound listeners (Run failed before serving).
func (s *Server) closeListeners() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, ln := range s.listeners {
		ln.Close()
		delete(s.listeners, name)
	}
	if s.h3udp != nil {
		s.h3udp.Close()
		s.h3udp = nil
	}
}
