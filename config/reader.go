package config

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// decoder collects the errors of one file.
type decoder struct {
	file string
	errs *Errors // shared with the decoders of imported files
}

func (d *decoder) errorf(line int, key, format string, args ...any) {
	*d.errs = append(*d.errs, Error{File: d.file, Line: line, Key: key, Msg: fmt.Sprintf(format, args...)})
}

// reader reads the keys of one table. Each getter records the key as known,
// so that done can report the keys nobody asked for; a getter leaves its
// destination alone (keeping the default) when the key is absent or wrong.
type reader struct {
	d     *decoder
	tab   *table // nil when the table is absent
	path  string // dotted path of the table, "" for the root
	line  int    // of the table header, or of its parent when absent
	known []string
}

func (d *decoder) root(v *value) *reader {
	return &reader{d: d, tab: v.tab, line: 1}
}

// has reports whether the table sets k (to any value, even a wrong one).
func (r *reader) has(k string) bool { return r.tab != nil && r.tab.get(k) != nil }

// present reports whether the table is in the file.
func (r *reader) present() bool { return r.tab != nil }

func (r *reader) key(k string) string {
	if r.path == "" {
		return k
	}
	return r.path + "." + k
}

func (r *reader) errorf(line int, k, format string, args ...any) {
	r.d.errorf(line, r.key(k), format, args...)
}

func (r *reader) lookup(k string) *value {
	r.known = append(r.known, k)
	if r.tab == nil {
		return nil
	}
	return r.tab.get(k)
}

func (r *reader) wrongType(v *value, k, want string) {
	r.errorf(v.line, k, "must be %s, not %s", want, v.describe())
}

// ignore marks keys as known without reading them.
func (r *reader) ignore(keys ...string) {
	r.known = append(r.known, keys...)
}

// done reports every key of the table that no getter asked for.
func (r *reader) done() {
	if r.tab == nil {
		return
	}
	for _, k := range r.tab.keys {
		if slices.Contains(r.known, k) {
			continue
		}
		msg := fmt.Sprintf("unknown key %q", k)
		if s := suggest(k, r.known); s != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", s)
		}
		r.errorf(r.tab.get(k).line, k, "%s", msg)
	}
}

// str reads a string. It returns the value when it was set to a string.
func (r *reader) str(k string, dst *string) *value {
	v := r.lookup(k)
	if v == nil {
		return nil
	}
	if v.kind != kindString {
		r.wrongType(v, k, "a string")
		return nil
	}
	*dst = v.str
	return v
}

// boolean reads a boolean.
func (r *reader) boolean(k string, dst *bool) *value {
	v := r.lookup(k)
	if v == nil {
		return nil
	}
	if v.kind != kindBool {
		r.wrongType(v, k, "a boolean")
		return nil
	}
	*dst = v.b
	return v
}

// integer reads an integer in [lo, hi].
func (r *reader) integer(k string, dst *int, lo, hi int) *value {
	v := r.lookup(k)
	if v == nil {
		return nil
	}
	if v.kind != kindInteger {
		r.wrongType(v, k, "an integer")
		return nil
	}
	switch {
	case v.num < int64(lo) && lo == 0:
		r.errorf(v.line, k, "must not be negative, got %d", v.num)
		return nil
	case v.num < int64(lo):
		r.errorf(v.line, k, "must be at least %d, got %d", lo, v.num)
		return nil
	case v.num > int64(hi):
		r.errorf(v.line, k, "must be at most %d, got %d", hi, v.num)
		return nil
	}
	*dst = int(v.num)
	return v
}

// duration reads a Go duration string ("1m30s", "800ms") or an integer of
// milliseconds, as fly.toml does. positive requires more than zero;
// otherwise zero is allowed. Negative durations are always an error.
func (r *reader) duration(k string, dst *time.Duration, positive bool) *value {
	v := r.lookup(k)
	if v == nil {
		return nil
	}
	var d time.Duration
	switch v.kind {
	case kindString:
		var err error
		d, err = time.ParseDuration(v.str)
		if err != nil {
			r.errorf(v.line, k, "bad duration %q: want a number with a unit (\"800ms\", \"10s\", \"1m\") or an integer of milliseconds", v.str)
			return nil
		}
	case kindInteger:
		if v.num > math.MaxInt64/int64(time.Millisecond) || v.num < math.MinInt64/int64(time.Millisecond) {
			r.errorf(v.line, k, "duration of %d milliseconds is too long", v.num)
			return nil
		}
		d = time.Duration(v.num) * time.Millisecond
	default:
		r.wrongType(v, k, "a duration (a string such as \"10s\" or an integer of milliseconds)")
		return nil
	}
	switch {
	case d < 0:
		r.errorf(v.line, k, "must not be negative, got %s", d)
		return nil
	case d == 0 && positive:
		r.errorf(v.line, k, "must be more than zero")
		return nil
	}
	*dst = d
	return v
}

// enum reads a string that must be one of allowed.
func (r *reader) enum(k string, dst *string, allowed ...string) *value {
	var s string
	v := r.str(k, &s)
	if v == nil {
		return nil
	}
	if !slices.Contains(allowed, s) {
		r.errorf(v.line, k, "unknown value %q, want %s", s, oneOf(allowed))
		return nil
	}
	*dst = s
	return v
}

// strings reads an array of strings; each element that is not a string is
// reported.
func (r *reader) strings(k string, dst *[]string) *value {
	v := r.lookup(k)
	if v == nil {
		return nil
	}
	if v.kind != kindArray {
		r.wrongType(v, k, "an array of strings")
		return nil
	}
	out := make([]string, 0, len(v.arr))
	ok := true
	for i, e := range v.arr {
		if e.kind != kindString {
			r.errorf(e.line, fmt.Sprintf("%s[%d]", k, i), "must be a string, not %s", e.describe())
			ok = false
			continue
		}
		out = append(out, e.str)
	}
	if !ok {
		return nil
	}
	*dst = out
	return v
}

// stringMap reads a table whose values are all strings.
func (r *reader) stringMap(k string, dst *map[string]string) *value {
	v := r.lookup(k)
	if v == nil {
		return nil
	}
	if v.kind != kindTable {
		r.wrongType(v, k, "a table of strings")
		return nil
	}
	out := make(map[string]string, len(v.tab.keys))
	ok := true
	for _, name := range v.tab.keys {
		e := v.tab.get(name)
		if e.kind != kindString {
			r.errorf(e.line, k+"."+name, "must be a string, not %s", e.describe())
			ok = false
			continue
		}
		out[name] = e.str
	}
	if !ok {
		return nil
	}
	*dst = out
	return v
}

// table returns a reader for the sub-table k. When k is absent the reader
// has no table: its getters find nothing and leave the defaults.
func (r *reader) table(k string) *reader {
	sub := &reader{d: r.d, path: r.key(k), line: r.line}
	v := r.lookup(k)
	if v == nil {
		return sub
	}
	if v.kind != kindTable {
		r.wrongType(v, k, "a table")
		return sub
	}
	sub.tab, sub.line = v.tab, v.line
	return sub
}

// tables returns a reader for each table of the array of tables k, written
// as [[k]] or as an array of inline tables.
func (r *reader) tables(k string) []*reader {
	v := r.lookup(k)
	if v == nil {
		return nil
	}
	if v.kind != kindArray {
		r.wrongType(v, k, fmt.Sprintf("an array of tables ([[%s]])", r.key(k)))
		return nil
	}
	var subs []*reader
	for i, e := range v.arr {
		path := fmt.Sprintf("%s[%d]", r.key(k), i)
		if e.kind != kindTable {
			r.d.errorf(e.line, path, "must be a table, not %s", e.describe())
			continue
		}
		subs = append(subs, &reader{d: r.d, tab: e.tab, path: path, line: e.line})
	}
	return subs
}

// oneOf formats allowed values as `"a", "b" or "c"`.
func oneOf(allowed []string) string {
	q := make([]string, len(allowed))
	for i, a := range allowed {
		q[i] = fmt.Sprintf("%q", a)
	}
	if len(q) == 1 {
		return q[0]
	}
	return strings.Join(q[:len(q)-1], ", ") + " or " + q[len(q)-1]
}

// suggest returns the known key closest to k if it is a likely typo.
func suggest(k string, known []string) string {
	best, bestDist := "", 3
	for _, c := range known {
		if d := editDistance(k, c); d < bestDist {
			best, bestDist = c, d
		}
	}
	if best != "" && bestDist*3 > len(best) {
		return ""
	}
	return best
}

// editDistance is the optimal string alignment distance between a and b (in
// bytes): insertions, deletions, substitutions and swaps of neighbours each
// cost one.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return math.MaxInt
	}
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}
