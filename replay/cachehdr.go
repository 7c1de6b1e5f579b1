package replay

import (
	"strconv"
	"strings"
	"time"
)

// The response headers that may come with a fly-replay header: the header
// form of the JSON "cache" and "allow_bypass" keys, and of
// transform.delete_headers. They name the field of a refusal.
const (
	cacheHeader       = "fly-replay-cache"
	cacheTTLHeader    = "fly-replay-cache-ttl-secs"
	allowBypassHeader = "fly-replay-cache-allow-bypass"
	deleteHeader      = "fly-replay-delete-header"
)

// ParseCacheHeaders parses the replay-cache headers of a response that
// carries a fly-replay header:
//
//   - fly-replay-cache: a Pattern string ("/some/path/*",
//     "example.com/api/*"), or "invalidate" (any case) to drop the cached
//     replays of the request;
//   - fly-replay-cache-ttl-secs: whole seconds from MinCacheTTL to
//     MaxCacheTTL, required with a pattern and refused without one or with
//     invalidate;
//   - fly-replay-cache-allow-bypass: "yes", "true" or "1", or "no", "false"
//     or "0" (any case), refused without a pattern, because it only means
//     something for an entry that will be cached.
//
// Each argument is the header's values, nil when it is absent (as
// http.Header.Values gives them). A header given more than once is refused
// rather than one of its values picked, since the source app then does not
// say one thing. Whitespace around a value is ignored (it is not part of an
// HTTP field value); otherwise the returned Prefix holds the pattern exactly
// as given, as ParseJSON keeps cache.prefix. The caller checks that the
// pattern matches the request (Fly refuses one that does not) and whether
// the instruction may be cached (Cacheable).
//
// Every error matches ErrInvalid and its Field names the header at fault.
func ParseCacheHeaders(cache, ttl, allowBypass []string) (spec CacheSpec, bypass bool, err error) {
	c, hasCache, err := single(cacheHeader, cache)
	if err != nil {
		return CacheSpec{}, false, err
	}
	t, hasTTL, err := single(cacheTTLHeader, ttl)
	if err != nil {
		return CacheSpec{}, false, err
	}
	b, hasBypass, err := single(allowBypassHeader, allowBypass)
	if err != nil {
		return CacheSpec{}, false, err
	}

	if hasCache {
		if strings.EqualFold(c, "invalidate") {
			spec.Invalidate = true
		} else {
			if _, err := ParsePattern(cacheHeader, c); err != nil {
				return CacheSpec{}, false, err
			}
			spec.Prefix = c
		}
	}

	switch {
	case hasTTL && spec.Invalidate:
		return CacheSpec{}, false, invalid(cacheTTLHeader, "given together with fly-replay-cache: invalidate")
	case hasTTL && spec.Prefix == "":
		return CacheSpec{}, false, invalid(cacheTTLHeader, "given without a fly-replay-cache pattern")
	case hasTTL:
		if spec.TTL, err = parseTTLSecs(t); err != nil {
			return CacheSpec{}, false, err
		}
	case spec.Prefix != "":
		return CacheSpec{}, false, invalid(cacheTTLHeader, "required with a fly-replay-cache pattern")
	}

	if hasBypass {
		if spec.Prefix == "" {
			return CacheSpec{}, false, invalid(allowBypassHeader, "given without a fly-replay-cache pattern")
		}
		if bypass, err = parseYesNo(allowBypassHeader, b); err != nil {
			return CacheSpec{}, false, err
		}
	}
	return spec, bypass, nil
}

// ParseDeleteHeaders parses the values of fly-replay-delete-header, the
// 2025 header form of transform.delete_headers that Fly documented briefly
// and that is accepted for compatibility: the names of request headers to
// remove before the replay. The header may be repeated and each value may
// be a comma-separated list; empty list elements are ignored, as RFC 9110
// asks of list-based fields. Each name must be a token and not a header a
// replay may not change (framing, hop-by-hop, Fly-*), the same checks as
// the JSON form, and there may be at most MaxTransformHeaders names.
// Names are returned as given, in order; nil when there are none.
//
// Every error matches ErrInvalid with Field "fly-replay-delete-header".
func ParseDeleteHeaders(values []string) ([]string, error) {
	var names []string
	for _, v := range values {
		for name := range strings.SplitSeq(v, ",") {
			name = strings.Trim(name, " \t")
			if name == "" {
				continue
			}
			if len(names) == MaxTransformHeaders {
				return nil, invalid(deleteHeader, "more than "+strconv.Itoa(MaxTransformHeaders)+" header names")
			}
			if err := checkHeaderName(deleteHeader, name); err != nil {
				return nil, err
			}
			names = append(names, name)
		}
	}
	return names, nil
}

// single returns the only value of a header that may not repeat, without
// surrounding whitespace; ok is false when the header is absent.
func single(field string, values []string) (v string, ok bool, err error) {
	switch len(values) {
	case 0:
		return "", false, nil
	case 1:
		return strings.Trim(values[0], " \t"), true, nil
	}
	return "", false, invalid(field, "given more than once")
}

// parseTTLSecs parses fly-replay-cache-ttl-secs: ASCII digits only (no
// sign, no fraction, no unit), within MinCacheTTL..MaxCacheTTL.
func parseTTLSecs(s string) (time.Duration, error) {
	lo, hi := int64(MinCacheTTL/time.Second), int64(MaxCacheTTL/time.Second)
	msg := "want whole seconds from " + strconv.FormatInt(lo, 10) + " to " + strconv.FormatInt(hi, 10)
	if s == "" || strings.Trim(s, "0123456789") != "" {
		return 0, invalid(cacheTTLHeader, msg)
	}
	n, err := strconv.ParseInt(s, 10, 64) // fails only on overflow
	if err != nil || n < lo || n > hi {
		return 0, invalid(cacheTTLHeader, msg)
	}
	return time.Duration(n) * time.Second, nil
}

// parseYesNo parses a boolean header value in the spellings Fly's docs use
// ("yes") and the ones fly-replay's elsewhere accepts ("true", "1").
func parseYesNo(field, s string) (bool, error) {
	switch strings.ToLower(s) {
	case "yes", "true", "1":
		return true, nil
	case "no", "false", "0":
		return false, nil
	}
	return false, invalid(field, "want yes, true, 1, no, false or 0")
}
