package proxy

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/godwit/godwit/replay"
	"github.com/godwit/godwit/routing"
)

// maxReplays bounds a chain of fly-replay answers, as Fly does (PA02 after
// 10).
const maxReplays = 10

// replayInstruction reports whether resp asks for a replay, and parses the
// instruction: the fly-replay header, or the JSON body form. It reads (at
// most replay.MaxJSONBytes of) the body only for the JSON form; drained
// reports that it read the body to its end.
func replayInstruction(resp *http.Response) (ins replay.Instruction, ok, drained bool, err error) {
	if v := resp.Header["Fly-Replay"]; len(v) > 0 {
		ins, err = replay.ParseHeader(strings.Join(v, ";"))
		if err == nil {
			err = headerExtras(&ins, resp.Header)
		}
		return ins, true, false, err
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, replay.JSONContentType) {
		return ins, false, false, nil
	}
	body, rerr := io.ReadAll(io.LimitReader(resp.Body, replay.MaxJSONBytes+1))
	if rerr != nil {
		return ins, true, false, fmt.Errorf("read the replay instruction: %w", rerr)
	}
	ins, err = replay.ParseJSON(body)
	return ins, true, len(body) <= replay.MaxJSONBytes, err
}

// headerExtras reads the response headers that may come with a
// fly-replay header: the replay cache's (fly-replay-cache,
// fly-replay-cache-ttl-secs, fly-replay-cache-allow-bypass) and
// fly-replay-delete-header, the header forms of the JSON form's cache,
// allow_bypass and transform.delete_headers.
func headerExtras(ins *replay.Instruction, h http.Header) error {
	spec, bypass, err := replay.ParseCacheHeaders(h["Fly-Replay-Cache"], h["Fly-Replay-Cache-Ttl-Secs"], h["Fly-Replay-Cache-Allow-Bypass"])
	if err != nil {
		return err
	}
	ins.Cache, ins.AllowBypass = spec, bypass
	if v := h["Fly-Replay-Delete-Header"]; len(v) > 0 {
		names, err := replay.ParseDeleteHeaders(v)
		if err != nil {
			return err
		}
		ins.Transform.DeleteHeaders = names
	}
	return nil
}

// replayTarget works out where a replay goes: the app (this one, or
// another of the same org) and the constraints of the next pick. from is
// the machine that asked for the replay.
func (h *Handler) replayTarget(app *routing.App, from *routing.Machine, ins replay.Instruction) (*routing.App, routing.Constraints, Code, error) {
	target := app
	if ins.App != "" && ins.App != app.Name {
		target = h.table.App(ins.App)
		if target == nil {
			return nil, routing.Constraints{}, CodeReplayNoApp, fmt.Errorf("fly-replay names app %q, which this edge does not know", ins.App)
		}
		if target.Org != app.Org {
			return nil, routing.Constraints{}, CodeReplayForbidden, fmt.Errorf("fly-replay to app %q of another organization", ins.App)
		}
	}
	var c routing.Constraints
	c.Instance = ins.Instance
	c.PreferInstance = ins.PreferInstance
	if len(ins.Regions) > 0 {
		c.Regions, c.AnyRegion = replay.ExpandRegions(ins.Regions, target.Regions())
	}
	if ins.Elsewhere && target == app {
		c.Exclude = []*routing.Machine{from}
	}
	return target, c, "", nil
}

// finishReplayResponse discards the answer that asked for a replay (it
// never reaches the client) and ends the attempt. The connection goes back
// to the pool when that cannot block or lose anything: the request body
// (if any) was written whole, and the rest of the answer is already read
// or buffered. Otherwise it is closed, which also stops a body writer
// still running; the body keeps every byte it read for the next attempt.
func (h *Handler) finishReplayResponse(r *http.Request, c *upConn, resp *http.Response, drained bool, bodyDone <-chan error, unwatch func() bool) {
	if c == nil { // through the backhaul: ending the stream is all there is
		resp.Body.Close()
		return
	}
	reuse := !resp.Close && r.Context().Err() == nil
	if bodyDone != nil {
		select {
		case err := <-bodyDone:
			reuse = reuse && err == nil
			bodyDone = nil
		default:
			reuse = false
		}
	}
	if reuse {
		buffered := resp.ContentLength >= 0 && int64(c.br.Buffered()) >= resp.ContentLength
		if drained || buffered || r.Method == http.MethodHead || resp.StatusCode == http.StatusNoContent || resp.StatusCode == http.StatusNotModified {
			_, err := io.Copy(io.Discard, resp.Body)
			reuse = err == nil && c.br.Buffered() == 0
		} else {
			reuse = false
		}
	}
	if !reuse {
		c.close() // a pending body write fails at once
	}
	if bodyDone != nil {
		<-bodyDone
	}
	if unwatch() && reuse {
		c.up.put(c, time.Now())
	} else if reuse {
		c.close()
	}
}

// replayFailure answers a replay that cannot go on.
func (h *Handler) replayFailure(w http.ResponseWriter, x *exchange, code Code, msg string, err error) {
	h.metrics.replays.WithLabelValues(x.app.Name, string(code)).Inc()
	h.fail(w, x, code, msg, err)
}

// replayHop is the state of a replay under way: where it came from, what
// it asked for, and how long it may take to reach its target.
type replayHop struct {
	ins     replay.Instruction
	from    *routing.Machine // the machine that answered fly-replay
	fromApp *routing.App
	target  *routing.App
	start   time.Time
	ctx     context.Context // bounds reaching the target (timeout=)
	cancel  context.CancelFunc
	// fellBack is set once the request went back to its replaying machine:
	// it may not ask for another replay.
	fellBack bool
}

func (rh *replayHop) end() {
	if rh != nil && rh.cancel != nil {
		rh.cancel()
	}
}

// canFallBack reports whether a failure to reach the replay's target sends
// the request back to the replaying machine.
func (rh *replayHop) canFallBack() bool {
	return rh != nil && !rh.fellBack && rh.ins.Fallback != replay.FallbackNone
}

// nextHop prepares the request for its next machine after a replay from
// x.machine: the slot is given back, a machine is picked under the
// instruction's constraints, and fly-replay-src is set. It answers the
// client and returns nil when the replay cannot go on.
func (h *Handler) nextHop(w http.ResponseWriter, r *http.Request, x *exchange, fi *forwardInfo, body *replay.Body, prev *replayHop, ins replay.Instruction, perr error) *replayHop {
	prev.end()
	if perr != nil {
		h.log.Warn("invalid fly-replay from machine", "machine", x.machine.ID, "app", x.app.Name, "request_id", x.requestID, "err", perr)
		h.replayFailure(w, x, CodeReplayInvalid, "the machine answered with an invalid fly-replay", perr)
		return nil
	}
	if prev != nil && prev.fellBack {
		h.replayFailure(w, x, CodeReplayLoop, "a request returned by a replay fallback asked for another replay", nil)
		return nil
	}
	if x.replays >= maxReplays {
		h.replayFailure(w, x, CodeReplayLoop, fmt.Sprintf("more than %d fly-replay answers in a chain", maxReplays), nil)
		return nil
	}
	if body != nil {
		detachBody(x.backhaulReq)
		x.backhaulReq = nil
		if err := body.Rewind(); err != nil {
			h.replayFailure(w, x, CodeReplayTooLarge, fmt.Sprintf("the request body is over the %d-byte replay limit (proxy.replay_body_limit)", h.cfg.ReplayBodyLimit), err)
			return nil
		}
	}
	target, c, code, err := h.replayTarget(x.app, x.machine, ins)
	if err != nil {
		h.replayFailure(w, x, code, err.Error(), err)
		return nil
	}
	if h.cache != nil {
		if x.cache == nil {
			x.cache = newCacheScope(r, x.app) // before any transform: the request as the source app got it
		}
		h.cacheReplay(x, fi, x.machine, ins)
	}
	applyTransform(r, ins.Transform)
	rh := &replayHop{ins: ins, from: x.machine, fromApp: x.app, target: target, start: time.Now(), ctx: r.Context()}
	if ins.Timeout > 0 {
		rh.ctx, rh.cancel = context.WithTimeout(r.Context(), ins.Timeout)
	}
	fi.replaySrc = replay.Src{Instance: rh.from.ID, Region: rh.from.Region, T: rh.start, State: ins.State}.String()
	rh.from.Release()
	x.machine = nil
	h.metrics.replays.WithLabelValues(x.app.Name, "replayed").Inc()
	x.app, x.constraints = target, c
	x.replays++
	m, pcode, perr2 := h.pick(rh.ctx, target, x, nil)
	if perr2 != nil {
		reason := replay.ReasonNoCandidate
		if rh.ctx.Err() != nil && r.Context().Err() == nil {
			reason = replay.ReasonTimeout
		}
		if rh.canFallBack() {
			return h.fallBack(w, r, x, fi, rh, reason)
		}
		rh.end()
		h.fail(w, x, pcode, perr2.Error(), perr2)
		return nil
	}
	x.machine = m
	fi.preferredUnavailable = x.preferredUnavailable
	return rh
}

// fallBack sends the request back to the machine that asked for the
// replay (fallback=force_self), or to it first and else any machine of its
// app (prefer_self), with fly-replay-failed saying why. It answers the
// client and returns nil when that fails too.
func (h *Handler) fallBack(w http.ResponseWriter, r *http.Request, x *exchange, fi *forwardInfo, rh *replayHop, reason string) *replayHop {
	rh.end()
	if x.machine != nil {
		x.machine.Release()
		x.machine = nil
	}
	failed := replay.Failed{App: rh.target.Name, ReplaySource: rh.from.ID, Reason: reason, Elapsed: time.Since(rh.start)}
	if rh.ins.Instance != "" {
		failed.Instance = rh.ins.Instance
	}
	if len(rh.ins.Regions) > 0 {
		failed.Region = rh.ins.Regions[0]
	}
	fi.replayFailed = failed.String()
	fi.replaySrc = ""
	h.metrics.replays.WithLabelValues(rh.fromApp.Name, "fallback_"+reason).Inc()
	c := routing.Constraints{Instance: rh.from.ID}
	if rh.ins.Fallback == replay.FallbackPreferSelf {
		c = routing.Constraints{PreferInstance: rh.from.ID}
	}
	x.app, x.constraints = rh.fromApp, c
	next := &replayHop{ins: rh.ins, from: rh.from, fromApp: rh.fromApp, target: rh.fromApp, start: time.Now(), ctx: r.Context(), fellBack: true}
	m, code, err := h.pick(r.Context(), rh.fromApp, x, nil)
	if err != nil {
		h.fail(w, x, code, "the replay failed ("+reason+") and its fallback to the replaying machine failed too: "+err.Error(), err)
		return nil
	}
	x.machine = m
	fi.preferredUnavailable = ""
	return next
}

// applyTransform changes the request as a replay instruction asks before
// it is sent on (the JSON form's transform, and fly-replay-delete-header):
// a new path and query, headers removed, headers replaced. The replay
// package has refused names the proxy owns (framing, hop-by-hop, Fly-*),
// so a transform cannot break the request's framing or spoof our headers.
// The changes stay for any later replay in the chain.
func applyTransform(r *http.Request, t replay.Transform) {
	if t.Path != "" {
		r.RequestURI = t.Path
		if u, err := url.ParseRequestURI(t.Path); err == nil {
			r.URL = u
		}
	}
	for _, name := range t.DeleteHeaders {
		r.Header.Del(name)
	}
	for _, hv := range t.SetHeaders {
		r.Header.Set(hv.Name, hv.Value)
	}
}
