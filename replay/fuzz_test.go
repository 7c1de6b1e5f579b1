package replay

import (
	"errors"
	"reflect"
	"testing"
)

var headerSeeds = []string{
	`region="sjc,any";app=target-app`,
	"app=my-worker;timeout=10s;fallback=force_self",
	"instance=00bb33ff;state=abc",
	"prefer_instance=00bb33ff;elsewhere=true",
	"app=x,state=y",
	`state="a;b,c \"q\" \\"`,
	"region=iad,ord,app=x",
	`region="iad,app=x"`,
	"future=1;REGION=IAD",
	`state="unterminated`,
	"",
}

// FuzzParseHeader checks that ParseHeader never panics, refuses only with
// ErrInvalid, and that what it accepts comes back the same from Header.
func FuzzParseHeader(f *testing.F) {
	for _, s := range headerSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		in, err := ParseHeader(v)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParseHeader(%q): error %v does not match ErrInvalid", v, err)
			}
			return
		}
		in.Unknown = nil // Header drops unknown keys
		h := in.Header()
		if h == "" {
			if !reflect.DeepEqual(in, Instruction{}) {
				t.Fatalf("ParseHeader(%q) = %+v, but Header() is empty", v, in)
			}
			return
		}
		again, err := ParseHeader(h)
		if err != nil {
			t.Fatalf("ParseHeader(%q) = %+v; its Header() %q does not parse: %v", v, in, h, err)
		}
		if !reflect.DeepEqual(again, in) {
			t.Fatalf("ParseHeader(%q) = %+v\nbut ParseHeader(Header() = %q) = %+v", v, in, h, again)
		}
	})
}

// FuzzParseJSON checks that ParseJSON never panics, refuses only with
// ErrInvalid, and that its header-form fields survive Header.
func FuzzParseJSON(f *testing.F) {
	for _, s := range []string{
		`{"app":"target-app","region":"iad,us","transform":{"path":"/new/path?param=value","delete_headers":["x-unwanted-header","cookie"],"set_headers":[{"name":"authorization","value":"Bearer token123"}]},"cache":{"prefix":"/some/path/*","ttl":60}}`,
		`{"region":["sjc","any"],"instance":"i","timeout":"800ms","fallback":"prefer_self","elsewhere":true,"state":"s;=,"}`,
		`{"cache":{"invalidate":true},"allow_bypass":true,"future":null}`,
		`{"app":"a"} {}`,
		`{"app":"a","app":"b"}`,
		`[`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		in, err := ParseJSON(body)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParseJSON(%q): error %v does not match ErrInvalid", body, err)
			}
			return
		}
		// The header-form fields must survive a trip through Header.
		want := Instruction{Regions: in.Regions, Instance: in.Instance, PreferInstance: in.PreferInstance,
			App: in.App, State: in.State, Elsewhere: in.Elsewhere, Timeout: in.Timeout, Fallback: in.Fallback}
		h := want.Header()
		if h == "" {
			return
		}
		got, err := ParseHeader(h)
		if err != nil {
			t.Fatalf("ParseJSON(%q) = %+v; its Header() %q does not parse: %v", body, in, h, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("ParseJSON(%q) header fields %+v\nbut ParseHeader(%q) = %+v", body, want, h, got)
		}
	})
}

// FuzzParseSrc checks that ParseSrc never panics and that what it accepts
// comes back the same from String.
func FuzzParseSrc(f *testing.F) {
	for _, s := range []string{
		"instance=00bb33ff;region=iad;t=1700000000123456;state=s1",
		"instance=i;state=a=b;c;d=",
		"state=x;",
		" instance = i ; region=r ",
		"t=-62135596800000000",
		"t=soon",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		s, err := ParseSrc(v)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParseSrc(%q): error %v does not match ErrInvalid", v, err)
			}
			return
		}
		again, err := ParseSrc(s.String())
		if err != nil {
			t.Fatalf("ParseSrc(%q) = %+v; its String() %q does not parse: %v", v, s, s.String(), err)
		}
		if !srcEqual(again, s) {
			t.Fatalf("ParseSrc(%q) = %+v\nbut ParseSrc(String() = %q) = %+v", v, s, s.String(), again)
		}
	})
}

// FuzzParsePattern checks that ParsePattern never panics, refuses only with
// ErrInvalid, and that an accepted pattern covers its own path, the paths
// below it, and nothing beside it.
func FuzzParsePattern(f *testing.F) {
	for _, s := range []string{"/", "/*", "/api/*", "example.com/api", "Example.COM/a/b/", "/a*", "host:1/a", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePattern("p", s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParsePattern(%q): error %v does not match ErrInvalid", s, err)
			}
			return
		}
		host := p.Host
		if host == "" {
			host = "any.example"
		}
		path := p.Path
		if path == "" {
			path = "/"
		}
		if !p.Matches(host, path) || !p.Matches(host, p.Path+"/below") {
			t.Fatalf("ParsePattern(%q) = %+v does not cover %q or what is below it", s, p, path)
		}
		if p.Path != "" && p.Matches(host, p.Path+"x") {
			t.Fatalf("ParsePattern(%q) = %+v covers the sibling %q", s, p, p.Path+"x")
		}
		again, err := ParsePattern("p", p.String())
		if err != nil || again != p {
			t.Fatalf("ParsePattern(%q) = %+v; its String() %q parses to %+v, %v", s, p, p.String(), again, err)
		}
	})
}

// FuzzParseCacheHeaders checks that the replay-cache headers never panic
// the parser and that an accepted set is consistent: a pattern has a TTL in
// range, invalidate has neither.
func FuzzParseCacheHeaders(f *testing.F) {
	f.Add("/api/*", "60", "yes")
	f.Add("invalidate", "", "")
	f.Add("/", "9", "maybe")
	f.Fuzz(func(t *testing.T, cache, ttl, bypass string) {
		opt := func(v string) []string {
			if v == "" {
				return nil
			}
			return []string{v}
		}
		spec, _, err := ParseCacheHeaders(opt(cache), opt(ttl), opt(bypass))
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not match ErrInvalid", err)
			}
			return
		}
		switch {
		case spec.Invalidate && (spec.Prefix != "" || spec.TTL != 0):
			t.Fatalf("invalidate with a pattern or TTL: %+v", spec)
		case spec.Prefix != "" && (spec.TTL < MinCacheTTL || spec.TTL > MaxCacheTTL):
			t.Fatalf("pattern with TTL %v out of range: %+v", spec.TTL, spec)
		}
	})
}
