package proxy

import (
	"context"
	"net/http"
	"strings"
	"time"

	"github.com/godwit/godwit/replay"
	"github.com/godwit/godwit/routing"
)

// Replay-cache headers: the client's opt-out, and what the replay target
// is told about how its request came.
const (
	hdrReplayCacheControl = "Fly-Replay-Cache-Control" // from clients: "skip"
	hdrReplayCacheStatus  = "Fly-Replay-Cache-Status"  // to the target: hit, miss or bypass
)

// Values of fly-replay-cache-status (and of the status label of
// godwit_replay_cache_requests_total).
const (
	cacheHit    = "hit"    // served from the cache; the source app never saw it
	cacheMiss   = "miss"   // the source app answered fly-replay
	cacheBypass = "bypass" // the client skipped the cache (fly-replay-cache-control: skip)
)

// cacheScope is where a request stands with the replay cache: the keys its
// replays are found and stored under. It is kept for the whole request so
// a later hop's "fly-replay-cache: invalidate" drops what the first hop
// stored, whatever the request's path by then.
type cacheScope struct {
	app        *routing.App // the app the request came for: the source of cached replays
	host, path string       // lower-case host without port; path without query
	rule       *replay.SessionRule
	session    string // the rule's cookie or header value; "" when absent or too long to cache
	skip       bool   // the client sent fly-replay-cache-control: skip
}

func (sc *cacheScope) sessionKey() replay.CacheKey {
	return replay.CacheKey{App: sc.app.Name, Host: sc.host, Path: sc.rule.Pattern.Path, Session: sc.session}
}

// newCacheScope reads what the replay cache needs from r, a request for app.
func newCacheScope(r *http.Request, app *routing.App) *cacheScope {
	sc := &cacheScope{app: app, host: cacheHost(r.Host), path: r.URL.Path}
	if v := r.Header[hdrReplayCacheControl]; len(v) > 0 {
		sc.skip = strings.EqualFold(strings.TrimSpace(v[0]), "skip")
	}
	if rule := replay.MatchRule(app.SessionRules, sc.host, sc.path); rule != nil {
		sc.rule = rule
		if s := sessionValue(r, rule); len(s) <= replay.MaxSessionBytes {
			sc.session = s
		}
	}
	return sc
}

// sessionValue is the request's session under rule: its cookie's or
// header's value, "" when it has none.
func sessionValue(r *http.Request, rule *replay.SessionRule) string {
	if rule.Header {
		return r.Header.Get(rule.Name)
	}
	c, err := r.Cookie(rule.Name)
	if err != nil {
		return ""
	}
	return c.Value
}

// cacheHost is host in lower case without its port, as cache keys use it:
// Fly never shares a replay cache between hostnames, and a port does not
// make another one.
func cacheHost(host string) string {
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.Contains(host[i:], "]") {
		host = host[:i]
	}
	return strings.ToLower(host)
}

// cachedReplay looks up a cached replay for the request: the session's
// entry first (a rule governs the request and it carries the session),
// then the longest fly-replay-cache pattern. A hit the client skips (its
// entry allows bypass) is no hit.
func (h *Handler) cachedReplay(sc *cacheScope, now time.Time) (replay.CacheEntry, bool) {
	e, ok := replay.CacheEntry{}, false
	if sc.session != "" {
		e, ok = h.cache.LookupSession(sc.sessionKey(), now)
	}
	if !ok {
		_, e, ok = h.cache.Lookup(sc.app.Name, sc.host, sc.path, now)
	}
	if ok && sc.skip && e.AllowBypass {
		return e, false
	}
	return e, ok
}

// pickCached picks a machine for the target of a request's cached
// replay, so the request goes there straight, without visiting the source
// app: x.app and x.constraints become the replay's. It returns a nil
// machine and no error, changing nothing, when the entry's target cannot
// be used (its app is gone, or no machine matches): the cache is advisory,
// so the request then goes to the source app, whose answer refreshes the
// entry. Waiting for a machine at capacity fails as it would for the
// replay itself.
func (h *Handler) pickCached(ctx context.Context, x *exchange, e replay.CacheEntry) (*routing.Machine, Code, error) {
	sc := x.cache
	from := sc.app.Machine(e.From)
	target, c, _, err := h.replayTarget(sc.app, from, e.Instruction)
	if err != nil {
		return nil, "", nil
	}
	if from == nil {
		c.Exclude = nil // the machine that asked is gone: nothing to avoid
	}
	client := x.constraints
	x.app, x.constraints = target, c
	m, code, err := h.pick(ctx, target, x, nil)
	if code == CodeNoMachine || code == CodeInstanceUnavailable {
		x.app, x.constraints, x.preferredUnavailable = sc.app, client, ""
		return nil, "", nil
	}
	return m, code, err
}

// cacheReplay updates the replay cache after a machine answered fly-replay
// with ins, and sets the fly-replay-cache-status the next machine gets. An
// invalidation (from any hop) drops the request's entries. Otherwise only
// the source app's own answer (the first hop, not served from the cache)
// is stored: under the session rule that governs the request, and under
// its fly-replay-cache pattern.
func (h *Handler) cacheReplay(x *exchange, fi *forwardInfo, from *routing.Machine, ins replay.Instruction) {
	sc := x.cache
	if ins.Cache.Invalidate {
		n := 0
		if sc.session != "" && h.cache.Delete(sc.sessionKey()) {
			n++
		}
		n += h.cache.InvalidatePath(sc.app.Name, sc.host, sc.path)
		h.metrics.cacheInvalidations.WithLabelValues(sc.app.Name).Add(float64(n))
	}
	if x.replays > 0 || fi.replayCacheStatus == cacheHit {
		return
	}
	status := cacheMiss
	if sc.skip {
		status = cacheBypass
	}
	fi.replayCacheStatus = status
	h.metrics.cacheRequests.WithLabelValues(sc.app.Name, status).Inc()
	if ins.Cache.Invalidate {
		return
	}
	wantsPath := ins.Cache.Prefix != ""
	if !ins.Cacheable() {
		if wantsPath {
			h.log.Warn("fly-replay-cache ignored: a cached replay cannot carry state, a transform, timeout or fallback",
				"app", sc.app.Name, "machine", from.ID, "request_id", x.requestID)
		}
		return
	}
	now := time.Now()
	if sc.session != "" {
		h.cache.Put(sc.sessionKey(), replay.CacheEntry{Instruction: ins, From: from.ID, AllowBypass: sc.rule.AllowBypass, Expires: now.Add(sc.rule.TTL)})
		h.metrics.cacheStores.WithLabelValues(sc.app.Name, "session").Inc()
	}
	if !wantsPath {
		return
	}
	p, err := replay.ParsePattern("fly-replay-cache", ins.Cache.Prefix)
	if err != nil || !p.Matches(sc.host, sc.path) {
		h.log.Warn("fly-replay-cache ignored: its pattern does not match the request", "pattern", ins.Cache.Prefix,
			"host", sc.host, "path", sc.path, "app", sc.app.Name, "machine", from.ID, "request_id", x.requestID)
		return
	}
	k := replay.CacheKey{App: sc.app.Name, Host: sc.host, Path: p.Path}
	h.cache.Put(k, replay.CacheEntry{Instruction: ins, From: from.ID, AllowBypass: ins.AllowBypass, Expires: now.Add(ins.Cache.TTL)})
	h.metrics.cacheStores.WithLabelValues(sc.app.Name, "path").Inc()
}
