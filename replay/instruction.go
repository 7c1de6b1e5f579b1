package replay

import (
	"strings"
	"time"
)

// Limits on an instruction. Values are measured after unquoting.
const (
	MaxHeaderBytes = 16 << 10 // a whole fly-replay header value
	MaxValueBytes  = 1 << 10  // one field's value, except state
	MaxStateBytes  = 4 << 10  // the state field
	MaxTimeout     = time.Hour
)

// Fallback says where a replay goes when it fails (timeout, retries
// exhausted, no candidate). The zero value is FallbackNone: the client gets
// the error.
type Fallback uint8

const (
	FallbackNone       Fallback = iota
	FallbackForceSelf           // "force_self": only the machine that asked for the replay
	FallbackPreferSelf          // "prefer_self": that machine first, then any of the original app
)

// String returns the wire name ("force_self", "prefer_self"), or "" for
// FallbackNone.
func (f Fallback) String() string {
	switch f {
	case FallbackForceSelf:
		return "force_self"
	case FallbackPreferSelf:
		return "prefer_self"
	}
	return ""
}

// Instruction is a validated fly-replay instruction. The zero value replays
// to any machine of the same app, with no constraint.
type Instruction struct {
	// Regions are the wanted regions in preference order: lower-case
	// region codes or aliases exactly as given (see ExpandRegions); empty
	// means no region constraint.
	Regions []string
	// Instance is the machine the request must go to. It wins over
	// Regions when both are given.
	Instance string
	// PreferInstance is the machine to try first; if it cannot take the
	// request, any machine matching the other fields does. Never set
	// together with Instance.
	PreferInstance string
	// App is the app to replay to; "" is the same app.
	App string
	// State is opaque, echoed to the target in fly-replay-src.
	State string
	// Elsewhere excludes the responding machine from the next pick.
	Elsewhere bool
	// Timeout is how long the proxy keeps trying to reach the target; 0
	// is no timeout of the replay's own.
	Timeout  time.Duration
	Fallback Fallback

	// The JSON form only.
	Transform   Transform
	Cache       CacheSpec
	AllowBypass bool // clients may skip the replay cache with fly-replay-cache-control: skip

	// Unknown are the keys that were ignored (lower-case; nested JSON keys
	// as "transform.foo"), in order, so the caller can log them.
	Unknown []string
}

// Transform changes the request before it is replayed (JSON form only).
type Transform struct {
	Path          string        // new path and query, starting with "/"; "" keeps the request's
	DeleteHeaders []string      // request header names to remove
	SetHeaders    []HeaderValue // request headers to replace, names unique (case-insensitively)
}

// HeaderValue is one header to set on the replayed request.
type HeaderValue struct {
	Name, Value string
}

// CacheSpec is the replay-cache part of a JSON instruction. The zero value asks
// for no caching.
type CacheSpec struct {
	Prefix     string        // path pattern (optionally "host/path") with an implicit trailing "/*"
	TTL        time.Duration // whole seconds, at least 10s; set exactly when Prefix is
	Invalidate bool          // drop cached replays for this request's host (never with Prefix)
}

// ParseHeader parses a fly-replay header value:
//
//	key=value;key=value
//
// Keys are case-insensitive, whitespace around keys, values and separators is
// ignored, and a value may be double-quoted (then it may hold ';' and ',';
// \" and \\ are escapes, as is any \c). Outside quotes a ',' followed by
// "key=" also separates fields, for Fly's blueprint that writes
// "app=x,state=y"; any other comma belongs to the value, so both
// region="iad,ord" and region=iad,ord are lists. Unknown keys are ignored and
// listed in Unknown. Every error matches ErrInvalid.
func ParseHeader(v string) (Instruction, error) {
	var in Instruction
	if len(v) > MaxHeaderBytes {
		return in, invalid("header", "longer than 16 KiB")
	}
	if strings.TrimLeft(v, " \t") == "" {
		return in, invalid("header", "empty")
	}
	seen := make(map[string]bool)
	fields := 0
	p := headerParser{s: v}
	for {
		key, val, err := p.next()
		if err != nil {
			return Instruction{}, err
		}
		if key == "" {
			break
		}
		fields++
		if seen[key] {
			return Instruction{}, invalid(key, "given twice")
		}
		seen[key] = true
		if err := in.set(key, val); err != nil {
			return Instruction{}, err
		}
	}
	if fields == 0 {
		return Instruction{}, invalid("header", "no fields")
	}
	if err := in.check(); err != nil {
		return Instruction{}, err
	}
	return in, nil
}

// set validates and stores one field shared by the header and JSON forms.
func (in *Instruction) set(key, val string) error {
	limit := MaxValueBytes
	if key == "state" {
		limit = MaxStateBytes
	}
	if len(val) > limit {
		return invalid(key, "value too long")
	}
	if i := ctlIndex(val); i >= 0 {
		return invalid(key, "control character in value")
	}
	switch key {
	case "region":
		regions, err := parseRegions(strings.Split(val, ","))
		if err != nil {
			return err
		}
		in.Regions = regions
	case "instance", "prefer_instance", "app":
		if val == "" {
			return invalid(key, "empty value")
		}
		if !isToken(val) {
			return invalid(key, "not a valid name")
		}
		switch key {
		case "instance":
			in.Instance = val
		case "prefer_instance":
			in.PreferInstance = val
		default:
			in.App = val
		}
	case "state":
		in.State = val
	case "elsewhere":
		switch strings.ToLower(val) {
		case "true", "1":
			in.Elsewhere = true
		case "false", "0":
			in.Elsewhere = false
		default:
			return invalid(key, "want true, false, 1 or 0")
		}
	case "timeout":
		d, err := parseTimeout(val)
		if err != nil {
			return err
		}
		in.Timeout = d
	case "fallback":
		f, err := parseFallback(val)
		if err != nil {
			return err
		}
		in.Fallback = f
	default:
		in.Unknown = append(in.Unknown, key)
	}
	return nil
}

// check refuses contradictory combinations.
func (in *Instruction) check() error {
	if in.Instance != "" && in.PreferInstance != "" {
		return invalid("prefer_instance", "given together with instance")
	}
	return nil
}

func parseRegions(list []string) ([]string, error) {
	if len(list) == 1 && strings.TrimSpace(list[0]) == "" {
		return nil, invalid("region", "empty value")
	}
	out := make([]string, 0, len(list))
	for _, r := range list {
		r = strings.ToLower(strings.Trim(r, " \t"))
		if !isRegionCode(r) {
			return nil, invalid("region", "invalid region code "+quoteForError(r))
		}
		out = append(out, r)
	}
	return out, nil
}

// isRegionCode reports whether r is 2 to 10 characters of [a-z0-9-]; this
// admits the aliases and "any" too.
func isRegionCode(r string) bool {
	if len(r) < 2 || len(r) > 10 {
		return false
	}
	for i := 0; i < len(r); i++ {
		c := r[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

func parseTimeout(val string) (time.Duration, error) {
	if val == "" {
		return 0, invalid("timeout", "empty value")
	}
	d, err := time.ParseDuration(val)
	if err != nil {
		return 0, invalid("timeout", "not a duration such as 10s or 800ms")
	}
	if d <= 0 || d > MaxTimeout {
		return 0, invalid("timeout", "must be above 0 and at most 1h")
	}
	return d, nil
}

func parseFallback(val string) (Fallback, error) {
	switch strings.ToLower(val) {
	case "force_self":
		return FallbackForceSelf, nil
	case "prefer_self":
		return FallbackPreferSelf, nil
	case "":
		return FallbackNone, invalid("fallback", "empty value")
	}
	return FallbackNone, invalid("fallback", "want force_self or prefer_self")
}

// headerParser walks a fly-replay header value field by field.
type headerParser struct {
	s string
	i int
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' }

func (p *headerParser) skipSpace() {
	for p.i < len(p.s) && isSpace(p.s[p.i]) {
		p.i++
	}
}

// next returns the next field, with key lower-cased, or key == "" at the
// end. Empty fields (";;") are skipped.
func (p *headerParser) next() (key, val string, err error) {
	for {
		p.skipSpace()
		if p.i >= len(p.s) {
			return "", "", nil
		}
		if c := p.s[p.i]; c == ';' || c == ',' {
			p.i++
			continue
		}
		break
	}
	start := p.i
	for p.i < len(p.s) && isKeyChar(p.s[p.i]) {
		p.i++
	}
	key = strings.ToLower(p.s[start:p.i])
	p.skipSpace()
	if key == "" {
		if p.i < len(p.s) && isCtl(p.s[p.i]) {
			return "", "", invalid("header", "control character")
		}
		return "", "", invalid("header", "expected a key")
	}
	if p.i >= len(p.s) || p.s[p.i] != '=' {
		return "", "", invalid(key, "key without '='")
	}
	p.i++
	p.skipSpace()
	if p.i < len(p.s) && p.s[p.i] == '"' {
		val, err = p.quoted(key)
		if err != nil {
			return "", "", err
		}
		p.skipSpace()
		if p.i < len(p.s) && p.s[p.i] != ';' && p.s[p.i] != ',' {
			return "", "", invalid(key, "unexpected characters after quoted value")
		}
		if p.i < len(p.s) {
			p.i++
		}
		return key, val, nil
	}
	start = p.i
	for p.i < len(p.s) {
		c := p.s[p.i]
		if c == ';' || (c == ',' && p.keyFollows(p.i+1)) {
			break
		}
		if c == '"' {
			return "", "", invalid(key, "quote inside an unquoted value")
		}
		if isCtl(c) {
			return "", "", invalid(key, "control character in value")
		}
		p.i++
	}
	val = strings.TrimRight(p.s[start:p.i], " \t")
	if p.i < len(p.s) {
		p.i++ // the separator
	}
	return key, val, nil
}

// keyFollows reports whether s[i:] starts with optional whitespace, a key
// and '=' (so a comma before it separates fields).
func (p *headerParser) keyFollows(i int) bool {
	for i < len(p.s) && isSpace(p.s[i]) {
		i++
	}
	start := i
	for i < len(p.s) && isKeyChar(p.s[i]) {
		i++
	}
	if i == start {
		return false
	}
	for i < len(p.s) && isSpace(p.s[i]) {
		i++
	}
	return i < len(p.s) && p.s[i] == '='
}

// quoted reads a quoted string starting at the opening quote.
func (p *headerParser) quoted(key string) (string, error) {
	p.i++ // opening quote
	var b strings.Builder
	for p.i < len(p.s) {
		c := p.s[p.i]
		switch {
		case c == '"':
			p.i++
			return b.String(), nil
		case c == '\\':
			if p.i+1 >= len(p.s) {
				return "", invalid(key, "unterminated quoted value")
			}
			c = p.s[p.i+1]
			p.i++
		}
		if isCtl(c) {
			return "", invalid(key, "control character in value")
		}
		b.WriteByte(c)
		p.i++
	}
	return "", invalid(key, "unterminated quoted value")
}

// isKeyChar: keys are letters, digits, '_' and '-'.
func isKeyChar(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-'
}

// isCtl reports control characters other than horizontal tab.
func isCtl(c byte) bool { return (c < 0x20 && c != '\t') || c == 0x7f }

// ctlIndex returns the index of the first control character (other than
// tab) in s, or -1.
func ctlIndex(s string) int {
	for i := 0; i < len(s); i++ {
		if isCtl(s[i]) {
			return i
		}
	}
	return -1
}

// isToken reports whether s is a non-empty RFC 9110 token.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isTchar(s[i]) {
			return false
		}
	}
	return true
}

func isTchar(c byte) bool {
	if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' {
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// quoteForError shortens and quotes a value for an error message.
func quoteForError(s string) string {
	if len(s) > 32 {
		s = s[:32] + "..."
	}
	return `"` + s + `"`
}

// Header formats the header form of in: the fields it has, in the order
// region, instance, prefer_instance, app, elsewhere, timeout, fallback,
// state, with values quoted where needed. ParseHeader(in.Header()) gives in
// back for an instruction ParseHeader returned, apart from Unknown. The
// JSON-only fields (Transform, Cache, AllowBypass) have no header form and
// are left out.
func (in Instruction) Header() string {
	var b fields
	field := func(k, v string) { b.add(k, v, true) }
	if len(in.Regions) > 0 {
		field("region", strings.Join(in.Regions, ","))
	}
	if in.Instance != "" {
		field("instance", in.Instance)
	}
	if in.PreferInstance != "" {
		field("prefer_instance", in.PreferInstance)
	}
	if in.App != "" {
		field("app", in.App)
	}
	if in.Elsewhere {
		field("elsewhere", "true")
	}
	if in.Timeout != 0 {
		field("timeout", in.Timeout.String())
	}
	if in.Fallback != FallbackNone {
		field("fallback", in.Fallback.String())
	}
	if in.State != "" {
		field("state", in.State)
	}
	return b.String()
}

// writeValue writes v, quoted if it holds a separator, a quote, a
// backslash or whitespace, or is empty.
func writeValue(b *strings.Builder, v string) {
	if v != "" && !strings.ContainsAny(v, ";,\"\\ \t") {
		b.WriteString(v)
		return
	}
	b.WriteByte('"')
	for i := 0; i < len(v); i++ {
		if v[i] == '"' || v[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(v[i])
	}
	b.WriteByte('"')
}
