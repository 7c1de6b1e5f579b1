package replay

import "strings"

// Pattern is a replay-cache path pattern: "/some/path/*" or
// "example.com/some/path/*", with an implicit trailing "/*" (Fly's
// fly-replay-cache and replay_cache path_prefix).
type Pattern struct {
	// Host is the lower-case host the pattern is limited to, without a
	// port; "" is the request's own host.
	Host string
	// Path is the prefix without its trailing "/" or "/*": "/some/path",
	// or "" for "/" (every path).
	Path string
}

// ParsePattern parses a cache path pattern: an optional host (letters,
// digits, '-' and '.', no port), then a path starting with "/" of visible
// ASCII. A '*' may only end the pattern, after a '/'. Errors name field and
// match ErrInvalid.
func ParsePattern(field, s string) (Pattern, error) {
	var p Pattern
	if s == "" {
		return p, invalid(field, "empty value")
	}
	if len(s) > MaxValueBytes {
		return p, invalid(field, "value too long")
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f || c == '#' || c == '?' {
			return p, invalid(field, "only visible ASCII without # or ? is allowed")
		}
	}
	host, path := s, ""
	if i := strings.IndexByte(s, '/'); i >= 0 {
		host, path = s[:i], s[i:]
	}
	for i := 0; i < len(host); i++ {
		c := host[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.') {
			return p, invalid(field, "host must be a name without a port")
		}
	}
	if path == "" {
		path = "/"
	}
	path = strings.TrimSuffix(path, "*")
	if strings.IndexByte(path, '*') >= 0 || (strings.HasSuffix(s, "*") && !strings.HasSuffix(path, "/")) {
		return p, invalid(field, "'*' may only end the pattern, after a '/'")
	}
	p.Host = strings.ToLower(host)
	p.Path = strings.TrimRight(path, "/")
	if len(p.Host)+len(p.Path)+2 > MaxValueBytes {
		// Its written form (String, "/*" added) must parse again: a bare
		// host at the limit would not (found by FuzzParsePattern).
		return Pattern{}, invalid(field, "value too long")
	}
	return p, nil
}

// String formats p as it would be written: "host/path/*" or "/path/*".
func (p Pattern) String() string { return p.Host + p.Path + "/*" }

// Matches reports whether a request for host (lower case, without port)
// and path (without query) falls under p: the host is p's (when p names
// one) and the path is p.Path or below it.
func (p Pattern) Matches(host, path string) bool {
	if p.Host != "" && p.Host != host {
		return false
	}
	return under(path, p.Path)
}

// under reports whether path is prefix or below it, segment-wise: "/a"
// is under "/a" and "/a/b" is under "/a", "/ab" is not.
func under(path, prefix string) bool {
	if prefix == "" {
		return true
	}
	return strings.HasPrefix(path, prefix) && (len(path) == len(prefix) || path[len(prefix)] == '/')
}
