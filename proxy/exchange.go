package proxy

import (
	"errors"
	"net/http"
	"time"

	"github.com/godwit/godwit/replay"
)

// step says how one attempt to get a machine's answer ended.
type step uint8

const (
	stepResponse step = iota // a response head arrived
	stepAnswered             // the client has been answered (an error): stop
	stepAgain                // the request moved to another machine (a fallback): try again
)

// errMovedRemote: connect's retry picked a machine another node owns; the
// caller sends the request over the backhaul instead.
var errMovedRemote = errors.New("the retry picked a remote machine")

// alwaysWatched is the unwatch of an exchange with nothing to unwatch.
func alwaysWatched() bool { return true }

// localExchange sends the request to x.machine, one of this node's own,
// on a pooled or new connection, and reads the response head. Connect
// failures are retried on other machines (connect); a replay's failure to
// reach its target may fall back to the replaying machine (*hop changes).
func (h *Handler) localExchange(w http.ResponseWriter, r *http.Request, x *exchange, fi *forwardInfo, hop **replayHop) (c *upConn, resp *http.Response, bodyDone chan error, unwatch func() bool, st step) {
	ctx := r.Context()
	connectCtx := ctx
	if *hop != nil {
		connectCtx = (*hop).ctx // a replay's timeout= bounds reaching its target
	}
	c, reused, code, err := h.connect(connectCtx, x, idempotent(r.Method) && !hasBody(r))
	if err == errMovedRemote {
		return nil, nil, nil, nil, stepAgain // a connect retry picked another node's machine
	}
	if err != nil {
		return nil, nil, nil, nil, h.unreachable(w, r, x, fi, hop, code, err)
	}
	if reused && fi.upgrade != "" {
		// An upgrade may become a tunnel: it gets a connection of its
		// own, never a pooled one.
		c.up.put(c, time.Now())
		if c, err = c.up.dial(connectCtx); err != nil {
			h.fail(w, x, CodeRetriesFailed, "could not connect to the machine", err)
			return nil, nil, nil, nil, stepAnswered
		}
		reused = false
	}
	(*hop).end() // the target is reached: the timeout no longer applies
	x.markUpStart()
	resp, bodyDone, unwatch, err = h.roundTrip(ctx, w, r, c, fi)
	if err != nil && reused && bodyDone == nil && ctx.Err() == nil && idempotent(r.Method) && isStaleConn(err) {
		// The machine closed this idle connection as we wrote to it,
		// before reading the request: it never saw it. Once more on a
		// new one.
		c.close()
		c, err = h.upstreamFor(x.machine).dial(ctx)
		if err == nil {
			resp, bodyDone, unwatch, err = h.roundTrip(ctx, w, r, c, fi)
		}
	}
	if err != nil {
		if c != nil {
			c.close()
		}
		if bodyDone != nil {
			stopBodyWrite(w, c, bodyDone)
		}
		if x.slowBody.timedOut() { // known once the body writer has ended
			h.fail(w, x, CodeBodyReadTimeout, "", err) // fail says why
			return nil, nil, nil, nil, stepAnswered
		}
		if ctx.Err() != nil {
			x.err = ctx.Err()
			x.status, x.abort = 499, true // client closed request (nginx's convention, logs only)
			return nil, nil, nil, nil, stepAnswered
		}
		if c != nil && c.badBody { // known once the body writer has ended
			w.Header().Set("Connection", "close")
			h.fail(w, x, CodeAmbiguousFraming, "the request body's framing is invalid", err)
			return nil, nil, nil, nil, stepAnswered
		}
		if c != nil && c.bodyErr != nil {
			// The client's body broke off (it went away mid-upload): not
			// the machine's fault, and no one to answer.
			w.Header().Set("Connection", "close")
			x.err, x.status, x.abort = c.bodyErr, 499, true
			return nil, nil, nil, nil, stepAnswered
		}
		if h.markFailing != nil && isConnReset(err) {
			h.markFailing(x.machine.ID, err)
		}
		h.fail(w, x, CodeUpstreamFailed, "the machine closed the connection before a complete response", err)
		return nil, nil, nil, nil, stepAnswered
	}
	return c, resp, bodyDone, unwatch, stepResponse
}

// unreachable handles a machine that could not be reached at all (every
// candidate failed): a replay with a fallback goes back to its replaying
// machine; otherwise the client gets the error.
func (h *Handler) unreachable(w http.ResponseWriter, r *http.Request, x *exchange, fi *forwardInfo, hop **replayHop, code Code, err error) step {
	if (*hop).canFallBack() && r.Context().Err() == nil {
		reason := replay.ReasonRetriesExhausted
		if (*hop).ctx.Err() != nil {
			reason = replay.ReasonTimeout
		}
		if *hop = h.fallBack(w, r, x, fi, *hop, reason); *hop == nil {
			return stepAnswered
		}
		return stepAgain
	}
	if r.Context().Err() != nil {
		x.err = r.Context().Err()
		x.status, x.abort = 499, true
		return stepAnswered
	}
	h.fail(w, x, code, err.Error(), err)
	return stepAnswered
}

// markUpStart records when the request was sent to its current machine.
func (x *exchange) markUpStart() {
	x.lastUpStart = time.Now()
	if x.firstUpStart.IsZero() {
		x.firstUpStart = x.lastUpStart
	}
}
