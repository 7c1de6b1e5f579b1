package replay

import (
	"errors"
	"testing"
)

func TestParsePattern(t *testing.T) {
	tests := []struct {
		in   string
		want Pattern
	}{
		{"/", Pattern{}},
		{"/*", Pattern{}},
		{"/some/path/*", Pattern{Path: "/some/path"}},
		{"/some/path", Pattern{Path: "/some/path"}},
		{"/some/path/", Pattern{Path: "/some/path"}},
		{"Example.COM/api/*", Pattern{Host: "example.com", Path: "/api"}},
		{"example.com", Pattern{Host: "example.com"}},
	}
	for _, tt := range tests {
		got, err := ParsePattern("p", tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParsePattern(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"", "example.com:8080/a", "/a b", "/a*", "/a/*/b", "/a?x=1", "/a#f", "ex ample/a", "/\x7f"} {
		if _, err := ParsePattern("p", bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParsePattern(%q) = %v, want ErrInvalid", bad, err)
		}
	}
}

func TestPatternMatches(t *testing.T) {
	api := Pattern{Path: "/api"}
	hosted := Pattern{Host: "a.example", Path: "/api"}
	tests := []struct {
		p          Pattern
		host, path string
		want       bool
	}{
		{api, "x", "/api", true},
		{api, "x", "/api/", true},
		{api, "x", "/api/v1/users", true},
		{api, "x", "/apis", false},
		{api, "x", "/", false},
		{Pattern{}, "x", "/anything", true},
		{hosted, "a.example", "/api/x", true},
		{hosted, "b.example", "/api/x", false},
	}
	for _, tt := range tests {
		if got := tt.p.Matches(tt.host, tt.path); got != tt.want {
			t.Errorf("%v.Matches(%q, %q) = %v, want %v", tt.p, tt.host, tt.path, got, tt.want)
		}
	}
}
