package config

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Error is one problem in a config file: a syntax error, an unknown key, a
// value of the wrong type or out of range, or a conflict between values.
type Error struct {
	File string // the file as given to Load or Parse (or a fly.toml it imports)
	Line int    // 1-based line of the offending key or table header; 0 if unknown
	Key  string // dotted key, with array indexes, e.g. "app[0].hosts"; may be empty
	Msg  string // lower-case, without the file, line or key
}

// Error returns "file:line: key: msg", leaving out the parts that are empty.
func (e Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Key != "" {
		if b.Len() > 0 {
			b.WriteString(": ")
		}
		b.WriteString(e.Key)
	}
	if b.Len() > 0 {
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors is every problem found in a config, in file order. Load and Parse
// return it, never an empty one, as their error.
type Errors []Error

// Error returns one line per error.
func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap returns each Error, so errors.As finds the first one.
func (es Errors) Unwrap() []error {
	errs := make([]error, len(es))
	for i, e := range es {
		errs[i] = e
	}
	return errs
}

// sorted orders the errors by file (in the order the files first appear)
// and then by line, keeping the order of errors on the same line.
func (es Errors) sorted() Errors {
	rank := make(map[string]int)
	for _, e := range es {
		if _, ok := rank[e.File]; !ok {
			rank[e.File] = len(rank)
		}
	}
	out := slices.Clone(es)
	slices.SortStableFunc(out, func(a, b Error) int {
		return cmp.Or(cmp.Compare(rank[a.File], rank[b.File]), cmp.Compare(a.Line, b.Line))
	})
	return out
}
