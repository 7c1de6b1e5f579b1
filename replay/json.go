package replay

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/textproto"
	"strings"
	"time"
)

// JSONContentType is the Content-Type of a response whose body is a replay
// instruction.
const JSONContentType = "application/vnd.fly.replay+json"

// Limits of the JSON form.
const (
	MaxJSONBytes        = 64 << 10 // the whole body
	MaxTransformHeaders = 100      // entries in delete_headers, and in set_headers
	MinCacheTTL         = 10 * time.Second
	MaxCacheTTL         = 365 * 24 * time.Hour
)

// ParseJSON parses an application/vnd.fly.replay+json body: one JSON object
// with the header form's keys ("region" as a string, possibly
// comma-separated, or an array of strings; "elsewhere" a bool; the others
// strings) plus "transform", "cache" and "allow_bypass". Keys match
// case-insensitively, null is the same as an absent key, and unknown keys
// (also inside transform and cache) are ignored and listed in Unknown. A key
// given twice, anything after the object, or a body over MaxJSONBytes is
// refused. Every error matches ErrInvalid.
//
// Header names in transform are checked to be tokens, set_headers values to
// hold no control characters other than tab; transform may not touch the
// framing, hop-by-hop or Fly headers (see protectedHeader). A cache prefix
// together with state, transform, timeout or fallback is accepted, as in
// Fly's own example, although Fly documents that a cached replay cannot
// carry them: Cacheable tells the caller whether to cache.
func ParseJSON(body []byte) (Instruction, error) {
	var in Instruction
	if len(body) > MaxJSONBytes {
		return in, invalid("json", "body longer than 64 KiB")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	err := eachKey(dec, "", &in.Unknown, func(key string, raw json.RawMessage) (bool, error) {
		switch key {
		case "region":
			return true, in.jsonRegion(raw)
		case "instance", "prefer_instance", "app", "state", "timeout", "fallback":
			var s string
			if err := unmarshal(raw, key, &s); err != nil {
				return true, err
			}
			return true, in.set(key, s)
		case "elsewhere":
			return true, unmarshal(raw, key, &in.Elsewhere)
		case "allow_bypass":
			return true, unmarshal(raw, key, &in.AllowBypass)
		case "transform":
			return true, in.jsonTransform(raw)
		case "cache":
			return true, in.jsonCache(raw)
		}
		return false, nil
	})
	if err != nil {
		return Instruction{}, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return Instruction{}, invalid("json", "data after the object")
	}
	if err := in.check(); err != nil {
		return Instruction{}, err
	}
	return in, nil
}

// Cacheable reports whether the replay may be stored in the replay cache,
// by a fly-replay-cache prefix or a session rule: it carries none of what
// Fly documents a cached replay cannot carry (state, a transform, timeout,
// fallback), and it does not invalidate the cache.
func (in Instruction) Cacheable() bool {
	return in.State == "" && in.Timeout == 0 && in.Fallback == FallbackNone && !in.Cache.Invalidate &&
		in.Transform.Path == "" && len(in.Transform.DeleteHeaders) == 0 && len(in.Transform.SetHeaders) == 0
}

// eachKey reads one JSON object from dec and calls fn with each key
// (lower-cased) and its raw value, skipping null values. Keys fn does not
// know are appended to unknown with prefix. A key given twice is refused.
func eachKey(dec *json.Decoder, prefix string, unknown *[]string, fn func(key string, raw json.RawMessage) (known bool, err error)) error {
	field := strings.TrimSuffix(prefix, ".")
	if field == "" {
		field = "json"
	}
	tok, err := dec.Token()
	if err != nil {
		return invalid(field, jsonMsg(err))
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return invalid(field, "not a JSON object")
	}
	seen := make(map[string]bool)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return invalid(field, jsonMsg(err))
		}
		key := strings.ToLower(tok.(string)) // object keys are always strings
		if seen[key] {
			return invalid(prefix+key, "given twice")
		}
		seen[key] = true
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return invalid(prefix+key, jsonMsg(err))
		}
		if string(raw) == "null" {
			continue
		}
		known, err := fn(key, raw)
		if err != nil {
			return err
		}
		if !known {
			*unknown = append(*unknown, prefix+key)
		}
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return invalid(field, jsonMsg(err))
	}
	return nil
}

func jsonMsg(err error) string {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return "unexpected end of JSON"
	}
	return "malformed JSON: " + err.Error()
}

// unmarshal decodes raw into v, refusing a value of the wrong type.
func unmarshal(raw json.RawMessage, field string, v any) error {
	if err := json.Unmarshal(raw, v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return invalid(field, "want a JSON "+te.Type.String()+", got "+te.Value)
		}
		return invalid(field, jsonMsg(err))
	}
	return nil
}

func (in *Instruction) jsonRegion(raw json.RawMessage) error {
	var list []string
	if len(raw) > 0 && raw[0] == '[' {
		if err := unmarshal(raw, "region", &list); err != nil {
			return err
		}
		if len(list) == 0 {
			return invalid("region", "empty list")
		}
		for _, r := range list {
			if strings.Contains(r, ",") {
				return invalid("region", "list element holds a comma")
			}
		}
	} else {
		var s string
		if err := unmarshal(raw, "region", &s); err != nil {
			return err
		}
		if len(s) > MaxValueBytes {
			return invalid("region", "value too long")
		}
		list = strings.Split(s, ",")
	}
	if len(list) > MaxValueBytes/3 {
		return invalid("region", "too many regions")
	}
	regions, err := parseRegions(list)
	if err != nil {
		return err
	}
	in.Regions = regions
	return nil
}

func (in *Instruction) jsonTransform(raw json.RawMessage) error {
	var t Transform
	dec := json.NewDecoder(bytes.NewReader(raw))
	err := eachKey(dec, "transform.", &in.Unknown, func(key string, raw json.RawMessage) (bool, error) {
		switch key {
		case "path":
			if err := unmarshal(raw, "transform.path", &t.Path); err != nil {
				return true, err
			}
			return true, checkPath(t.Path)
		case "delete_headers":
			const field = "transform.delete_headers"
			if err := unmarshal(raw, field, &t.DeleteHeaders); err != nil {
				return true, err
			}
			if len(t.DeleteHeaders) > MaxTransformHeaders {
				return true, invalid(field, "too many headers")
			}
			for _, name := range t.DeleteHeaders {
				if err := checkHeaderName(field, name); err != nil {
					return true, err
				}
			}
			return true, nil
		case "set_headers":
			const field = "transform.set_headers"
			var list []json.RawMessage
			if err := unmarshal(raw, field, &list); err != nil {
				return true, err
			}
			if len(list) > MaxTransformHeaders {
				return true, invalid(field, "too many headers")
			}
			names := make(map[string]bool, len(list))
			for _, item := range list {
				h, err := in.jsonHeaderValue(item)
				if err != nil {
					return true, err
				}
				canon := textproto.CanonicalMIMEHeaderKey(h.Name)
				if names[canon] {
					return true, invalid(field, "header "+quoteForError(h.Name)+" set twice")
				}
				names[canon] = true
				t.SetHeaders = append(t.SetHeaders, h)
			}
			return true, nil
		}
		return false, nil
	})
	if err != nil {
		return err
	}
	in.Transform = t
	return nil
}

func (in *Instruction) jsonHeaderValue(raw json.RawMessage) (HeaderValue, error) {
	const field = "transform.set_headers"
	var h HeaderValue
	var hasName, hasValue bool
	dec := json.NewDecoder(bytes.NewReader(raw))
	err := eachKey(dec, field+".", &in.Unknown, func(key string, raw json.RawMessage) (bool, error) {
		switch key {
		case "name":
			hasName = true
			return true, unmarshal(raw, field, &h.Name)
		case "value":
			hasValue = true
			return true, unmarshal(raw, field, &h.Value)
		}
		return false, nil
	})
	if err != nil {
		return h, err
	}
	if !hasName || !hasValue {
		return h, invalid(field, "each entry needs a name and a value")
	}
	if err := checkHeaderName(field, h.Name); err != nil {
		return h, err
	}
	for i := 0; i < len(h.Value); i++ {
		if isCtl(h.Value[i]) {
			return h, invalid(field, "control character in the value of "+quoteForError(h.Name))
		}
	}
	return h, nil
}

func (in *Instruction) jsonCache(raw json.RawMessage) error {
	var c CacheSpec
	var ttl *int64
	dec := json.NewDecoder(bytes.NewReader(raw))
	err := eachKey(dec, "cache.", &in.Unknown, func(key string, raw json.RawMessage) (bool, error) {
		switch key {
		case "prefix":
			if err := unmarshal(raw, "cache.prefix", &c.Prefix); err != nil {
				return true, err
			}
			_, err := ParsePattern("cache.prefix", c.Prefix)
			return true, err
		case "ttl":
			return true, unmarshal(raw, "cache.ttl", &ttl)
		case "invalidate":
			return true, unmarshal(raw, "cache.invalidate", &c.Invalidate)
		}
		return false, nil
	})
	if err != nil {
		return err
	}
	if ttl != nil {
		if *ttl < int64(MinCacheTTL/time.Second) || *ttl > int64(MaxCacheTTL/time.Second) {
			return invalid("cache.ttl", "want whole seconds from 10 to 31536000")
		}
		c.TTL = time.Duration(*ttl) * time.Second
	}
	switch {
	case c.Invalidate && (c.Prefix != "" || c.TTL != 0):
		return invalid("cache.invalidate", "given together with prefix or ttl")
	case c.Prefix != "" && c.TTL == 0:
		return invalid("cache.ttl", "required with prefix")
	case c.Prefix == "" && c.TTL != 0:
		return invalid("cache.prefix", "required with ttl")
	}
	in.Cache = c
	return nil
}

// checkPath accepts an origin-form request target: "/" then visible ASCII,
// no fragment, not starting with "//" (which reads as an authority).
func checkPath(p string) error {
	const field = "transform.path"
	if p == "" {
		return nil
	}
	if p[0] != '/' {
		return invalid(field, "must start with /")
	}
	if strings.HasPrefix(p, "//") {
		return invalid(field, "must not start with //")
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; c <= ' ' || c >= 0x7f || c == '#' {
			return invalid(field, "only visible ASCII without # is allowed")
		}
	}
	return nil
}

func checkHeaderName(field, name string) error {
	if !isToken(name) {
		return invalid(field, "invalid header name "+quoteForError(name))
	}
	if protectedHeader(name) {
		return invalid(field, "header "+quoteForError(name)+" cannot be changed by a replay")
	}
	return nil
}

// protectedHeader reports whether a replay's transform may not set or
// delete the header: message framing (Host, Content-Length,
// Transfer-Encoding), hop-by-hop headers, and every Fly-* header, which only
// the proxy writes.
func protectedHeader(name string) bool {
	n := strings.ToLower(name)
	if strings.HasPrefix(n, "fly-") {
		return true
	}
	switch n {
	case "host", "content-length", "transfer-encoding", "connection", "keep-alive",
		"proxy-connection", "proxy-authenticate", "proxy-authorization", "te", "trailer", "upgrade":
		return true
	}
	return false
}
