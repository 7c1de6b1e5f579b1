package replay

import (
	"strconv"
	"strings"
	"time"
)

// Src is the fly-replay-src header the proxy adds to a replayed request: who
// asked for the replay, from where, when, and the instruction's state. It
// is not set on a replay served from the replay cache.
type Src struct {
	Instance string    // machine that returned fly-replay
	Region   string    // its region
	T        time.Time // when the replay was asked for; microsecond precision on the wire
	State    string    // Instruction.State; "" if none
}

// String formats the header value
//
//	instance=<id>;region=<r>;t=<µs since the Unix epoch>;state=<s>
//
// leaving out empty fields (and t when T is zero). state comes last and is
// written as is, so it may hold '=' and ';': a reader that takes
// everything after "state=" gets it back.
func (s Src) String() string {
	var b fields
	field := func(k, v string) { b.add(k, v, false) }
	if s.Instance != "" {
		field("instance", s.Instance)
	}
	if s.Region != "" {
		field("region", s.Region)
	}
	if !s.T.IsZero() {
		field("t", strconv.FormatInt(s.T.UnixMicro(), 10))
	}
	if s.State != "" {
		field("state", s.State)
	}
	return b.String()
}

// ParseSrc parses a fly-replay-src value written by Src.String: ';'-separated
// key=value fields, whitespace around them ignored, unknown keys ignored.
// Everything after the first "state=" field is the state, taken verbatim.
// T is returned in UTC. Every error matches ErrInvalid.
func ParseSrc(v string) (Src, error) {
	var s Src
	if len(v) > MaxHeaderBytes {
		return s, invalid("fly-replay-src", "longer than 16 KiB")
	}
	if i := ctlIndex(v); i >= 0 {
		return s, invalid("fly-replay-src", "control character")
	}
	seen := make(map[string]bool)
	rest := v
	for rest != "" {
		var seg string
		var more bool
		seg, rest, more = strings.Cut(rest, ";")
		seg = strings.TrimLeft(seg, " \t")
		if seg == "" {
			continue
		}
		key, val, ok := strings.Cut(seg, "=")
		key = strings.ToLower(strings.TrimRight(key, " \t"))
		if !ok || key == "" {
			return Src{}, invalid("fly-replay-src", "field without key=value")
		}
		if seen[key] {
			return Src{}, invalid("fly-replay-src."+key, "given twice")
		}
		seen[key] = true
		if key == "state" {
			// state is last and may hold ';': take the rest verbatim.
			if more {
				val = val + ";" + rest
			}
			s.State = val
			break
		}
		val = strings.Trim(val, " \t")
		switch key {
		case "instance":
			s.Instance = val
		case "region":
			s.Region = val
		case "t":
			us, err := strconv.ParseInt(val, 10, 64)
			if err != nil {
				return Src{}, invalid("fly-replay-src.t", "not an integer of microseconds")
			}
			s.T = time.UnixMicro(us).UTC()
		}
	}
	return s, nil
}

// Reasons a replay failed, in Failed.Reason.
const (
	ReasonTimeout          = "timeout"
	ReasonRetriesExhausted = "retries_exhausted"
	ReasonNoCandidate      = "no_candidate"
)

// Failed is the fly-replay-failed header added to a request sent back to
// its origin by a fallback.
type Failed struct {
	Instance     string        // the replay's target machine, if one was chosen
	App          string        // the replay's target app
	Region       string        // the replay's target region
	ReplaySource string        // the machine that asked for the replay
	Reason       string        // ReasonTimeout, ReasonRetriesExhausted or ReasonNoCandidate
	Elapsed      time.Duration // time spent on the replay; whole milliseconds on the wire
}

// String formats the header value
//
//	instance=..;app=..;region=..;replay_source=..;reason=..;elapsed_ms=N
//
// leaving out empty string fields; elapsed_ms is always written.
func (f Failed) String() string {
	var b fields
	field := func(k, v string) {
		if v != "" {
			b.add(k, v, false)
		}
	}
	field("instance", f.Instance)
	field("app", f.App)
	field("region", f.Region)
	field("replay_source", f.ReplaySource)
	field("reason", f.Reason)
	b.add("elapsed_ms", strconv.FormatInt(f.Elapsed.Milliseconds(), 10), false)
	return b.String()
}

// fields builds a header value of key=value pairs separated by ';'.
type fields struct{ strings.Builder }

// add appends k=v; quote writes v as a quoted string where it needs one.
func (b *fields) add(k, v string, quote bool) {
	if b.Len() > 0 {
		b.WriteByte(';')
	}
	b.WriteString(k)
	b.WriteByte('=')
	if quote {
		writeValue(&b.Builder, v)
	} else {
		b.WriteString(v)
	}
}
