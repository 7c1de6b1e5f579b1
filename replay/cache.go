package replay

import (
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// MaxSessionBytes bounds a session value (cookie or header) whose replays
// may be cached, so a client cannot make an entry's key arbitrarily large.
// The caller does not cache a request with a longer value; Put ignores such
// a key as well.
const MaxSessionBytes = 512

// CacheKey identifies one cached replay. App is the app the request was
// routed to, Host the request's host in lower case without a port (Fly
// never shares a cache between hostnames). For a path-based entry Path is
// the Pattern.Path of fly-replay-cache ("" for "/") and Session is ""; for
// a session-based entry Path is the matched SessionRule's Pattern.Path and
// Session the request's cookie or header value.
type CacheKey struct{ App, Host, Path, Session string }

// CacheEntry is a cached replay: where a request that matches the key goes
// without visiting the source machine.
type CacheEntry struct {
	// Instruction is a cacheable instruction; only its routing fields
	// (Regions, Instance, PreferInstance, App, Elsewhere) are kept by Put.
	Instruction Instruction
	// From is the ID of the machine that answered fly-replay, which
	// Elsewhere excludes.
	From string
	// AllowBypass lets a client skip the entry with
	// fly-replay-cache-control: skip.
	AllowBypass bool
	// Expires is when the entry stops matching.
	Expires time.Time
}

// Cache is the replay cache of an edge: cacheable fly-replay instructions,
// so that later requests go straight to the replay target. It holds two
// kinds of entries. A path-based entry (Session == "") is set from a
// response's fly-replay-cache and matches every request of its app and host
// at or below its path; Lookup picks the longest. A session-based entry is
// set for a request that matched a SessionRule and is found by its exact
// key with LookupSession.
//
// A Cache is safe for concurrent use. Lookups share a read lock and do not
// allocate; when nothing is cached they return before touching the lock, so
// an edge whose apps never cache pays an atomic load per request. An
// expired entry is a miss; the lookup that finds one removes it afterwards
// under the write lock, and entries never looked up again leave by
// eviction.
//
// Memory is bounded by maxEntries: when the cache is full, Put evicts the
// entry inserted (or replaced) longest ago. An entry costs about 450 bytes
// (a 368-byte node holding key, entry and list links, and its map slot)
// plus its strings, which Put copies so that an entry never pins the
// request or response it came from: about 550 bytes measured for a typical
// entry, so 10,000 entries take some 5.5 MB. A session value adds at most
// MaxSessionBytes.
//
// A nil *Cache is a disabled cache.
type Cache struct {
	max int
	n   atomic.Int64 // entries, for the lock-free empty check; written under mu

	mu       sync.RWMutex
	paths    map[hostKey]map[string]*cacheNode // path-based, by (app, host) then path
	sessions map[CacheKey]*cacheNode           // session-based
	order    cacheNode                         // sentinel of the insertion-order list: next is the oldest
}

// hostKey is the (app, host) part of a path-based key.
type hostKey struct{ app, host string }

// cacheNode is one entry and its links in the insertion-order list.
type cacheNode struct {
	key        CacheKey
	entry      CacheEntry
	prev, next *cacheNode // nil when the node is not in the cache
}

// NewCache returns a cache of at most maxEntries entries. With maxEntries
// <= 0 the cache is disabled: Put does nothing and every lookup misses.
func NewCache(maxEntries int) *Cache {
	c := &Cache{
		max:      max(maxEntries, 0),
		paths:    make(map[hostKey]map[string]*cacheNode),
		sessions: make(map[CacheKey]*cacheNode),
	}
	c.order.prev, c.order.next = &c.order, &c.order
	return c
}

// Put inserts the entry for k, or replaces the one there; a replaced entry
// counts as newly inserted for eviction. A full cache first evicts its
// oldest entry. The key's strings and the instruction's routing fields are
// copied; the other fields of the instruction (state, transform, cache,
// unknown keys) are dropped, as a cached replay cannot carry them. A key
// with a Session longer than MaxSessionBytes is ignored.
func (c *Cache) Put(k CacheKey, e CacheEntry) {
	if c == nil || c.max == 0 || len(k.Session) > MaxSessionBytes {
		return
	}
	k = CacheKey{strings.Clone(k.App), strings.Clone(k.Host), strings.Clone(k.Path), strings.Clone(k.Session)}
	e.Instruction = routingCopy(e.Instruction)
	e.From = strings.Clone(e.From)

	c.mu.Lock()
	defer c.mu.Unlock()
	if n := c.find(k); n != nil {
		n.entry = e
		c.unlink(n)
		c.pushNewest(n)
		return
	}
	if int(c.n.Load()) >= c.max {
		c.remove(c.order.next)
	}
	n := &cacheNode{key: k, entry: e}
	if k.Session != "" {
		c.sessions[k] = n
	} else {
		hk := hostKey{k.App, k.Host}
		m := c.paths[hk]
		if m == nil {
			m = make(map[string]*cacheNode)
			c.paths[hk] = m
		}
		m[k.Path] = n
	}
	c.pushNewest(n)
	c.n.Add(1)
}

// Lookup finds the path-based entry for a request of app to host (lower
// case, no port) and path (no query): of the unexpired entries whose Path
// is path or a segment-wise ancestor of it ("/api" covers "/api/v1" but not
// "/apis"; "" covers every path), the one with the longest Path. It
// returns the entry's key too, for Delete.
//
// The returned Instruction shares its Regions with the cache: do not
// modify it.
func (c *Cache) Lookup(app, host, path string, now time.Time) (CacheKey, CacheEntry, bool) {
	if c == nil || c.n.Load() == 0 {
		return CacheKey{}, CacheEntry{}, false
	}
	var hit, stale *cacheNode
	var k CacheKey
	var e CacheEntry
	c.mu.RLock()
	if m := c.paths[hostKey{app, host}]; m != nil {
		// Probe path, then each ancestor, longest first: at most one map
		// lookup per segment, on substrings of path.
		for p := path; ; p = parent(p) {
			if n := m[p]; n != nil {
				if now.Before(n.entry.Expires) {
					hit = n
					k, e = n.key, n.entry
					break
				}
				if stale == nil {
					stale = n
				}
			}
			if p == "" {
				break
			}
		}
	}
	c.mu.RUnlock()
	if stale != nil {
		c.removeExpired(stale, now)
	}
	return k, e, hit != nil
}

// LookupSession finds the unexpired session-based entry with key k. A key
// with an empty Session never matches: path-based entries are found only
// by Lookup.
//
// The returned Instruction shares its Regions with the cache: do not
// modify it.
func (c *Cache) LookupSession(k CacheKey, now time.Time) (CacheEntry, bool) {
	if c == nil || k.Session == "" || c.n.Load() == 0 {
		return CacheEntry{}, false
	}
	c.mu.RLock()
	n := c.sessions[k]
	var e CacheEntry
	if n != nil {
		e = n.entry
	}
	c.mu.RUnlock()
	if n == nil {
		return CacheEntry{}, false
	}
	if !now.Before(e.Expires) {
		c.removeExpired(n, now)
		return CacheEntry{}, false
	}
	return e, true
}

// Delete removes the entry with exactly key k (path-based when k.Session
// is "") and reports whether there was one. It serves a session
// invalidation, and dropping an entry whose replay target has gone.
func (c *Cache) Delete(k CacheKey) bool {
	if c == nil || c.n.Load() == 0 {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.find(k)
	if n == nil {
		return false
	}
	c.remove(n)
	return true
}

// InvalidatePath removes every path-based entry of app and host that
// Lookup could match for path, expired or not: not only the longest, so
// that the next request for path reaches the source app (Fly's
// fly-replay-cache: invalidate). It returns how many it removed.
func (c *Cache) InvalidatePath(app, host, path string) int {
	if c == nil || c.n.Load() == 0 {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.paths[hostKey{app, host}]
	removed := 0
	for p := path; m != nil; p = parent(p) {
		if n := m[p]; n != nil {
			c.remove(n)
			removed++
		}
		if p == "" {
			break
		}
	}
	return removed
}

// Len returns the number of entries, counting expired ones not yet
// removed.
func (c *Cache) Len() int {
	if c == nil {
		return 0
	}
	return int(c.n.Load())
}

// parent returns p without its last segment ("/a/b" → "/a", "/a/" → "/a",
// "/a" → ""), so probing path and its parents visits exactly the prefixes
// path is under.
func parent(p string) string {
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return ""
	}
	return p[:i]
}

// routingCopy returns the fields of in that route a cached replay, copied
// so the entry does not keep the response header or body they were parsed
// from alive.
func routingCopy(in Instruction) Instruction {
	out := Instruction{
		Instance:       strings.Clone(in.Instance),
		PreferInstance: strings.Clone(in.PreferInstance),
		App:            strings.Clone(in.App),
		Elsewhere:      in.Elsewhere,
	}
	if len(in.Regions) > 0 {
		out.Regions = make([]string, len(in.Regions))
		for i, r := range in.Regions {
			out.Regions[i] = strings.Clone(r)
		}
	}
	return out
}

// find returns the node of key k, or nil. c.mu must be held.
func (c *Cache) find(k CacheKey) *cacheNode {
	if k.Session != "" {
		return c.sessions[k]
	}
	return c.paths[hostKey{k.App, k.Host}][k.Path]
}

// removeExpired removes n if it is still in the cache and still expired at
// now: between a lookup's read lock and this write lock, another goroutine
// may have removed it or replaced its entry.
func (c *Cache) removeExpired(n *cacheNode, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n.next != nil && !now.Before(n.entry.Expires) {
		c.remove(n)
	}
}

// remove takes n out of the maps and the list. c.mu must be held.
func (c *Cache) remove(n *cacheNode) {
	k := n.key
	if k.Session != "" {
		delete(c.sessions, k)
	} else {
		hk := hostKey{k.App, k.Host}
		m := c.paths[hk]
		delete(m, k.Path)
		if len(m) == 0 {
			delete(c.paths, hk)
		}
	}
	c.unlink(n)
	c.n.Add(-1)
}

// pushNewest links n at the newest end of the list. c.mu must be held.
func (c *Cache) pushNewest(n *cacheNode) {
	last := c.order.prev
	n.prev, n.next = last, &c.order
	last.next = n
	c.order.prev = n
}

// unlink takes n out of the list. c.mu must be held.
func (c *Cache) unlink(n *cacheNode) {
	n.prev.next = n.next
	n.next.prev = n.prev
	n.prev, n.next = nil, nil
}

// SessionRule is a [[app.http_service.http_options.replay_cache]] rule of
// the app's configuration: requests under Pattern that carry the named
// cookie (or header) have their replays cached per session value, so one
// user's requests keep going to the machine that owns their session.
type SessionRule struct {
	Pattern     Pattern
	TTL         time.Duration
	Header      bool   // the session is a request header's value; false: a cookie's
	Name        string // cookie or header name
	AllowBypass bool
}

// MatchRule returns the rule that governs a request for host (lower case,
// no port) and path (no query): of the rules whose Pattern matches, the one
// with the longest Pattern.Path, as Fly documents; of equally long ones, one
// that names the host beats a host-less one, and otherwise the first wins.
// It returns nil when no rule matches, and otherwise a pointer into rules.
func MatchRule(rules []SessionRule, host, path string) *SessionRule {
	var best *SessionRule
	for i := range rules {
		r := &rules[i]
		if !r.Pattern.Matches(host, path) {
			continue
		}
		if best == nil || len(r.Pattern.Path) > len(best.Pattern.Path) ||
			len(r.Pattern.Path) == len(best.Pattern.Path) && r.Pattern.Host != "" && best.Pattern.Host == "" {
			best = r
		}
	}
	return best
}
