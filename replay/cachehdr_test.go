package replay

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseCacheHeaders(t *testing.T) {
	tests := []struct {
		name                    string
		cache, ttl, allowBypass []string
		want                    CacheSpec
		wantBypass              bool
	}{
		{"none", nil, nil, nil, CacheSpec{}, false},
		{"pattern", []string{"/some/path/*"}, []string{"60"}, nil, CacheSpec{Prefix: "/some/path/*", TTL: time.Minute}, false},
		{"root", []string{"/"}, []string{"10"}, nil, CacheSpec{Prefix: "/", TTL: 10 * time.Second}, false},
		{"host kept as given", []string{"Example.com/api/*"}, []string{"31536000"}, nil, CacheSpec{Prefix: "Example.com/api/*", TTL: MaxCacheTTL}, false},
		{"whitespace trimmed", []string{" /a/* \t"}, []string{" 010 "}, []string{" yes "}, CacheSpec{Prefix: "/a/*", TTL: 10 * time.Second}, true},
		{"bypass yes", []string{"/a"}, []string{"10"}, []string{"yes"}, CacheSpec{Prefix: "/a", TTL: 10 * time.Second}, true},
		{"bypass TRUE", []string{"/a"}, []string{"10"}, []string{"TRUE"}, CacheSpec{Prefix: "/a", TTL: 10 * time.Second}, true},
		{"bypass 1", []string{"/a"}, []string{"10"}, []string{"1"}, CacheSpec{Prefix: "/a", TTL: 10 * time.Second}, true},
		{"bypass No", []string{"/a"}, []string{"10"}, []string{"No"}, CacheSpec{Prefix: "/a", TTL: 10 * time.Second}, false},
		{"bypass false", []string{"/a"}, []string{"10"}, []string{"false"}, CacheSpec{Prefix: "/a", TTL: 10 * time.Second}, false},
		{"bypass 0", []string{"/a"}, []string{"10"}, []string{"0"}, CacheSpec{Prefix: "/a", TTL: 10 * time.Second}, false},
		{"invalidate", []string{"invalidate"}, nil, nil, CacheSpec{Invalidate: true}, false},
		{"invalidate any case", []string{"Invalidate"}, nil, nil, CacheSpec{Invalidate: true}, false},
		{"empty slices are absent", []string{}, []string{}, []string{}, CacheSpec{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, bypass, err := ParseCacheHeaders(tt.cache, tt.ttl, tt.allowBypass)
			if err != nil || got != tt.want || bypass != tt.wantBypass {
				t.Errorf("ParseCacheHeaders(%q, %q, %q) = %+v, %v, %v; want %+v, %v",
					tt.cache, tt.ttl, tt.allowBypass, got, bypass, err, tt.want, tt.wantBypass)
			}
		})
	}
}

func TestParseCacheHeadersErrors(t *testing.T) {
	const (
		cache  = "fly-replay-cache"
		ttl    = "fly-replay-cache-ttl-secs"
		bypass = "fly-replay-cache-allow-bypass"
	)
	tests := []struct {
		name                    string
		cache, ttl, allowBypass []string
		field                   string
	}{
		{"cache twice", []string{"/a", "/b"}, []string{"10"}, nil, cache},
		{"ttl twice", []string{"/a"}, []string{"10", "10"}, nil, ttl},
		{"bypass twice", []string{"/a"}, []string{"10"}, []string{"yes", "yes"}, bypass},
		{"cache empty", []string{""}, []string{"10"}, nil, cache},
		{"cache bad pattern", []string{"/a*"}, []string{"10"}, nil, cache},
		{"cache with port", []string{"example.com:8080/a"}, []string{"10"}, nil, cache},
		{"cache with query", []string{"/a?b=c"}, []string{"10"}, nil, cache},
		{"cache list", []string{"/a/*, /b/*"}, []string{"10"}, nil, cache},
		{"pattern without ttl", []string{"/a"}, nil, nil, ttl},
		{"ttl without cache", nil, []string{"10"}, nil, ttl},
		{"ttl with invalidate", []string{"invalidate"}, []string{"10"}, nil, ttl},
		{"ttl too low", []string{"/a"}, []string{"9"}, nil, ttl},
		{"ttl zero", []string{"/a"}, []string{"0"}, nil, ttl},
		{"ttl too high", []string{"/a"}, []string{"31536001"}, nil, ttl},
		{"ttl overflow", []string{"/a"}, []string{"99999999999999999999999"}, nil, ttl},
		{"ttl negative", []string{"/a"}, []string{"-10"}, nil, ttl},
		{"ttl plus", []string{"/a"}, []string{"+10"}, nil, ttl},
		{"ttl fraction", []string{"/a"}, []string{"10.5"}, nil, ttl},
		{"ttl unit", []string{"/a"}, []string{"10s"}, nil, ttl},
		{"ttl empty", []string{"/a"}, []string{""}, nil, ttl},
		{"ttl inner space", []string{"/a"}, []string{"1 0"}, nil, ttl},
		{"bypass without cache", nil, nil, []string{"yes"}, bypass},
		{"bypass with invalidate", []string{"invalidate"}, nil, []string{"no"}, bypass},
		{"bypass bad", []string{"/a"}, []string{"10"}, []string{"maybe"}, bypass},
		{"bypass empty", []string{"/a"}, []string{"10"}, []string{""}, bypass},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec, bypass, err := ParseCacheHeaders(tt.cache, tt.ttl, tt.allowBypass)
			var e *Error
			if !errors.Is(err, ErrInvalid) || !errors.As(err, &e) || e.Field != tt.field {
				t.Fatalf("ParseCacheHeaders(%q, %q, %q) error = %v, want field %q", tt.cache, tt.ttl, tt.allowBypass, err, tt.field)
			}
			if spec != (CacheSpec{}) || bypass {
				t.Errorf("on error got %+v, %v; want zero values", spec, bypass)
			}
		})
	}
}

func TestParseDeleteHeaders(t *testing.T) {
	tests := []struct {
		name   string
		values []string
		want   []string
	}{
		{"absent", nil, nil},
		{"one", []string{"Cookie"}, []string{"Cookie"}},
		{"repeated", []string{"cookie", "x-unwanted-header"}, []string{"cookie", "x-unwanted-header"}},
		{"list", []string{"a, b,c\t", "d"}, []string{"a", "b", "c", "d"}},
		{"empty elements ignored", []string{"", " , a,,", ","}, []string{"a"}},
		{"duplicates kept", []string{"a", "A"}, []string{"a", "A"}},
		{"token characters", []string{"x!#$%&'*+-.^_`|~9"}, []string{"x!#$%&'*+-.^_`|~9"}},
		{"at the limit", []string{strings.Repeat("a,", MaxTransformHeaders-1) + "a"}, strings.Split(strings.Repeat("a,", MaxTransformHeaders-1)+"a", ",")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseDeleteHeaders(tt.values)
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseDeleteHeaders(%q) = %q, %v; want %q", tt.values, got, err, tt.want)
			}
		})
	}
}

func TestParseDeleteHeadersErrors(t *testing.T) {
	tests := []struct {
		name   string
		values []string
	}{
		{"space in name", []string{"a b"}},
		{"colon", []string{"a:b"}},
		{"control character", []string{"a\r\nb"}},
		{"quoted", []string{`"cookie"`}},
		{"non-ASCII", []string{"caf\u00e9"}},
		{"bad in a list", []string{"a, b c"}},
		{"bad in a later value", []string{"a", "b", "c;d"}},
		{"host", []string{"Host"}},
		{"content-length", []string{"content-length"}},
		{"transfer-encoding", []string{"Transfer-Encoding"}},
		{"connection", []string{"connection"}},
		{"upgrade", []string{"upgrade"}},
		{"fly header", []string{"Fly-Client-IP"}},
		{"fly-replay-src", []string{"a, fly-replay-src"}},
		{"too many in one value", []string{strings.Repeat("a,", MaxTransformHeaders) + "a"}},
		{"too many over values", append(strings.Split(strings.Repeat("a,", MaxTransformHeaders-1)+"a", ","), "b")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseDeleteHeaders(tt.values)
			var e *Error
			if !errors.Is(err, ErrInvalid) || !errors.As(err, &e) || e.Field != "fly-replay-delete-header" {
				t.Fatalf("ParseDeleteHeaders(%q) error = %v, want field fly-replay-delete-header", tt.values, err)
			}
			if got != nil {
				t.Errorf("on error got %q, want nil", got)
			}
		})
	}
}
