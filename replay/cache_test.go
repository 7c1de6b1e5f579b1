package replay

import (
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// t0 is the tests' clock: entries expire relative to it and lookups pass
// it (or a later time) as now, so no test sleeps.
var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// entry returns an entry that replays to region and expires ttl after t0.
func entry(region string, ttl time.Duration) CacheEntry {
	return CacheEntry{Instruction: Instruction{Regions: []string{region}}, Expires: t0.Add(ttl)}
}

// region returns the single region an entry replays to, for comparisons.
func region(e CacheEntry) string {
	if len(e.Instruction.Regions) != 1 {
		return fmt.Sprint(e.Instruction.Regions)
	}
	return e.Instruction.Regions[0]
}

// checkCache verifies the cache's internal consistency: every listed node
// is in its map, the maps hold nothing else, no (app, host) map is empty,
// and the count is right and within the cap.
func checkCache(t *testing.T, c *Cache) {
	t.Helper()
	c.mu.RLock()
	defer c.mu.RUnlock()
	listed := 0
	for n := c.order.next; n != &c.order; n = n.next {
		listed++
		if n.next.prev != n {
			t.Fatalf("broken list link at %+v", n.key)
		}
		if c.find(n.key) != n {
			t.Fatalf("listed node %+v is not in its map", n.key)
		}
	}
	mapped := len(c.sessions)
	for hk, m := range c.paths {
		if len(m) == 0 {
			t.Fatalf("empty path map left for %+v", hk)
		}
		mapped += len(m)
	}
	if listed != mapped || listed != c.Len() {
		t.Fatalf("list holds %d, maps %d, Len %d", listed, mapped, c.Len())
	}
	if c.Len() > c.max {
		t.Fatalf("Len %d above the cap %d", c.Len(), c.max)
	}
}

func TestCacheLookup(t *testing.T) {
	c := NewCache(100)
	for _, p := range []struct{ app, host, path, region string }{
		{"a", "h", "", "root"},
		{"a", "h", "/api", "api"},
		{"a", "h", "/api/v1", "v1"},
		{"a", "h", "/api/v1/users", "users"},
		{"a", "h2", "/api", "h2-api"},
		{"b", "h", "/api", "b-api"},
		{"a", "only", "/x", "only-x"},
	} {
		c.Put(CacheKey{App: p.app, Host: p.host, Path: p.path}, entry(p.region, time.Minute))
	}
	c.Put(CacheKey{App: "a", Host: "only", Path: "/y", Session: "s"}, entry("session", time.Minute))
	checkCache(t, c)

	tests := []struct {
		name, app, host, path string
		want, wantPath        string // want "" is a miss
	}{
		{"exact", "a", "h", "/api", "api", "/api"},
		{"child", "a", "h", "/api/x", "api", "/api"},
		{"trailing slash", "a", "h", "/api/", "api", "/api"},
		{"longest wins", "a", "h", "/api/v1/users/7", "users", "/api/v1/users"},
		{"middle", "a", "h", "/api/v1/groups", "v1", "/api/v1"},
		{"not a segment", "a", "h", "/apis", "root", ""},
		{"not a segment deeper", "a", "h", "/api/v1x", "api", "/api"},
		{"root matches all", "a", "h", "/", "root", ""},
		{"root matches other paths", "a", "h", "/other/deep/path", "root", ""},
		{"empty path", "a", "h", "", "root", ""},
		{"double slash", "a", "h", "/api//v1", "api", "/api"},
		{"other host", "a", "h2", "/api/x", "h2-api", "/api"},
		{"other host no root", "a", "h2", "/x", "", ""},
		{"other app", "b", "h", "/api", "b-api", "/api"},
		{"other app no root", "b", "h", "/", "", ""},
		{"unknown app", "c", "h", "/api", "", ""},
		{"unknown host", "a", "h3", "/api", "", ""},
		{"session entry not found", "a", "only", "/y", "", ""},
		{"host-only entry", "a", "only", "/x/1", "only-x", "/x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, e, ok := c.Lookup(tt.app, tt.host, tt.path, t0)
			if tt.want == "" {
				if ok {
					t.Fatalf("Lookup(%q, %q, %q) hit %+v %v, want a miss", tt.app, tt.host, tt.path, k, region(e))
				}
				return
			}
			want := CacheKey{App: tt.app, Host: tt.host, Path: tt.wantPath}
			if !ok || region(e) != tt.want || k != want {
				t.Fatalf("Lookup(%q, %q, %q) = %+v, %v, %v; want %+v, %v", tt.app, tt.host, tt.path, k, region(e), ok, want, tt.want)
			}
		})
	}
}

// TestCacheLookupAgreesWithUnder checks the ancestor probing against a
// plain scan with under, the definition of "at or below".
func TestCacheLookupAgreesWithUnder(t *testing.T) {
	stored := []string{"", "/a", "/a/b", "/a/b/", "/a//", "/ab", "a", "/a/b/c", "/x/y"}
	paths := []string{"", "/", "/a", "/a/", "/a/b", "/a/b/", "/a/b/c", "/a/bc", "/a//b", "/ab/c", "a", "a/b", "/x", "/x/y/z", "//"}
	c := NewCache(100)
	for _, p := range stored {
		c.Put(CacheKey{App: "a", Host: "h", Path: p}, entry(p, time.Minute))
	}
	for _, path := range paths {
		want, found := "", false
		for _, p := range stored {
			if under(path, p) && (!found || len(p) > len(want)) {
				want, found = p, true
			}
		}
		k, _, ok := c.Lookup("a", "h", path, t0)
		if ok != found || k.Path != want {
			t.Errorf("Lookup(%q) = %q, %v; scanning with under gives %q, %v", path, k.Path, ok, want, found)
		}
	}
}

func TestCacheExpiry(t *testing.T) {
	c := NewCache(10)
	c.Put(CacheKey{App: "a", Host: "h", Path: ""}, entry("root", time.Hour))
	c.Put(CacheKey{App: "a", Host: "h", Path: "/api"}, entry("api", time.Minute))
	sk := CacheKey{App: "a", Host: "h", Path: "/", Session: "s1"}
	c.Put(sk, entry("session", time.Minute))

	tests := []struct {
		name     string
		now      time.Time
		want     string
		wantSess bool
	}{
		{"fresh", t0, "api", true},
		{"just before", t0.Add(time.Minute - time.Nanosecond), "api", true},
		{"at expiry the shorter pattern serves", t0.Add(time.Minute), "root", false},
		{"all expired", t0.Add(time.Hour), "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, e, ok := c.Lookup("a", "h", "/api/x", tt.now)
			if got := region(e); ok != (tt.want != "") || ok && got != tt.want {
				t.Errorf("Lookup at %v = %q, %v; want %q", tt.now.Sub(t0), got, ok, tt.want)
			}
			if _, ok := c.LookupSession(sk, tt.now); ok != tt.wantSess {
				t.Errorf("LookupSession at %v = %v, want %v", tt.now.Sub(t0), ok, tt.wantSess)
			}
			checkCache(t, c)
		})
	}
	// The lookups that found expired entries removed them.
	if n := c.Len(); n != 0 {
		t.Errorf("Len after the expired lookups = %d, want 0", n)
	}
}

func TestCacheExpiredReplacedIsKept(t *testing.T) {
	// An entry that a lookup found expired but that was replaced before
	// the lookup took the write lock must stay: removeExpired re-checks.
	c := NewCache(10)
	k := CacheKey{App: "a", Host: "h", Path: "/p"}
	c.Put(k, entry("old", time.Minute))
	n := c.find(k)
	c.Put(k, entry("new", time.Hour))
	c.removeExpired(n, t0.Add(2*time.Minute))
	if _, e, ok := c.Lookup("a", "h", "/p", t0.Add(2*time.Minute)); !ok || region(e) != "new" {
		t.Fatalf("replaced entry lost: %v, %v", region(e), ok)
	}
	c.Delete(k)
	c.removeExpired(n, t0.Add(2*time.Hour)) // already gone: a no-op
	checkCache(t, c)
}

func TestCacheReplace(t *testing.T) {
	c := NewCache(10)
	pk := CacheKey{App: "a", Host: "h", Path: "/p"}
	sk := CacheKey{App: "a", Host: "h", Path: "/p", Session: "s"}
	c.Put(pk, entry("first", time.Minute))
	c.Put(sk, entry("s-first", time.Minute))
	c.Put(pk, CacheEntry{Instruction: Instruction{Instance: "m2"}, From: "m1", AllowBypass: true, Expires: t0.Add(time.Hour)})
	c.Put(sk, entry("s-second", time.Minute))
	if c.Len() != 2 {
		t.Fatalf("Len = %d, want 2", c.Len())
	}
	_, e, ok := c.Lookup("a", "h", "/p", t0.Add(30*time.Minute))
	want := CacheEntry{Instruction: Instruction{Instance: "m2"}, From: "m1", AllowBypass: true, Expires: t0.Add(time.Hour)}
	if !ok || !reflect.DeepEqual(e, want) {
		t.Errorf("Lookup after replace = %+v, %v; want %+v", e, ok, want)
	}
	if e, ok := c.LookupSession(sk, t0); !ok || region(e) != "s-second" {
		t.Errorf("LookupSession after replace = %v, %v; want s-second", region(e), ok)
	}
	checkCache(t, c)
}

func TestCacheEviction(t *testing.T) {
	key := func(p string) CacheKey {
		if strings.HasPrefix(p, "s") {
			return CacheKey{App: "a", Host: "h", Path: "", Session: p}
		}
		return CacheKey{App: "a", Host: "h", Path: "/" + p}
	}
	tests := []struct {
		name string
		max  int
		puts []string // in order; a repeated name replaces
		want []string // what is left
	}{
		{"below the cap", 3, []string{"a", "b"}, []string{"a", "b"}},
		{"oldest goes", 3, []string{"a", "b", "c", "d"}, []string{"b", "c", "d"}},
		{"in insertion order", 3, []string{"a", "b", "c", "d", "e", "f"}, []string{"d", "e", "f"}},
		{"replace moves to newest", 3, []string{"a", "b", "c", "a", "d"}, []string{"a", "c", "d"}},
		{"replace at the cap evicts nothing", 2, []string{"a", "b", "a", "b", "a"}, []string{"a", "b"}},
		{"sessions and paths share the cap", 2, []string{"s1", "a", "s2"}, []string{"a", "s2"}},
		{"cap of one", 1, []string{"a", "s1", "b"}, []string{"b"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := NewCache(tt.max)
			for _, p := range tt.puts {
				c.Put(key(p), entry(p, time.Minute))
				checkCache(t, c)
			}
			var left []string
			for _, p := range []string{"a", "b", "c", "d", "e", "f", "s1", "s2"} {
				k := key(p)
				var ok bool
				if k.Session != "" {
					_, ok = c.LookupSession(k, t0)
				} else {
					var got CacheKey
					got, _, ok = c.Lookup(k.App, k.Host, k.Path, t0)
					ok = ok && got == k
				}
				if ok {
					left = append(left, p)
				}
			}
			if !reflect.DeepEqual(left, tt.want) {
				t.Errorf("left %q, want %q", left, tt.want)
			}
		})
	}
}

func TestCacheDisabled(t *testing.T) {
	for name, c := range map[string]*Cache{"zero": NewCache(0), "negative": NewCache(-5), "nil": nil} {
		t.Run(name, func(t *testing.T) {
			pk := CacheKey{App: "a", Host: "h", Path: "/p"}
			sk := CacheKey{App: "a", Host: "h", Path: "/p", Session: "s"}
			c.Put(pk, entry("x", time.Minute))
			c.Put(sk, entry("x", time.Minute))
			if _, _, ok := c.Lookup("a", "h", "/p", t0); ok {
				t.Error("Lookup hit")
			}
			if _, ok := c.LookupSession(sk, t0); ok {
				t.Error("LookupSession hit")
			}
			if c.Delete(pk) || c.InvalidatePath("a", "h", "/p") != 0 || c.Len() != 0 {
				t.Error("a disabled cache holds something")
			}
		})
	}
}

func TestCacheInvalidatePath(t *testing.T) {
	stored := []CacheKey{
		{App: "a", Host: "h", Path: ""},
		{App: "a", Host: "h", Path: "/api"},
		{App: "a", Host: "h", Path: "/api/v1"},
		{App: "a", Host: "h", Path: "/api/v1/users"}, // below the path: stays
		{App: "a", Host: "h", Path: "/apis"},
		{App: "a", Host: "h", Path: "/other"},
		{App: "a", Host: "h2", Path: "/api"},
		{App: "b", Host: "h", Path: "/api"},
		{App: "a", Host: "h", Path: "/api", Session: "s"},
	}
	tests := []struct {
		name, app, host, path string
		removed               []int // indexes into stored
	}{
		{"all ancestors", "a", "h", "/api/v1/x", []int{0, 1, 2}},
		{"exact", "a", "h", "/api/v1", []int{0, 1, 2}},
		{"root only", "a", "h", "/", []int{0}},
		{"segment-wise", "a", "h", "/apis/x", []int{0, 4}},
		{"other host", "a", "h2", "/api/v1", []int{6}},
		{"other app", "b", "h", "/api", []int{7}},
		{"nothing", "c", "h", "/api", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := NewCache(100)
			for _, k := range stored {
				c.Put(k, entry("x", time.Minute))
			}
			if n := c.InvalidatePath(tt.app, tt.host, tt.path); n != len(tt.removed) {
				t.Errorf("InvalidatePath = %d, want %d", n, len(tt.removed))
			}
			checkCache(t, c)
			gone := make(map[int]bool)
			for _, i := range tt.removed {
				gone[i] = true
			}
			for i, k := range stored {
				c.mu.RLock()
				there := c.find(k) != nil
				c.mu.RUnlock()
				if there == gone[i] {
					t.Errorf("entry %+v: present = %v, want %v", k, there, !gone[i])
				}
			}
		})
	}
}

func TestCacheKindsAreSeparate(t *testing.T) {
	c := NewCache(10)
	pk := CacheKey{App: "a", Host: "h", Path: "/p"}
	sk := CacheKey{App: "a", Host: "h", Path: "/q", Session: "s"}
	c.Put(pk, entry("path", time.Minute))
	c.Put(sk, entry("session", time.Minute))
	if _, ok := c.LookupSession(pk, t0); ok {
		t.Error("LookupSession found a path-based entry")
	}
	if _, _, ok := c.Lookup("a", "h", "/q", t0); ok {
		t.Error("Lookup found a session-based entry")
	}
	if c.InvalidatePath("a", "h", "/q") != 0 {
		t.Error("InvalidatePath removed a session-based entry")
	}
	if e, ok := c.LookupSession(sk, t0); !ok || region(e) != "session" {
		t.Errorf("LookupSession = %v, %v", region(e), ok)
	}
	for _, k := range []CacheKey{
		{App: "a", Host: "h", Path: "/q", Session: "t"},
		{App: "a", Host: "h", Path: "/r", Session: "s"},
		{App: "a", Host: "h2", Path: "/q", Session: "s"},
		{App: "b", Host: "h", Path: "/q", Session: "s"},
	} {
		if _, ok := c.LookupSession(k, t0); ok {
			t.Errorf("LookupSession(%+v) hit", k)
		}
	}
}

func TestCacheDelete(t *testing.T) {
	c := NewCache(10)
	pk := CacheKey{App: "a", Host: "h", Path: "/p"}
	sk := CacheKey{App: "a", Host: "h", Path: "/p", Session: "s"}
	c.Put(pk, entry("path", time.Minute))
	c.Put(sk, entry("session", time.Minute))
	tests := []struct {
		k    CacheKey
		want bool
	}{
		{CacheKey{App: "a", Host: "h", Path: "/p/x"}, false}, // exact keys only
		{CacheKey{App: "a", Host: "h", Path: ""}, false},
		{sk, true},
		{sk, false},
		{pk, true},
		{pk, false},
	}
	for _, tt := range tests {
		if got := c.Delete(tt.k); got != tt.want {
			t.Errorf("Delete(%+v) = %v, want %v", tt.k, got, tt.want)
		}
		checkCache(t, c)
	}
	if c.Len() != 0 {
		t.Errorf("Len = %d, want 0", c.Len())
	}
}

func TestCachePutCopies(t *testing.T) {
	c := NewCache(10)
	regions := []string{"iad", "ord"}
	in := Instruction{
		Regions: regions, Instance: "i", PreferInstance: "p", App: "t", Elsewhere: true,
		State: "s", Timeout: time.Second, Fallback: FallbackForceSelf,
		Transform: Transform{Path: "/x"}, Cache: CacheSpec{Prefix: "/", TTL: time.Minute}, AllowBypass: true,
		Unknown: []string{"future"},
	}
	c.Put(CacheKey{App: "a", Host: "h"}, CacheEntry{Instruction: in, From: "m", Expires: t0.Add(time.Minute)})
	regions[0] = "changed"
	_, e, ok := c.Lookup("a", "h", "/", t0)
	want := Instruction{Regions: []string{"iad", "ord"}, Instance: "i", PreferInstance: "p", App: "t", Elsewhere: true}
	if !ok || !reflect.DeepEqual(e.Instruction, want) || e.From != "m" {
		t.Errorf("stored %+v from %q, want %+v from m", e.Instruction, e.From, want)
	}

	long := CacheKey{App: "a", Host: "h", Session: strings.Repeat("s", MaxSessionBytes+1)}
	c.Put(long, entry("x", time.Minute))
	if _, ok := c.LookupSession(long, t0); ok || c.Len() != 1 {
		t.Errorf("a session over MaxSessionBytes was cached")
	}
	atMax := CacheKey{App: "a", Host: "h", Session: strings.Repeat("s", MaxSessionBytes)}
	c.Put(atMax, entry("x", time.Minute))
	if _, ok := c.LookupSession(atMax, t0); !ok {
		t.Errorf("a session of MaxSessionBytes was not cached")
	}
}

func TestCacheLookupDoesNotAllocate(t *testing.T) {
	c := NewCache(100)
	c.Put(CacheKey{App: "a", Host: "h", Path: "/api"}, entry("api", time.Minute))
	c.Put(CacheKey{App: "a", Host: "h", Path: "/p", Session: "s"}, entry("s", time.Minute))
	empty := NewCache(100)
	sk := CacheKey{App: "a", Host: "h", Path: "/p", Session: "s"}
	for name, f := range map[string]func(){
		"hit":          func() { c.Lookup("a", "h", "/api/v1/users/7", t0) },
		"miss":         func() { c.Lookup("a", "h", "/other/v1/users/7", t0) },
		"other host":   func() { c.Lookup("a", "x", "/api", t0) },
		"empty":        func() { empty.Lookup("a", "h", "/api", t0) },
		"session hit":  func() { c.LookupSession(sk, t0) },
		"session miss": func() { c.LookupSession(CacheKey{App: "a", Host: "h", Path: "/p", Session: "t"}, t0) },
	} {
		if n := testing.AllocsPerRun(100, f); n != 0 {
			t.Errorf("%s: %v allocations per lookup, want 0", name, n)
		}
	}
}

// TestCacheConcurrent hammers one small cache from many goroutines with
// every operation, for the race detector and the invariants; the cap is
// small so Put evicts all the time.
func TestCacheConcurrent(t *testing.T) {
	const (
		goroutines = 16
		ops        = 2000
	)
	c := NewCache(32)
	paths := []string{"", "/a", "/a/b", "/a/b/c", "/x", "/x/y"}
	hosts := []string{"h1", "h2"}
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range ops {
				host := hosts[(g+i)%len(hosts)]
				path := paths[(g*7+i)%len(paths)]
				now := t0.Add(time.Duration(i%90) * time.Second) // some lookups see expired entries
				ttl := time.Duration(10+(g+i)%60) * time.Second
				sk := CacheKey{App: "a", Host: host, Path: path, Session: fmt.Sprint("s", i%5)}
				switch i % 8 {
				case 0, 1:
					c.Put(CacheKey{App: "a", Host: host, Path: path}, entry(host+path, ttl))
				case 2:
					c.Put(sk, entry("session", ttl))
				case 3, 4:
					if k, e, ok := c.Lookup("a", host, path+"/z", now); ok && (k.Host != host || region(e) != host+k.Path || !under(path+"/z", k.Path)) {
						t.Errorf("Lookup(%q, %q) = %+v %q", host, path+"/z", k, region(e))
						return
					}
				case 5:
					if e, ok := c.LookupSession(sk, now); ok && region(e) != "session" {
						t.Errorf("LookupSession(%+v) = %q", sk, region(e))
						return
					}
				case 6:
					c.InvalidatePath("a", host, path)
				case 7:
					c.Delete(CacheKey{App: "a", Host: host, Path: path})
					c.Delete(sk)
					_ = c.Len()
				}
			}
		}()
	}
	wg.Wait()
	checkCache(t, c)
}

func TestMatchRule(t *testing.T) {
	rules := []SessionRule{
		{Pattern: Pattern{Path: ""}, Name: "root"},
		{Pattern: Pattern{Path: "/api"}, Name: "api"},
		{Pattern: Pattern{Host: "api.example.com", Path: "/api"}, Name: "host-api"},
		{Pattern: Pattern{Path: "/api/v1"}, Name: "v1"},
		{Pattern: Pattern{Host: "api.example.com", Path: ""}, Name: "host-root"},
		{Pattern: Pattern{Path: "/dup"}, Name: "dup-first"},
		{Pattern: Pattern{Path: "/dup"}, Name: "dup-second"},
		{Pattern: Pattern{Host: "only.example.com", Path: "/only"}, Name: "only"},
	}
	tests := []struct {
		name       string
		rules      []SessionRule
		host, path string
		want       string // rule Name; "" is nil
	}{
		{"root", rules, "x.example.com", "/", "root"},
		{"longest", rules, "x.example.com", "/api/v1/users", "v1"},
		{"segment-wise", rules, "x.example.com", "/apis", "root"},
		{"host beats host-less of the same length", rules, "api.example.com", "/api/x", "host-api"},
		{"host-less longer beats host", rules, "api.example.com", "/api/v1", "v1"},
		{"host root beats root", rules, "api.example.com", "/other", "host-root"},
		{"first of equals", rules, "x.example.com", "/dup/1", "dup-first"},
		{"host rule for its host", rules, "only.example.com", "/only", "only"},
		{"host rule not for another", rules, "x.example.com", "/only", "root"},
		{"no rule matches", rules[7:], "x.example.com", "/only", ""},
		{"no rules", nil, "x.example.com", "/", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := MatchRule(tt.rules, tt.host, tt.path)
			got := ""
			if r != nil {
				got = r.Name
			}
			if got != tt.want {
				t.Errorf("MatchRule(%q, %q) = %q, want %q", tt.host, tt.path, got, tt.want)
			}
		})
	}
	if r := MatchRule(rules, "x.example.com", "/api"); r != &rules[1] {
		t.Errorf("MatchRule does not point into rules")
	}
}

func BenchmarkCacheLookup(b *testing.B) {
	c := NewCache(10000)
	for i := range 1000 {
		c.Put(CacheKey{App: "app", Host: fmt.Sprintf("h%d.example.com", i), Path: "/api/v1"}, entry("iad", time.Hour))
	}
	c.Put(CacheKey{App: "app", Host: "example.com", Path: "/api/v1"}, entry("iad", time.Hour))
	c.Put(CacheKey{App: "app", Host: "example.com", Path: "/api/v1/users/7", Session: "0123456789abcdef"}, entry("ord", time.Hour))
	empty := NewCache(10000)
	const path = "/api/v1/users/7/orders/42"
	sk := CacheKey{App: "app", Host: "example.com", Path: "/api/v1/users/7", Session: "0123456789abcdef"}
	for _, bc := range []struct {
		name string
		f    func() bool
	}{
		{"hit", func() bool { _, _, ok := c.Lookup("app", "example.com", path, t0); return ok }},
		{"miss", func() bool { _, _, ok := c.Lookup("app", "example.com", "/static/css/site/main.css", t0); return !ok }},
		{"miss other host", func() bool { _, _, ok := c.Lookup("app", "other.example.com", path, t0); return !ok }},
		{"empty cache", func() bool { _, _, ok := empty.Lookup("app", "example.com", path, t0); return !ok }},
		{"session hit", func() bool { _, ok := c.LookupSession(sk, t0); return ok }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			if !bc.f() {
				b.Fatal("unexpected result")
			}
			b.ReportAllocs()
			for b.Loop() {
				bc.f()
			}
		})
	}
	b.Run("hit parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				c.Lookup("app", "example.com", path, t0)
			}
		})
	})
}
