package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/godwit/godwit/backhaul"
	"github.com/godwit/godwit/replay"
	"github.com/godwit/godwit/routing"
)

// Fleet is what the request path needs of the other edges: a way to send
// a request to the node that owns a machine. The backhaul implements it.
type Fleet interface {
	// RoundTrip sends req to the backhaul of the node named owner. An
	// error matching ErrOwnerUnreachable means nothing reached the owner,
	// so the request may go elsewhere at once.
	RoundTrip(req *http.Request, owner string) (*http.Response, error)
}

// ErrOwnerUnreachable is matched (errors.Is) by Fleet errors that mean the
// owner could not be reached at all.
var ErrOwnerUnreachable = errors.New("owner edge unreachable")

// Backhaul headers: what the accepting edge tells the owner, and the
// owner's refusal. They are godwit's own and never reach a machine or a
// client.
const (
	hdrBackhaul = "Godwit-Backhaul" // the machine and the forwardInfo, URL-query encoded
	hdrRefused  = "Godwit-Refused"  // the owner did not send the request to the machine: why
	// hdrUpgraded, on the owner's 200 to an upgrade, says that the machine
	// answered 101 switching to this protocol and that the rest of the
	// stream is the tunnel (HTTP/2 and HTTP/3 cannot carry a 101, nor
	// Connection and Upgrade). The owner drops it from machines' answers.
	hdrUpgraded = "Godwit-Upgraded"
)

// Refusal reasons of an owner (Godwit-Refused). Each means the machine
// never saw the request, so the accepting edge tries another candidate.
const (
	refusedGone        = "gone"        // no such machine on this node
	refusedStopped     = "stopped"     // the machine is not started
	refusedUnhealthy   = "unhealthy"   // failing its checks
	refusedAtHard      = "at_hard"     // at its hard limit
	refusedUnreachable = "unreachable" // connecting to it failed
	refusedDraining    = "draining"    // the owner is shutting down
)

// ownerHold is how long an owner whose backhaul failed is kept out of the
// pick (passive detection) unless a request through it succeeds sooner or
// gossip reports it again.
const ownerHold = 5 * time.Second

// encodeBackhaul writes what the owner needs to forward the request as
// this edge would: the machine, and the headers this edge adds (client IP,
// its region, the request id, replay headers...).
func encodeBackhaul(machine string, contentLength int64, fi *forwardInfo) string {
	v := url.Values{}
	v.Set("machine", machine)
	v.Set("length", strconv.FormatInt(contentLength, 10))
	set := func(k, val string) {
		if val != "" {
			v.Set(k, val)
		}
	}
	set("client_ip", fi.clientIP)
	set("region", fi.region)
	set("request_id", fi.requestID)
	set("proto", fi.proto)
	set("port", fi.port)
	set("ssl", fi.ssl)
	set("via", fi.via)
	set("replay_src", fi.replaySrc)
	set("replay_failed", fi.replayFailed)
	set("cache_status", fi.replayCacheStatus)
	set("preferred_unavailable", fi.preferredUnavailable)
	set("upgrade", fi.upgrade)
	if fi.chunked {
		v.Set("chunked", "1")
	}
	if fi.wake {
		v.Set("wake", "1")
	}
	return v.Encode()
}

// decodeBackhaul reads encodeBackhaul's value. length is the request
// body's length as the client framed it (-1: unknown, chunked), which the
// backhaul's own framing does not carry.
func decodeBackhaul(s string) (machine string, length int64, fi forwardInfo, err error) {
	v, err := url.ParseQuery(s)
	if err != nil {
		return "", 0, fi, fmt.Errorf("bad %s header: %w", hdrBackhaul, err)
	}
	machine = v.Get("machine")
	if machine == "" {
		return "", 0, fi, fmt.Errorf("bad %s header: no machine", hdrBackhaul)
	}
	if length, err = strconv.ParseInt(v.Get("length"), 10, 64); err != nil || length < -1 {
		return "", 0, fi, fmt.Errorf("bad %s header: body length %q", hdrBackhaul, v.Get("length"))
	}
	fi = forwardInfo{
		clientIP: v.Get("client_ip"), region: v.Get("region"), requestID: v.Get("request_id"),
		proto: v.Get("proto"), port: v.Get("port"), ssl: v.Get("ssl"), via: v.Get("via"),
		replaySrc: v.Get("replay_src"), replayFailed: v.Get("replay_failed"),
		replayCacheStatus: v.Get("cache_status"), preferredUnavailable: v.Get("preferred_unavailable"),
		upgrade: v.Get("upgrade"), chunked: v.Get("chunked") == "1", wake: v.Get("wake") == "1",
	}
	return machine, length, fi, nil
}

// otherRunning reports whether app has a machine of this node other than m
// that is started, healthy and below its hard limit.
func otherRunning(app *routing.App, m *routing.Machine) bool {
	for _, o := range app.Machines() {
		if o != m && !o.Remote() && o.Started() && o.Healthy() && o.Band() != routing.AtHard {
			return true
		}
	}
	return false
}

// BackhaulHandler serves requests other edges send for this node's
// machines. The backhaul authenticates the peer; this handler trusts what
// the accepting edge says (which machine, the client's address, its
// region) and forwards the request to the machine exactly, under the
// machine's hard limit, returning its answer raw: a fly-replay answer goes
// back to the accepting edge, which runs the replay.
//
// A protocol upgrade (WebSocket and the like) arrives as a request whose
// body is the client's side of the tunnel to be, empty until then. The
// handler sends the upgrade to the machine on a connection of its own; a
// machine that answers 101 makes the handler answer 200 with
// Godwit-Upgraded and the machine's headers, and then splice the request
// body to the machine and the machine to the response body until either
// ends (ownerTunnel), holding the machine's slot all along. Any other
// answer goes back raw, like any request's.
func (h *Handler) BackhaulHandler() http.Handler {
	return http.HandlerFunc(h.serveBackhaul)
}

func (h *Handler) serveBackhaul(w http.ResponseWriter, r *http.Request) {
	x := exchange{start: time.Now(), owner: true}
	defer h.finish(r, &x)
	id, length, fi, err := decodeBackhaul(r.Header.Get(hdrBackhaul))
	if err != nil {
		x.status = http.StatusBadRequest
		http.Error(w, err.Error(), x.status)
		return
	}
	if fi.upgrade != "" {
		// The stream is the tunnel's: the upgrade request itself has no
		// body (remoteExchange sends none that has).
		if length != 0 {
			x.status = http.StatusBadRequest
			http.Error(w, "an upgrade over the backhaul carries no request body", x.status)
			return
		}
		x.tunnelIn = r.Body
	}
	// The body is framed as the client framed it: none, a length, or
	// chunked (HTTP/3 itself reports an unknown length for all three).
	r.ContentLength = length
	if length == 0 {
		r.Body = http.NoBody
	}
	x.requestID = fi.requestID
	m := h.table.Machine(id)
	if m != nil && !m.Remote() && !m.Started() && fi.wake && h.wakes != nil {
		// The accepting edge found no started machine and asks this
		// owner to wake this one. (Without wake=1, a stopped machine is
		// refused: the accepting edge's view is stale and it has other
		// candidates, Fly's PM11.)
		if app := h.table.App(m.App); app != nil && h.autostarts(app) {
			if h.wakes.RecentlyStopped(m.ID) && otherRunning(app, m) {
				// Fly's PM11: stopped moments ago while this owner
				// runs other machines of the app, so the accepting
				// edge's view is stale. It picks again (and learns
				// that this one is stopped) rather than wake it.
				w.Header().Set(hdrRefused, refusedStopped)
				h.fail(w, &x, CodeOwnerRefused, "machine "+id+" was stopped recently and other machines of its app run", nil)
				return
			}
			if code, err := h.wake(r.Context(), m, &x); err != nil {
				// Answered, not refused: the client learns why (PM03...).
				h.fail(w, &x, code, err.Error(), err)
				return
			}
		}
	}
	refuse := func(reason string) {
		w.Header().Set(hdrRefused, reason)
		h.fail(w, &x, CodeOwnerRefused, "machine "+id+": "+reason, nil)
	}
	switch {
	case h.draining.Load():
		refuse(refusedDraining)
		return
	case m == nil || m.Remote():
		refuse(refusedGone)
		return
	case !m.Started():
		refuse(refusedStopped)
		return
	case !m.Healthy():
		refuse(refusedUnhealthy)
		return
	case !m.TryAcquire():
		refuse(refusedAtHard)
		return
	}
	x.machine = m
	x.app = h.table.App(m.App)
	if x.app == nil {
		refuse(refusedGone)
		return
	}
	r.Host = r.Header.Get("Godwit-Host")
	if r.Host == "" {
		r.Host = r.URL.Host
	}
	h.forward(w, r, &x, &fi)
}

// remoteExchange sends the request to x.machine through its owner and
// returns the owner's answer, which is the machine's (or the owner's
// refusal, on which it tries another candidate: at most
// proxy.connect_retries more, like connect failures). An owner that cannot
// be reached is held out of the pick (passive detection), so following
// requests go elsewhere without waiting for gossip.
//
// An upgrade goes with an upgradeStream as its body; the owner's report
// that the machine switched protocols (Godwit-Upgraded) comes back as the
// machine's 101, whose body is the stream's response body, and forward
// makes it a tunnel (remoteTunnel). Every other answer is the machine's
// (a fly-replay is replayed here, like any). Closing the response's body
// ends the stream, whatever the answer.
func (h *Handler) remoteExchange(w http.ResponseWriter, r *http.Request, x *exchange, fi *forwardInfo, body *replay.Body, hop **replayHop) (*http.Response, step) {
	ctx := r.Context()
	if h.fleet == nil {
		h.fail(w, x, CodeOwnerRefused, "the machine is on another edge and this node has no backhaul", nil)
		return nil, stepAnswered
	}
	if fi.upgrade != "" && body != nil {
		// Its body and the tunnel's bytes would share the stream, and
		// such upgrades (h2c's) are rare: not worth a framing of their own.
		h.fail(w, x, CodeUpgradeRejected, "a protocol upgrade with a request body cannot go to a machine of another edge", nil)
		return nil, stepAnswered
	}
	if hasBody(r) {
		// As in roundTrip: the owner may answer while the body still
		// streams, and net/http's HTTP/1 server must not then discard
		// the rest of it under the backhaul's body writer.
		_ = http.NewResponseController(w).EnableFullDuplex()
	}
	var tried []*routing.Machine
	for attempt := 0; ; attempt++ {
		m := x.machine
		fi.wake = x.wakeRemote
		req, stream, err := h.backhaulRequest(r, m, fi)
		if err != nil {
			h.fail(w, x, CodeOwnerRefused, "could not build the backhaul request", err)
			return nil, stepAnswered
		}
		(*hop).end()
		x.markUpStart()
		if h.simulatedRTT {
			req = req.WithContext(backhaul.WithDelayRecord(req.Context(), &x.simulated))
		}
		resp, err := h.fleet.RoundTrip(req, m.Owner)
		if stream != nil {
			if err != nil {
				stream.end()
			} else {
				resp.Body = &upgradeBody{ReadCloser: resp.Body, stream: stream}
			}
		}
		reason := ""
		switch {
		case err == nil && resp.Header.Get(hdrRefused) == "":
			h.table.MarkOwnerUp(m.Owner)
			x.backhaulReq = req // a fly-replay answer detaches its body before the replay
			if stream != nil {
				switchedResponse(resp)
			}
			return resp, stepResponse
		case err == nil:
			reason = resp.Header.Get(hdrRefused)
			io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			h.applyRefusal(m, reason)
		case x.slowBody.stalled():
			// The stalled body ended the request's context too (HTTP/1):
			// the client is there, and gets 408 PL07.
			h.fail(w, x, CodeBodyReadTimeout, "", err)
			return nil, stepAnswered
		case ctx.Err() != nil:
			x.err, x.status, x.abort = ctx.Err(), 499, true
			return nil, stepAnswered
		case errors.Is(err, ErrOwnerUnreachable):
			reason = "owner unreachable"
			h.table.MarkOwnerDown(m.Owner, ownerHold)
			h.log.Warn("owner edge unreachable; holding its machines out of routing", "owner", m.Owner, "hold", ownerHold, "request_id", x.requestID, "err", err)
		case malformedAttempt(req):
			w.Header().Set("Connection", "close")
			h.fail(w, x, CodeAmbiguousFraming, "the request body's framing is invalid", err)
			return nil, stepAnswered
		default:
			// The stream broke after the owner may have sent the request
			// on: not safe to send again.
			h.fail(w, x, CodeUpstreamFailed, "the backhaul to the machine's edge failed", err)
			return nil, stepAnswered
		}
		h.metrics.backhaulRefusals.WithLabelValues(m.App, reason).Inc()
		m.Release()
		x.machine = nil
		tried = append(tried, m)
		if body != nil {
			detachBody(req)
			if err := body.Rewind(); err != nil {
				h.fail(w, x, CodeOwnerRefused, fmt.Sprintf("the machine's edge refused the request (%s) and its body is over the %d-byte buffer kept for a resend", reason, h.cfg.ReplayBodyLimit), err)
				return nil, stepAnswered
			}
		}
		code := CodeOwnerRefused
		msg := fmt.Sprintf("the edges owning machines of app %q refused the request or could not be reached (last: %s)", x.app.Name, reason)
		if attempt >= h.cfg.ConnectRetries {
			return nil, h.unreachable(w, r, x, fi, hop, code, errors.New(msg))
		}
		next, pcode, perr := h.pick(ctx, x.app, x, tried)
		if perr != nil {
			if pcode == CodeNoMachine {
				return nil, h.unreachable(w, r, x, fi, hop, code, errors.New(msg))
			}
			return nil, h.unreachable(w, r, x, fi, hop, pcode, perr)
		}
		x.machine = next
		if !next.Remote() {
			return nil, stepAgain
		}
	}
}

// applyRefusal updates this node's view of a machine its owner refused,
// until gossip reports it again.
func (h *Handler) applyRefusal(m *routing.Machine, reason string) {
	switch reason {
	case refusedAtHard:
		m.SetRemoteBand(routing.AtHard)
	case refusedUnhealthy, refusedGone:
		m.SetHealthy(false)
	case refusedStopped:
		m.SetStarted(false)
	case refusedDraining:
		h.table.MarkOwnerDown(m.Owner, ownerHold)
	}
}

// switchedResponse turns the owner's report that the machine switched
// protocols (200 with Godwit-Upgraded) back into the machine's 101: its
// headers, plus the Connection and Upgrade the backhaul could not carry.
// Any other answer is left as it is.
func switchedResponse(resp *http.Response) {
	proto := resp.Header.Get(hdrUpgraded)
	if proto == "" || resp.StatusCode != http.StatusOK {
		return
	}
	resp.Header.Del(hdrUpgraded)
	resp.Header.Set("Connection", "Upgrade")
	resp.Header.Set("Upgrade", proto)
	resp.StatusCode = http.StatusSwitchingProtocols
	resp.Status = "101 Switching Protocols"
}

// backhaulRequest is the request to the owner of m: the client's request
// as received (method, target, headers, streaming body) plus what this
// edge adds, in Godwit-Backhaul. Hop-by-hop headers stay here. An upgrade
// (which has no body) gets an upgradeStream as its body, returned too:
// the caller ends it.
func (h *Handler) backhaulRequest(r *http.Request, m *routing.Machine, fi *forwardInfo) (*http.Request, *upgradeStream, error) {
	target := requestTarget(r)
	ctx := r.Context()
	var stream *upgradeStream
	if fi.upgrade != "" {
		stream = newUpgradeStream(ctx)
		ctx = stream.ctx
	}
	req, err := http.NewRequestWithContext(ctx, r.Method, "https://"+m.Owner+target, nil)
	if err != nil {
		if stream != nil {
			stream.end()
		}
		return nil, nil, err
	}
	connection := r.Header["Connection"]
	for k, vv := range r.Header {
		if hopHeaders[k] || (len(connection) > 0 && connectionListed(connection, k)) {
			continue
		}
		req.Header[k] = vv
	}
	if te := r.Header["Te"]; len(te) > 0 && teHasTrailers(te) {
		req.Header["Te"] = []string{"trailers"} // as a direct request keeps it (gRPC)
	}
	length := int64(0)
	if hasBody(r) {
		length = r.ContentLength
	}
	req.Header.Set(hdrBackhaul, encodeBackhaul(m.ID, length, fi))
	req.Header.Set("Godwit-Host", r.Host)
	if hasBody(r) {
		ab := &attemptBody{r: r.Body, want: r.ContentLength}
		req.Body = ab
		req.ContentLength = r.ContentLength
		if r.ContentLength < 0 {
			req.ContentLength = -1
			// Announce the client's trailers; their values (and those it
			// did not announce) exist once its body is read to the end,
			// when attemptBody copies them.
			req.Trailer = make(http.Header, len(r.Trailer))
			for k := range r.Trailer {
				if forwardTrailer(k) {
					req.Trailer[k] = nil
				}
			}
			ab.client, ab.trailer = r, req.Trailer
		}
	}
	req.Header.Del("Content-Length")
	if stream != nil {
		req.Body, _ = stream.body()
		req.GetBody = stream.body // nothing was written to it: a resend starts afresh
		req.ContentLength = -1
	}
	return req, stream, nil
}

// attemptBody is one backhaul attempt's request body. HTTP/2 and HTTP/3
// send bodies from their own goroutine, which may still read after
// RoundTrip returned; detachBody waits for a Read in progress and fails
// later ones, so the client's body has one reader when it is rewound for
// the next attempt. Close leaves the client's body open.
//
// It also does for the backhaul what badBodyReader and writeBody do for a
// machine's connection: it notes a body whose framing failed to parse (the
// client gets 400 PX01, not a backhaul error), and at the end of a chunked
// body copies the client's trailers that may be forwarded.
type attemptBody struct {
	mu      sync.Mutex
	r       io.Reader     // nil once detached
	client  *http.Request // with a chunked body: its Trailer is read at the end
	trailer http.Header   // the backhaul request's
	want    int64         // the body's Content-Length; -1: unknown
	read    int64         // bytes read so far
	bad     bool          // the client's body was malformed
}

var errAttemptOver = errors.New("backhaul attempt over: the request body goes to another machine")

func (b *attemptBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.r == nil {
		return 0, errAttemptOver
	}
	n, err := b.r.Read(p)
	b.read += int64(n)
	switch {
	case err == io.EOF && b.want >= 0 && b.read < b.want:
		b.bad = true // ended cleanly but short (see writeBody)
	case err == io.EOF && b.client != nil:
		for k, vv := range b.client.Trailer {
			if forwardTrailer(k) {
				b.trailer[k] = vv
			}
		}
	case err != nil && malformedBody(err):
		b.bad = true
	}
	return n, err
}

// malformedAttempt reports whether req's body (an attemptBody) failed
// because the client's body was malformed.
func malformedAttempt(req *http.Request) bool {
	b, ok := req.Body.(*attemptBody)
	if !ok {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.bad
}

func (b *attemptBody) Close() error { return nil }

// detachBody ends the transport's access to req's body (an attemptBody).
func detachBody(req *http.Request) {
	if req == nil {
		return
	}
	if b, ok := req.Body.(*attemptBody); ok {
		b.mu.Lock()
		b.r = nil
		b.mu.Unlock()
	}
}

// upgradeStream is the client's side of a tunnel to a machine of another
// edge: the body of the backhaul request of an upgrade, which streams
// while the owner's response (the machine's side) arrives.
//
// It stays empty until the owner reports the machine's 101 and
// remoteTunnel writes the client's bytes into it, so any attempt may be
// resent. Each attempt's body is a pipe of its own (body, the request's
// GetBody): the transport may still read an attempt's body after
// RoundTrip gave up on it, and such a stale reader must never take bytes
// meant for the tunnel, so the pipe of an attempt that was superseded is
// closed.
type upgradeStream struct {
	ctx    context.Context    // the backhaul request's
	cancel context.CancelFunc // resets the stream

	mu    sync.Mutex
	pr    *io.PipeReader // the last attempt's body: the transport reads it
	pw    *io.PipeWriter // the tunnel writes the client's bytes to it
	ended bool
}

var errStreamEnded = errors.New("the backhaul stream of the upgrade has ended")

func newUpgradeStream(parent context.Context) *upgradeStream {
	s := &upgradeStream{}
	s.ctx, s.cancel = context.WithCancel(parent)
	return s
}

// body returns the body of a new attempt and closes the previous one's.
func (s *upgradeStream) body() (io.ReadCloser, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return nil, errStreamEnded
	}
	if s.pw != nil {
		s.pw.CloseWithError(errAttemptOver) // what a stale reader gets
	}
	s.pr, s.pw = io.Pipe()
	return s.pr, nil
}

// writer is where the client's bytes go: the body of the last attempt,
// the one whose answer arrived. Closing it (nil error) ends the request
// body, which the owner passes on as a half-close toward the machine.
func (s *upgradeStream) writer() *io.PipeWriter {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pw
}

// end resets the stream (the owner's handler sees its request end) and
// fails every read and write of the pipe, so that the transport's reader
// of the body and the tunnel's writer both return. It is idempotent, and
// safe at any time from any goroutine.
func (s *upgradeStream) end() {
	s.mu.Lock()
	s.ended = true
	pr, pw := s.pr, s.pw
	s.mu.Unlock()
	if pr != nil {
		pw.CloseWithError(errStreamEnded)
		pr.CloseWithError(errStreamEnded)
	}
	s.cancel()
}

// Close ends the stream (for Handler.tunnels at shutdown).
func (s *upgradeStream) Close() error {
	s.end()
	return nil
}

// upgradeBody is the body of the owner's answer to an upgrade. Closing
// it ends the stream: whatever the answer was, that is the end of the
// exchange with the owner.
type upgradeBody struct {
	io.ReadCloser
	stream *upgradeStream
}

func (b *upgradeBody) Close() error {
	b.stream.end()
	return b.ReadCloser.Close()
}
