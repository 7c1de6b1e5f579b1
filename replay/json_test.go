package replay

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseJSON(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want Instruction
	}{
		{"docs example", `{"app":"target-app","region":"iad,us",
 "transform":{"path":"/new/path?param=value",
   "delete_headers":["x-unwanted-header","cookie"],
   "set_headers":[{"name":"authorization","value":"Bearer token123"}]},
 "cache":{"prefix":"/some/path/*","ttl":60}}`, Instruction{
			App: "target-app", Regions: []string{"iad", "us"},
			Transform: Transform{
				Path:          "/new/path?param=value",
				DeleteHeaders: []string{"x-unwanted-header", "cookie"},
				SetHeaders:    []HeaderValue{{"authorization", "Bearer token123"}},
			},
			Cache: CacheSpec{Prefix: "/some/path/*", TTL: time.Minute},
		}},
		{"region string", `{"region":"iad"}`, Instruction{Regions: []string{"iad"}}},
		{"region list string", `{"region":"IAD, ord,any"}`, Instruction{Regions: []string{"iad", "ord", "any"}}},
		{"region array", `{"region":["sjc","EU"," any "]}`, Instruction{Regions: []string{"sjc", "eu", "any"}}},
		{"instance", `{"instance":"00bb33ff"}`, Instruction{Instance: "00bb33ff"}},
		{"prefer_instance", `{"prefer_instance":"00bb33ff"}`, Instruction{PreferInstance: "00bb33ff"}},
		{"app", `{"app":"a"}`, Instruction{App: "a"}},
		{"state", `{"state":"x;y=z \"q\""}`, Instruction{State: `x;y=z "q"`}},
		{"elsewhere", `{"elsewhere":true}`, Instruction{Elsewhere: true}},
		{"timeout and fallback", `{"timeout":"10s","fallback":"force_self"}`, Instruction{Timeout: 10 * time.Second, Fallback: FallbackForceSelf}},
		{"fallback prefer_self", `{"fallback":"prefer_self"}`, Instruction{Fallback: FallbackPreferSelf}},
		{"allow_bypass", `{"allow_bypass":true}`, Instruction{AllowBypass: true}},
		{"transform", `{"app":"a","transform":{"path":"/new/path?param=value",
			"delete_headers":["x-unwanted-header","cookie"],
			"set_headers":[{"name":"authorization","value":"Bearer token123"},{"name":"X-Empty","value":""}]}}`,
			Instruction{App: "a", Transform: Transform{
				Path:          "/new/path?param=value",
				DeleteHeaders: []string{"x-unwanted-header", "cookie"},
				SetHeaders:    []HeaderValue{{"authorization", "Bearer token123"}, {"X-Empty", ""}},
			}}},
		{"cache", `{"app":"target-app","region":"iad,us","cache":{"prefix":"/some/path/*","ttl":60}}`,
			Instruction{App: "target-app", Regions: []string{"iad", "us"}, Cache: CacheSpec{Prefix: "/some/path/*", TTL: time.Minute}}},
		{"cache with host", `{"cache":{"prefix":"example.com/api","ttl":10},"allow_bypass":true}`,
			Instruction{Cache: CacheSpec{Prefix: "example.com/api", TTL: 10 * time.Second}, AllowBypass: true}},
		{"cache invalidate", `{"cache":{"invalidate":true}}`, Instruction{Cache: CacheSpec{Invalidate: true}}},
		{"null is absent", `{"app":null,"region":null,"transform":null,"elsewhere":null}`, Instruction{}},
		{"keys case-insensitive", `{"App":"a","REGION":"iad"}`, Instruction{App: "a", Regions: []string{"iad"}}},
		{"unknown keys recorded", `{"app":"a","future":{"x":1},"transform":{"later":1},"cache":{"soon":[]},
			"transform2":2}`, Instruction{App: "a", Unknown: []string{"future", "transform.later", "cache.soon", "transform2"}}},
		{"unknown set_headers key", `{"transform":{"set_headers":[{"name":"a","value":"b","mode":"x"}]}}`,
			Instruction{Transform: Transform{SetHeaders: []HeaderValue{{"a", "b"}}}, Unknown: []string{"transform.set_headers.mode"}}},
		{"whitespace after object", "{\"app\":\"a\"}\n\t ", Instruction{App: "a"}},
		{"empty object", `{}`, Instruction{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseJSON([]byte(tt.in))
			if err != nil {
				t.Fatalf("ParseJSON(%s): %v", tt.in, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseJSON(%s)\n got %+v\nwant %+v", tt.in, got, tt.want)
			}
		})
	}
}

func TestParseJSONErrors(t *testing.T) {
	tests := []struct {
		name, in, field string
	}{
		{"empty body", ``, "json"},
		{"not an object", `[]`, "json"},
		{"string", `"app"`, "json"},
		{"malformed", `{"app":}`, "app"},
		{"truncated", `{"app":"a"`, "json"},
		{"trailing garbage", `{"app":"a"} x`, "json"},
		{"second object", `{"app":"a"}{}`, "json"},
		{"too large", `{"state":"` + strings.Repeat("s", MaxJSONBytes) + `"}`, "json"},
		{"duplicate key", `{"app":"a","app":"b"}`, "app"},
		{"duplicate key case", `{"app":"a","APP":"b"}`, "app"},
		{"duplicate nested", `{"cache":{"ttl":10,"ttl":20,"prefix":"/"}}`, "cache.ttl"},
		{"region wrong type", `{"region":3}`, "region"},
		{"region empty", `{"region":""}`, "region"},
		{"region empty array", `{"region":[]}`, "region"},
		{"region array of numbers", `{"region":[1]}`, "region"},
		{"region array element with comma", `{"region":["iad,ord"]}`, "region"},
		{"region invalid", `{"region":"i d"}`, "region"},
		{"instance empty", `{"instance":""}`, "instance"},
		{"instance wrong type", `{"instance":1}`, "instance"},
		{"app empty", `{"app":""}`, "app"},
		{"prefer_instance empty", `{"prefer_instance":""}`, "prefer_instance"},
		{"instance and prefer_instance", `{"instance":"a","prefer_instance":"b"}`, "prefer_instance"},
		{"state control", `{"state":"a\r\nb"}`, "state"},
		{"state too long", `{"state":"` + strings.Repeat("s", MaxStateBytes+1) + `"}`, "state"},
		{"elsewhere string", `{"elsewhere":"true"}`, "elsewhere"},
		{"timeout number", `{"timeout":10}`, "timeout"},
		{"timeout empty", `{"timeout":""}`, "timeout"},
		{"timeout bad", `{"timeout":"2h"}`, "timeout"},
		{"fallback bad", `{"fallback":"nope"}`, "fallback"},
		{"fallback empty", `{"fallback":""}`, "fallback"},
		{"allow_bypass string", `{"allow_bypass":"yes"}`, "allow_bypass"},
		{"transform not object", `{"transform":[]}`, "transform"},
		{"path relative", `{"transform":{"path":"new"}}`, "transform.path"},
		{"path authority", `{"transform":{"path":"//evil.example/x"}}`, "transform.path"},
		{"path space", `{"transform":{"path":"/a b"}}`, "transform.path"},
		{"path fragment", `{"transform":{"path":"/a#b"}}`, "transform.path"},
		{"path CRLF", `{"transform":{"path":"/a\r\nX: y"}}`, "transform.path"},
		{"delete bad name", `{"transform":{"delete_headers":["a b"]}}`, "transform.delete_headers"},
		{"delete empty name", `{"transform":{"delete_headers":[""]}}`, "transform.delete_headers"},
		{"delete host", `{"transform":{"delete_headers":["Host"]}}`, "transform.delete_headers"},
		{"delete not array", `{"transform":{"delete_headers":"cookie"}}`, "transform.delete_headers"},
		{"delete too many", `{"transform":{"delete_headers":[` + strings.Repeat(`"a",`, MaxTransformHeaders) + `"a"]}}`, "transform.delete_headers"},
		{"set bad name", `{"transform":{"set_headers":[{"name":"a:b","value":"c"}]}}`, "transform.set_headers"},
		{"set CR", `{"transform":{"set_headers":[{"name":"a","value":"c\rd"}]}}`, "transform.set_headers"},
		{"set LF", `{"transform":{"set_headers":[{"name":"a","value":"c\nd"}]}}`, "transform.set_headers"},
		{"set NUL", `{"transform":{"set_headers":[{"name":"a","value":"c\u0000d"}]}}`, "transform.set_headers"},
		{"set missing value", `{"transform":{"set_headers":[{"name":"a"}]}}`, "transform.set_headers"},
		{"set missing name", `{"transform":{"set_headers":[{"value":"a"}]}}`, "transform.set_headers"},
		{"set entry not object", `{"transform":{"set_headers":["a"]}}`, "transform.set_headers"},
		{"set twice", `{"transform":{"set_headers":[{"name":"x-a","value":"1"},{"name":"X-A","value":"2"}]}}`, "transform.set_headers"},
		{"set fly-replay-src", `{"transform":{"set_headers":[{"name":"fly-replay-src","value":"state=x"}]}}`, "transform.set_headers"},
		{"set fly-replay-failed", `{"transform":{"set_headers":[{"name":"Fly-Replay-Failed","value":"x"}]}}`, "transform.set_headers"},
		{"set fly-client-ip", `{"transform":{"set_headers":[{"name":"Fly-Client-IP","value":"1.2.3.4"}]}}`, "transform.set_headers"},
		{"set host", `{"transform":{"set_headers":[{"name":"host","value":"x"}]}}`, "transform.set_headers"},
		{"set content-length", `{"transform":{"set_headers":[{"name":"Content-Length","value":"0"}]}}`, "transform.set_headers"},
		{"set transfer-encoding", `{"transform":{"set_headers":[{"name":"Transfer-Encoding","value":"chunked"}]}}`, "transform.set_headers"},
		{"set connection", `{"transform":{"set_headers":[{"name":"connection","value":"close"}]}}`, "transform.set_headers"},
		{"set upgrade", `{"transform":{"set_headers":[{"name":"Upgrade","value":"websocket"}]}}`, "transform.set_headers"},
		{"cache not object", `{"cache":true}`, "cache"},
		{"cache ttl too low", `{"cache":{"prefix":"/","ttl":9}}`, "cache.ttl"},
		{"cache ttl fraction", `{"cache":{"prefix":"/","ttl":10.5}}`, "cache.ttl"},
		{"cache ttl string", `{"cache":{"prefix":"/","ttl":"60"}}`, "cache.ttl"},
		{"cache ttl huge", `{"cache":{"prefix":"/","ttl":99999999999999}}`, "cache.ttl"},
		{"cache prefix without ttl", `{"cache":{"prefix":"/"}}`, "cache.ttl"},
		{"cache ttl without prefix", `{"cache":{"ttl":60}}`, "cache.prefix"},
		{"cache prefix empty", `{"cache":{"prefix":"","ttl":60}}`, "cache.prefix"},
		{"cache prefix port", `{"cache":{"prefix":"example.com:8080/a","ttl":60}}`, "cache.prefix"},
		{"cache prefix space", `{"cache":{"prefix":"/a b","ttl":60}}`, "cache.prefix"},
		{"cache invalidate with prefix", `{"cache":{"invalidate":true,"prefix":"/","ttl":60}}`, "cache.invalidate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseJSON([]byte(tt.in))
			if err == nil {
				t.Fatalf("ParseJSON(%.200s) = %+v, want an error", tt.in, got)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("ParseJSON(%.200s): errors.Is(%v, ErrInvalid) = false, want true", tt.in, err)
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("ParseJSON(%.200s): error %T, want *Error", tt.in, err)
			}
			if e.Field != tt.field {
				t.Errorf("ParseJSON(%.200s): Field = %q, want %q (error %v)", tt.in, e.Field, tt.field, err)
			}
			if !reflect.DeepEqual(got, Instruction{}) {
				t.Errorf("ParseJSON(%.200s) with error returned %+v, want the zero Instruction", tt.in, got)
			}
		})
	}
}

func TestCacheable(t *testing.T) {
	cache := CacheSpec{Prefix: "/", TTL: time.Minute}
	tests := []struct {
		name string
		in   Instruction
		want bool
	}{
		{"no prefix (a session rule may cache it)", Instruction{App: "a"}, true},
		{"invalidate", Instruction{Cache: CacheSpec{Invalidate: true}}, false},
		{"prefix", Instruction{App: "a", Regions: []string{"iad"}, Cache: cache, AllowBypass: true}, true},
		{"with state", Instruction{State: "s", Cache: cache}, false},
		{"with timeout", Instruction{Timeout: time.Second, Cache: cache}, false},
		{"with fallback", Instruction{Fallback: FallbackForceSelf, Cache: cache}, false},
		{"with path", Instruction{Transform: Transform{Path: "/x"}, Cache: cache}, false},
		{"with delete", Instruction{Transform: Transform{DeleteHeaders: []string{"a"}}, Cache: cache}, false},
		{"with set", Instruction{Transform: Transform{SetHeaders: []HeaderValue{{"a", "b"}}}, Cache: cache}, false},
	}
	for _, tt := range tests {
		if got := tt.in.Cacheable(); got != tt.want {
			t.Errorf("%s: Cacheable() = %v, want %v", tt.name, got, tt.want)
		}
	}
}
