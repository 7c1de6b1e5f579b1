package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/godwit/godwit/autostart"
	"github.com/godwit/godwit/config"
	"github.com/godwit/godwit/replay"
	"github.com/godwit/godwit/routing"
)

// Handler is the request pipeline: host → app → machine → forward. It is
// safe for concurrent use; every request reads the routing table's current
// snapshot.
type Handler struct {
	table   *routing.Table
	region  string
	cfg     config.Proxy
	log     *slog.Logger
	access  bool
	metrics *metrics
	ids     *requestIDs
	dialer  *net.Dialer
	// markFailing is told about a machine whose connection failed on the
	// request path (passive health); nil means nobody listens.
	markFailing func(machineID string, err error)

	cache      *replay.Cache      // nil: disabled
	fleet      Fleet              // nil: a single node, no backhaul
	wakes      *autostart.Manager // nil: no machine is started on demand
	noWakeWait bool               // autostart.max_waiters = 0
	softChecks sync.Map           // app name → *atomic.Int64: when autostartOnSoft last looked
	pools      sync.Map           // *routing.Machine → *upstream
	tunnels    tunnels            // hijacked upgraded connections, closed on shutdown
	draining   atomic.Bool
	// simulatedRTT: backhaul.simulated_rtt is set, so each request's
	// simulated wait is recorded for Server-Timing's rtt phase.
	simulatedRTT bool
	// warmup, set while the node is in a fleet, waits (bounded) for a node
	// that has just started to join it, and reports whether it waited and
	// is now joined (fleet.warmup).
	warmup func(ctx context.Context) bool
}

// listenerInfo is what a request learns from the listener that took it.
type listenerInfo struct {
	proto string // "http" or "https"
	port  string // the port clients connect to
	ssl   string // "on" or "off"
	// altSvc is the Alt-Svc header of every response (listen.http3
	// advertised on the https and http3 listeners); nil: none.
	altSvc []string
}

// handlerFor binds the handler to one listener.
func (h *Handler) handlerFor(li *listenerInfo) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.serve(w, r, li) })
}

// exchange is one request's state, for its log line and metrics.
type exchange struct {
	start     time.Time
	requestID string
	idHeader  []string // the Fly-Request-Id response header's value
	// constraints come from the client's routing headers (fly-prefer-region
	// and friends); preferredUnavailable names a preferred instance that
	// could not be had, for the machine's fly-preferred-instance-unavailable.
	constraints          routing.Constraints
	preferredUnavailable string
	replays              int           // fly-replay answers followed so far
	cache                *cacheScope   // set once the replay cache concerns the request (a lookup, a replay)
	routeDur             time.Duration // picking the first machine, queue wait excluded
	firstUpStart         time.Time     // when the first machine was sent the request
	lastUpStart          time.Time     // when the current machine was sent it
	// owner is set on a request that came over the backhaul for one of
	// this node's machines: the accepting edge picked the machine and runs
	// any replay, so this node forwards it and returns the answer raw.
	owner bool
	// backhaulReq is the last request sent to another edge that was
	// answered: its body may still be in its transport's hands.
	backhaulReq *http.Request
	app         *routing.App
	machine     *routing.Machine
	status      int
	code        Code
	bytesOut    int64
	queued      time.Duration
	woke        time.Duration // waiting for machines to wake
	simulated   time.Duration // backhaul.simulated_rtt waited (part of upstream)
	wokeMachine string        // the machine last woken for the request
	wakeRemote  bool          // the picked machine is another edge's, stopped: its owner may wake it
	err         error
	tunnelled   bool // counted by Handler.tunnels until finished
	// abort: the client went away before any answer was written (status
	// 499). serve aborts the handler then, so that net/http does not
	// write an empty 200 of its own to a client that may still read.
	abort bool

	// tunnelIn is, on an owner, the backhaul request body of an upgrade:
	// the client's side of the tunnel once the machine switches protocols.
	tunnelIn io.ReadCloser
	// altSvc is the listener's Alt-Svc header (listenerInfo.altSvc).
	altSvc []string
	// slowBody is the request body under proxy.body_read_timeout; nil:
	// none (slowclient.go).
	slowBody *idleBody
}

func (h *Handler) serve(w http.ResponseWriter, r *http.Request, li *listenerInfo) {
	x := exchange{start: time.Now()}
	x.requestID = h.ids.next(x.start)
	x.idHeader = []string{x.requestID}
	w.Header()[hdrRequestIDResp] = x.idHeader
	h.closeAfterDrain(w, r)
	if li.altSvc != nil {
		x.altSvc = li.altSvc
		w.Header()[hdrAltSvc] = li.altSvc
	}
	defer h.finish(r, &x)
	defer func() {
		// x.status 0 is a path that answered nothing and recorded no
		// reason: no answer is better than net/http's empty 200.
		if x.abort || x.status == 0 {
			panic(http.ErrAbortHandler) // finish still runs
		}
	}()

	// Both framings at once is how requests get smuggled (RFC 9112 6.3):
	// refuse rather than guess which one the machine would believe, and
	// close the connection, whose later bytes are in doubt. net/http
	// hides the Content-Length of such a request; its connection saw it.
	if sc := smuggleConnFrom(r.Context()); sc != nil {
		if reason, ok := sc.admit(); !ok {
			w.Header().Set("Connection", "close")
			h.fail(w, &x, CodeAmbiguousFraming, reason, nil)
			return
		}
	}
	if reason := malformedTarget(r); reason != "" {
		h.fail(w, &x, CodeMalformedRequest, reason, nil)
		return
	}
	if extendedConnect(r) { // WebSocket over HTTP/3 (http3.go)
		h.fail(w, &x, CodeUpgradeRejected, "extended CONNECT (RFC 9220) is not supported; upgrade over HTTP/1.1 instead", nil)
		return
	}

	app := h.table.AppForHost(r.Host)
	if app == nil {
		h.fail(w, &x, CodeUnknownHost, "no app serves this host", nil)
		return
	}
	x.app = app
	// The connection holds a slot of the app from its first request for
	// it (connlimit.go); one the app has no slot left for is closed.
	if cs := connSlotFrom(r.Context()); cs != nil && !cs.admitApp(app.Name) {
		w.Header().Set("Connection", "close")
		h.fail(w, &x, CodeAppConnLimit, "too many connections for this app on this edge; try again later", nil)
		return
	}
	if li.proto == "http" && app.Config.HTTPService.ForceHTTPS {
		x.status = http.StatusMovedPermanently
		http.Redirect(w, r, "https://"+r.Host+requestTarget(r), x.status)
		return
	}

	x.constraints = routingConstraints(r.Header, app)
	var (
		m    *routing.Machine
		code Code
		err  error
		hit  bool
	)
	if h.cache != nil && (h.cache.Len() > 0 || len(app.SessionRules) > 0) {
		x.cache = newCacheScope(r, app)
		// A client's routing headers choose the first machine
		// themselves: they bypass the cache.
		if e, ok := h.cachedReplay(x.cache, x.start); ok && !x.constraints.Any() {
			m, code, err = h.pickCached(r.Context(), &x, e)
			hit = m != nil
		}
	}
	if m == nil && err == nil {
		m, code, err = h.pick(r.Context(), app, &x, nil)
	}
	if err != nil {
		h.fail(w, &x, code, err.Error(), err)
		return
	}
	x.machine = m
	x.routeDur = time.Since(x.start) - x.queued - x.woke

	fi := forwardInfo{
		clientIP:  clientIP(r.RemoteAddr),
		region:    h.region,
		requestID: x.requestID,
		proto:     li.proto,
		port:      li.port,
		ssl:       li.ssl,
		via:       viaValue(r),
		chunked:   r.ContentLength < 0 || (len(r.TransferEncoding) > 0 && r.TransferEncoding[0] == "chunked"),
	}
	fi.preferredUnavailable = x.preferredUnavailable
	if hit {
		fi.replayCacheStatus = cacheHit
		h.metrics.cacheRequests.WithLabelValues(x.cache.app.Name, cacheHit).Inc()
	}
	fi.upgrade = upgradeType(r)
	h.forward(w, r, &x, &fi)
}

// pick chooses a machine, waiting in the app's queue when every machine is
// at its hard limit. exclude lists machines a retry must avoid.
func (h *Handler) pick(ctx context.Context, app *routing.App, x *exchange, exclude []*routing.Machine) (*routing.Machine, Code, error) {
	c := x.constraints
	x.wakeRemote = false
	if len(exclude) > 0 {
		c.Exclude = append(c.Exclude[:len(c.Exclude):len(c.Exclude)], exclude...)
	}
	m, res, err := app.PickWith(c)
	if err != nil && !errors.Is(err, routing.ErrAtCapacity) && h.warmup != nil && h.warmup(ctx) {
		// Just started: the app's machines may be other edges' that gossip
		// had not brought yet. Now it has: look again.
		// The app of the table's new snapshot: the one the request
		// started with has the machines it knew then.
		if now := h.table.App(app.Name); now != nil {
			app, x.app = now, now
		}
		m, res, err = app.PickWith(c)
	}
	if res.PreferredUnavailable {
		x.preferredUnavailable = c.PreferInstance
	}
	if errors.Is(err, routing.ErrAtCapacity) {
		qs := time.Now()
		if c.Restricts() {
			m, err = waitConstrained(ctx, app, c, qs.Add(h.cfg.QueueTimeout))
		} else {
			m, err = app.Wait(ctx, h.cfg.QueueTimeout, h.cfg.MaxQueue)
		}
		x.queued += time.Since(qs)
		h.metrics.queueWait.WithLabelValues(app.Name).Observe(x.queued.Seconds())
		switch {
		case errors.Is(err, routing.ErrQueueTimeout):
			h.metrics.rejections.WithLabelValues(app.Name, "queue_timeout").Inc()
			return nil, CodeQueueTimeout, fmt.Errorf("every machine of app %q stayed at its hard limit for %s", app.Name, h.cfg.QueueTimeout)
		case errors.Is(err, routing.ErrQueueFull):
			h.metrics.rejections.WithLabelValues(app.Name, "queue_full").Inc()
			return nil, CodeQueueFull, fmt.Errorf("%d requests already wait for a machine of app %q", h.cfg.MaxQueue, app.Name)
		case err != nil:
			return nil, CodeNoMachine, fmt.Errorf("request ended while waiting: %w", err)
		}
	}
	if err != nil && !errors.Is(err, routing.ErrAtCapacity) && h.wakes != nil {
		if wm := wakeCandidate(app, c); wm != nil && h.autostarts(app) {
			return h.pickWoken(ctx, app, x, wm)
		}
	}
	if err == nil && m.Band() != routing.BelowSoft && h.wakes != nil && h.autostarts(app) {
		h.autostartOnSoft(app) // Fly's rule: every machine over soft, start one more
	}
	switch {
	case errors.Is(err, routing.ErrInstanceUnavailable):
		return nil, CodeInstanceUnavailable, fmt.Errorf("machine %q of app %q is not available", c.Instance, app.Name)
	case err != nil && (len(c.Regions) > 0 && !c.AnyRegion):
		return nil, CodeNoMachine, fmt.Errorf("no started, healthy machine for app %q in region %s", app.Name, strings.Join(c.Regions, ","))
	case err != nil:
		return nil, CodeNoMachine, fmt.Errorf("no started, healthy machine for app %q", app.Name)
	}
	return m, "", nil
}

// constrainedPoll is how often a request that may use only some machines
// (a forced instance or region, an excluded machine) looks for a free slot
// while they are all at their hard limit. The app's FIFO queue hands a
// freed slot to its oldest waiter whatever the machine, so such requests
// poll beside it instead; they are rare, and the poll is bounded by the
// queue timeout.
const constrainedPoll = 5 * time.Millisecond

// waitConstrained waits until app.PickWith(c) finds a machine below its
// hard limit, the deadline passes (routing.ErrQueueTimeout) or ctx ends.
func waitConstrained(ctx context.Context, app *routing.App, c routing.Constraints, deadline time.Time) (*routing.Machine, error) {
	t := time.NewTicker(constrainedPoll)
	defer t.Stop()
	for {
		m, _, err := app.PickWith(c)
		if !errors.Is(err, routing.ErrAtCapacity) {
			return m, err
		}
		if !time.Now().Before(deadline) {
			return nil, routing.ErrQueueTimeout
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// Fly's request routing headers (canonical forms).
const (
	hdrPreferRegion     = "Fly-Prefer-Region"
	hdrForceRegion      = "Fly-Force-Region"
	hdrPreferInstanceID = "Fly-Prefer-Instance-Id"
	hdrForceInstanceID  = "Fly-Force-Instance-Id"
)

// routingConstraints reads Fly's request routing headers. fly-force-* have
// no fallback; fly-prefer-* fall back to the nearest machine. Region lists
// are in preference order and may use Fly's aliases (us, eu, any, ...).
func routingConstraints(h http.Header, app *routing.App) routing.Constraints {
	var c routing.Constraints
	if v := h[hdrForceInstanceID]; len(v) > 0 {
		c.Instance = strings.TrimSpace(v[0])
	} else if v := h[hdrPreferInstanceID]; len(v) > 0 {
		c.PreferInstance = strings.TrimSpace(v[0])
	}
	if v := h[hdrForceRegion]; len(v) > 0 {
		c.Regions, c.AnyRegion = replay.ExpandRegions(splitList(v), app.Regions())
	} else if v := h[hdrPreferRegion]; len(v) > 0 {
		c.Regions, _ = replay.ExpandRegions(splitList(v), app.Regions())
		c.AnyRegion = true
	}
	return c
}

// splitList splits comma-separated header values into lower-case items.
func splitList(values []string) []string {
	var out []string
	for _, v := range values {
		for _, item := range strings.Split(v, ",") {
			if item = strings.ToLower(strings.TrimSpace(item)); item != "" {
				out = append(out, item)
			}
		}
	}
	return out
}

// upstreamFor returns the connection pool of a machine.
func (h *Handler) upstreamFor(m *routing.Machine) *upstream {
	if u, ok := h.pools.Load(m); ok {
		return u.(*upstream)
	}
	u, _ := h.pools.LoadOrStore(m, newUpstream(m.Addr, h.dialer, h.cfg.MaxIdlePerMachine, h.cfg.UpstreamIdleTimeout))
	return u.(*upstream)
}

// connect returns a connection to x.machine, retrying on other machines
// when connecting fails: nothing has been written then, so any request may
// go elsewhere. It updates x.machine and returns the last error when the
// retry budget is spent.
func (h *Handler) connect(ctx context.Context, x *exchange, retryable bool) (*upConn, bool, Code, error) {
	var tried []*routing.Machine
	for attempt := 0; ; attempt++ {
		u := h.upstreamFor(x.machine)
		if c := u.get(time.Now(), retryable); c != nil {
			return c, true, "", nil
		}
		c, err := u.dial(ctx)
		if err == nil {
			return c, false, "", nil
		}
		if ctx.Err() != nil {
			return nil, false, CodeUpstreamFailed, fmt.Errorf("client went away while connecting: %w", ctx.Err())
		}
		m := x.machine
		h.metrics.retries.WithLabelValues(m.App, m.Region).Inc()
		if h.markFailing != nil {
			h.markFailing(m.ID, err)
		}
		h.log.Warn("machine connect failed", "machine", m.ID, "app", m.App, "request_id", x.requestID, "attempt", attempt+1, "err", err)
		m.Release()
		x.machine = nil
		tried = append(tried, m)
		code := CodeRetriesFailed
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			code = CodeConnectTimeout
		}
		if attempt >= h.cfg.ConnectRetries || x.owner { // an owner tries only the machine it was asked for
			return nil, false, code, fmt.Errorf("could not connect to a machine of app %q after %d attempts", m.App, attempt+1)
		}
		next, pcode, perr := h.pick(ctx, x.app, x, tried)
		if perr != nil {
			if pcode == CodeNoMachine {
				return nil, false, code, fmt.Errorf("could not connect to a machine of app %q and no other is usable", m.App)
			}
			return nil, false, pcode, perr
		}
		x.machine = next
		if next.Remote() {
			return nil, false, "", errMovedRemote
		}
	}
}

// forward sends the request to x.machine and streams the response back.
func (h *Handler) forward(w http.ResponseWriter, r *http.Request, x *exchange, fi *forwardInfo) {
	ctx := r.Context()
	// The body streams to the first machine while its start is kept, so a
	// machine that answers fly-replay can have the request sent on whole.
	if hasBody(r) && h.cfg.BodyReadTimeout > 0 {
		x.slowBody = newIdleBody(w, r.Body, h.cfg.BodyReadTimeout)
		r.Body = x.slowBody
		defer h.bodyTimedOut(x, x.slowBody)
	} else if h.cfg.BodyWriteTimeout > 0 {
		defer h.bodyTimedOut(x, nil)
	}
	var body *replay.Body
	if hasBody(r) && !x.owner { // an owner never replays: the accepting edge keeps the body
		body = replay.NewBody(r.Body, r.ContentLength, h.cfg.ReplayBodyLimit)
		r.Body = body
	}
	var (
		c        *upConn // nil when the machine is reached through its owner
		resp     *http.Response
		bodyDone chan error
		unwatch  func() bool
		upStart  time.Time
		hop      *replayHop // the replay under way, if any
	)
	defer func() { hop.end() }()
	for {
		var st step
		if x.machine.Remote() {
			resp, st = h.remoteExchange(w, r, x, fi, body, &hop)
			c, bodyDone, unwatch = nil, nil, alwaysWatched
		} else {
			c, resp, bodyDone, unwatch, st = h.localExchange(w, r, x, fi, &hop)
		}
		switch st {
		case stepAnswered:
			return
		case stepAgain:
			continue
		}
		upStart = x.lastUpStart
		if x.owner {
			break // the accepting edge executes replays: the answer goes back raw
		}
		ins, isReplay, drained, perr := replayInstruction(resp)
		if !isReplay {
			break
		}
		h.finishReplayResponse(r, c, resp, drained, bodyDone, unwatch)
		if hop = h.nextHop(w, r, x, fi, body, hop, ins, perr); hop == nil {
			return
		}
	}
	upDone := time.Now()
	replayDur := upStart.Sub(x.firstUpStart)
	if x.replays > 0 {
		h.metrics.replayDuration.WithLabelValues(x.app.Name).Observe(replayDur.Seconds())
	}
	timing := serverTiming(x.routeDur, x.queued, x.woke, replayDur, upDone.Sub(upStart), x.simulated)
	if resp.StatusCode == http.StatusSwitchingProtocols {
		h.switchProtocols(w, r, x, fi, c, resp, bodyDone, unwatch)
		return
	}

	hdr := w.Header()
	if x.owner {
		copyRawResponseHeader(hdr, resp.Header) // the accepting edge rewrites it
		delete(hdr, hdrUpgraded)                // only the owner says a machine switched protocols
	} else {
		copyResponseHeader(hdr, resp.Header)
		hdr[hdrRequestIDResp] = x.idHeader
		setProxyHeaders(hdr, resp.Header[hdrVia], fi.via, timing)
		if x.altSvc != nil {
			hdr[hdrAltSvc] = x.altSvc // the edge's alternative services, not the machine's
		}
	}
	if x.woke > 0 {
		// The answer waited for a machine to start: say which and how long.
		hdr[hdrWoke] = []string{x.wokeMachine + ";dur=" + strconv.FormatFloat(float64(x.woke)/1e6, 'f', 1, 64)}
	}
	announced := len(resp.Trailer)
	if announced > 0 {
		keys := make([]string, 0, announced)
		for k := range resp.Trailer {
			keys = append(keys, k)
		}
		hdr["Trailer"] = keys
	}
	x.status = resp.StatusCode
	w.WriteHeader(resp.StatusCode)

	// Still watched: a client that goes away while the machine is still
	// answering (a long poll, a quiet stream) ends the read from the
	// machine too, so the machine sees its request end and the slot comes
	// back.
	n, rerr, werr := copyBodyWithin(w, resp.Body, flushEvery(resp), newWriteDeadline(w, r, h.cfg.BodyWriteTimeout))
	watched := unwatch()
	x.bytesOut = n
	clean := rerr == nil && werr == nil && watched

	if len(resp.Trailer) > 0 {
		for k, vv := range resp.Trailer {
			if len(resp.Trailer) != announced {
				k = http.TrailerPrefix + k
			}
			hdr[k] = vv
		}
	}

	if c == nil { // through the backhaul: the transport owns the stream
		resp.Body.Close()
		if rerr != nil && werr == nil {
			x.err = rerr
			_ = http.NewResponseController(w).Flush()
			panic(http.ErrAbortHandler)
		}
		if werr != nil {
			x.err = werr
		}
		return
	}
	if bodyDone != nil && awaitBodyWrite(w, c, bodyDone) != nil {
		clean = false
	}
	// A connection that carried an upgrade request the machine declined
	// is not reused: it was dialled for a tunnel, outside the pool's count.
	if clean && !resp.Close && fi.upgrade == "" && c.br.Buffered() == 0 && ctx.Err() == nil {
		c.up.put(c, time.Now())
	} else {
		c.close()
	}
	switch {
	case werr != nil:
		x.err = werr // the client went away; nothing to tell it
	case rerr != nil:
		x.err = rerr
		// Headers are out: the only honest signal left is a cut stream.
		// What was copied goes out first (the head and the first bytes may
		// still sit in the server's buffer), so the client sees the cut.
		_ = http.NewResponseController(w).Flush()
		panic(http.ErrAbortHandler)
	}
}

// roundTrip writes the request on c and reads the response head. When the
// request has a body it is written by a goroutine so that a machine may
// answer while still reading (bodyDone reports its end, once).
//
// Until the caller calls unwatch, the end of ctx (the client went away)
// fails every read and write on c; unwatch returns false if that happened,
// and c must not be reused then. On error c is unwatched already and
// unwatch is nil.
func (h *Handler) roundTrip(ctx context.Context, w http.ResponseWriter, r *http.Request, c *upConn, fi *forwardInfo) (resp *http.Response, bodyDone chan error, unwatch func() bool, err error) {
	unwatch = context.AfterFunc(ctx, func() { c.nc.SetDeadline(aLongTimeAgo) })
	writeRequestHead(c.bw, r, fi)
	if hasBody(r) {
		// The response may start while the body is still being read.
		// Without full duplex, net/http's HTTP/1 server would then take
		// the body's lock and discard what it has not read yet, under
		// the writer below. (HTTP/2 streams are full duplex already.)
		_ = http.NewResponseController(w).EnableFullDuplex()
		if r.ProtoMajor >= 2 || r.ContentLength < 0 {
			// A stream may open without its body, and some stay open
			// both ways (a gRPC stream where the server speaks first):
			// the machine gets the head now, not with the body's first
			// bytes. That is any HTTP/2 or HTTP/3 request, and any of
			// unknown length (chunked; from the backhaul, whose requests
			// look like HTTP/1.1). A body of known length over HTTP/1
			// follows its head.
			if err = c.bw.Flush(); err != nil {
				unwatch()
				return nil, nil, nil, err
			}
		}
		bodyDone = make(chan error, 1)
		go func() { bodyDone <- endOnBodyTimeout(c, writeBody(c, r, fi.chunked)) }()
	} else if err = c.bw.Flush(); err != nil {
		unwatch()
		return nil, nil, nil, err
	}
	c.lim.N = maxResponseHeadBytes
	defer func() { c.lim.N = math.MaxInt64 }()
	for {
		resp, err = http.ReadResponse(c.br, r)
		if err != nil {
			if c.lim.N <= 0 {
				err = errResponseHeadTooLarge
			}
			unwatch()
			return nil, bodyDone, nil, err
		}
		// 1xx informational answers (100 Continue, 103 Early Hints) are
		// the machine's business with us; the client gets the final one.
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			continue
		}
		return resp, bodyDone, unwatch, nil
	}
}

var aLongTimeAgo = time.Unix(1, 0)

var errResponseHeadTooLarge = fmt.Errorf("response head larger than %d bytes", maxResponseHeadBytes)

func hasBody(r *http.Request) bool {
	return r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0
}

// writeBody streams the request body to the machine, with chunked framing
// and trailers when its length is unknown.
func writeBody(c *upConn, r *http.Request, chunked bool) error {
	bufp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bufp)
	if chunked {
		cw := httputil.NewChunkedWriter(c.bw)
		if _, err := copyRequestBody(cw, badBodyReader{c, r.Body}, *bufp, c.bw); err != nil {
			return err
		}
		if err := cw.Close(); err != nil {
			return err
		}
		for k, vv := range r.Trailer {
			if !forwardTrailer(k) {
				continue
			}
			for _, v := range vv {
				writeHeader(c.bw, k, v)
			}
		}
		c.bw.WriteString("\r\n")
		return c.bw.Flush()
	}
	n, err := copyRequestBody(c.bw, badBodyReader{c, r.Body}, *bufp, c.bw)
	if err != nil {
		return err
	}
	if n != r.ContentLength {
		// The body ended cleanly but short: a malformed HTTP/3 (or
		// HTTP/2) message whose DATA does not add up to its
		// content-length (RFC 9114 4.1.2), which quic-go lets through.
		// The machine must not wait for the rest.
		err := fmt.Errorf("request body was %d bytes, Content-Length said %d: %w", n, r.ContentLength, io.ErrUnexpectedEOF)
		c.bodyErr, c.badBody = err, true
		c.nc.SetDeadline(aLongTimeAgo)
		return err
	}
	return c.bw.Flush()
}

// copyRequestBody copies src to dst (which writes into bw) and flushes bw
// whenever a read leaves more to come, so the machine gets each piece of a
// body as it arrives: a streamed upload, or a gRPC stream whose client
// waits for an answer before sending on, must not sit in bw until 8 KiB
// gather. A read that brings the end too (a small body, the last piece)
// is flushed once, by the caller, with what ends the body.
func copyRequestBody(dst io.Writer, src io.Reader, buf []byte, bw *bufio.Writer) (int64, error) {
	var n int64
	for {
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			n += int64(nw)
			if werr != nil {
				return n, werr
			}
			if rerr == nil {
				if werr := bw.Flush(); werr != nil {
					return n, werr
				}
			}
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, rerr
		}
	}
}

// onlyReader and onlyWriter hide ReadFrom/WriteTo so io.CopyBuffer uses the
// pooled buffer instead of allocating its own.
type onlyReader struct{ io.Reader }
type onlyWriter struct{ io.Writer }

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// copyBody streams the response body to the client. It returns the bytes
// written and, separately, a read error (the machine failed) and a write
// error (the client failed).
func copyBody(w http.ResponseWriter, body io.Reader, flush bool) (n int64, rerr, werr error) {
	return copyBodyWithin(w, body, flush, writeDeadline{})
}

// copyBodyWithin is copyBody with each write to the client bounded by wd.
func copyBodyWithin(w http.ResponseWriter, body io.Reader, flush bool, wd writeDeadline) (n int64, rerr, werr error) {
	bufp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bufp)
	buf := *bufp
	var rc *http.ResponseController
	if flush {
		rc = http.NewResponseController(w)
	}
	for {
		nr, err := body.Read(buf)
		if nr > 0 {
			nw, err := wd.write(w, buf[:nr])
			n += int64(nw)
			if err != nil {
				return n, nil, err
			}
			if rc != nil {
				if err := wd.flush(rc); err != nil {
					return n, nil, err
				}
			}
		}
		if err == io.EOF {
			return n, nil, nil
		}
		if err != nil {
			return n, err, nil
		}
	}
}

// flushEvery reports whether each chunk of the response must reach the
// client at once: streams of unknown length and server-sent events.
func flushEvery(resp *http.Response) bool {
	if resp.ContentLength == -1 {
		return true
	}
	ct := resp.Header.Get("Content-Type")
	return len(ct) >= 17 && ct[:17] == "text/event-stream"
}

// bodyReadGrace is how long the request body writer of a closed machine
// connection may stay blocked reading the client's body before that read
// is ended.
const bodyReadGrace = time.Second

// awaitBodyWrite waits for the request body writer once the response has
// been copied, and returns its error. Unless the machine answered early it
// has read the whole body, and the writer is done or about to report it.
// One still busy after bodyReadGrace (the machine is not reading, or the
// client stopped sending) is stopped once the response is flushed: the
// connection to the machine cannot carry another request then.
func awaitBodyWrite(w http.ResponseWriter, c *upConn, bodyDone <-chan error) error {
	select {
	case err := <-bodyDone:
		return err
	default:
	}
	_ = http.NewResponseController(w).Flush()
	t := time.NewTimer(bodyReadGrace)
	defer t.Stop()
	select {
	case err := <-bodyDone:
		return err
	case <-t.C:
	}
	stopBodyWrite(w, c, bodyDone)
	return errors.New("the machine answered before reading the whole request body")
}

// stopBodyWrite closes c, which fails the body writer's writes at once, and
// waits for the writer. A read of the client's body that stays blocked for
// bodyReadGrace (a client that stopped sending) is ended with a read
// deadline, as a last resort: set after the body was read to its end, the
// deadline would instead hit the server's background read of the client
// connection and cancel the context of every later request on it.
func stopBodyWrite(w http.ResponseWriter, c *upConn, bodyDone <-chan error) {
	c.close()
	t := time.NewTimer(bodyReadGrace)
	defer t.Stop()
	select {
	case <-bodyDone:
	case <-t.C:
		unblockBodyRead(w)
		<-bodyDone
	}
}

// unblockBodyRead ends a pending read of the client's request body.
func unblockBodyRead(w http.ResponseWriter) {
	_ = http.NewResponseController(w).SetReadDeadline(aLongTimeAgo)
}

// setProxyHeaders sets Via (the machine's, with ours appended) and
// Server-Timing on a response, from one small allocation.
func setProxyHeaders(hdr http.Header, priorVia []string, via, timing string) {
	if len(priorVia) > 0 {
		hdr[hdrVia] = appendVia(priorVia, via)
		hdr[hdrServerTiming] = []string{timing}
		return
	}
	vals := make([]string, 2)
	vals[0], vals[1] = via, timing
	hdr[hdrVia] = vals[0:1:1]
	hdr[hdrServerTiming] = vals[1:2:2]
}

func appendVia(prior []string, ours string) []string {
	if len(prior) == 0 {
		return []string{ours}
	}
	out := make([]string, 0, len(prior)+1)
	return append(append(out, prior...), ours)
}

// serverTiming formats the phases in milliseconds, as the Server-Timing
// header (W3C) wants them.
//
// route is picking the first machine; queue all waiting for a slot; replay
// the time from the first machine's attempt to the last one's (the
// machines that answered fly-replay, and any queue wait for the next);
// upstream the last machine's time to its response head.
func serverTiming(route, queue, wake, replay, upstream, simulated time.Duration) string {
	var buf [160]byte
	b := append(buf[:0], "route;dur="...)
	b = strconv.AppendFloat(b, float64(route)/1e6, 'f', 3, 64)
	b = append(b, ", queue;dur="...)
	b = strconv.AppendFloat(b, float64(queue)/1e6, 'f', 3, 64)
	if wake > 0 {
		b = append(b, ", wake;dur="...)
		b = strconv.AppendFloat(b, float64(wake)/1e6, 'f', 3, 64)
	}
	b = append(b, ", replay;dur="...)
	b = strconv.AppendFloat(b, float64(replay)/1e6, 'f', 3, 64)
	b = append(b, ", upstream;dur="...)
	b = strconv.AppendFloat(b, float64(upstream)/1e6, 'f', 3, 64)
	if simulated > 0 {
		// Only with backhaul.simulated_rtt (demos, tests): the distance
		// the edge waited on purpose, inside upstream, so that load tools
		// can tell it from what the proxy costs (godwit load does).
		b = append(b, ", rtt;dur="...)
		b = strconv.AppendFloat(b, float64(simulated)/1e6, 'f', 3, 64)
	}
	return string(b)
}

func idempotent(method string) bool {
	switch method {
	case "GET", "HEAD", "OPTIONS", "TRACE":
		return true
	}
	return false
}

// isStaleConn reports an error that means the machine closed a pooled
// connection without answering.
func isStaleConn(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || isConnReset(err)
}

func isConnReset(err error) bool {
	var ne *net.OpError
	return errors.As(err, &ne) && !ne.Timeout()
}

func clientIP(remoteAddr string) string {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		return remoteAddr
	}
	return host
}

// fail answers with a proxy error.
func (h *Handler) fail(w http.ResponseWriter, x *exchange, code Code, msg string, err error) {
	if x.slowBody.stalled() {
		// Whatever failed, it failed for want of the client's body.
		code, msg, err = CodeBodyReadTimeout, "the request body stalled: nothing arrived for proxy.body_read_timeout", errBodyReadTimeout
		w.Header().Set("Connection", "close")
	}
	if x.owner && (code == CodeRetriesFailed || code == CodeConnectTimeout) {
		// Nothing reached the machine: the accepting edge may try another.
		w.Header().Set(hdrRefused, refusedUnreachable)
	}
	x.code = code
	x.status = code.Status()
	x.err = err
	writeError(w, code, x.requestID, msg)
}

// finish releases the machine slot and records the request in metrics and
// the access log. It runs even when the response was aborted.
func (h *Handler) finish(r *http.Request, x *exchange) {
	if x.tunnelled {
		defer h.tunnels.done()
	}
	if x.machine != nil {
		x.machine.Release()
	}
	appName, region := "", ""
	if x.app != nil {
		appName = x.app.Name
	}
	if x.machine != nil {
		region = x.machine.Region
	}
	if x.status == 0 {
		x.status = http.StatusBadGateway // aborted mid-response
	}
	d := time.Since(x.start)
	h.metrics.requests.WithLabelValues(appName, region, codeClass(x.status)).Inc()
	h.metrics.duration.WithLabelValues(appName, region).Observe(d.Seconds())
	if x.code != "" {
		h.metrics.proxyErrors.WithLabelValues(appName, string(x.code)).Inc()
	}
	if !h.access && x.code == "" {
		return
	}
	attrs := []slog.Attr{
		slog.String("request_id", x.requestID),
		slog.String("app", appName),
		slog.String("method", r.Method),
		slog.String("host", r.Host),
		slog.String("path", r.URL.Path),
		slog.String("proto", r.Proto),
		slog.Int("status", x.status),
		slog.Int64("bytes", x.bytesOut),
		slog.Float64("duration_ms", float64(d.Microseconds())/1000),
		slog.String("client_ip", clientIP(r.RemoteAddr)),
	}
	if x.machine != nil {
		attrs = append(attrs, slog.String("machine", x.machine.ID), slog.String("region", region))
	}
	if x.code != "" {
		attrs = append(attrs, slog.String("code", string(x.code)))
	}
	if x.err != nil {
		attrs = append(attrs, slog.String("err", x.err.Error()))
	}
	level := slog.LevelInfo
	if x.code != "" {
		level = slog.LevelWarn
	}
	h.log.LogAttrs(context.Background(), level, "request", attrs...)
}

// bufferedConn reads through the hijacked connection's bufio.Reader.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }
