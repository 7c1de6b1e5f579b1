package config

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
)

// A TOML document is read twice. toml.Unmarshal checks that it is valid
// TOML (syntax, duplicate keys, redefined tables, malformed numbers and
// dates) and reports the first violation with its position. The unstable
// parser then walks the same, now known-good, document into a tree of values
// that remember the line they were written on, so that every later error can
// name its line and all of them can be reported, not only the first.

// kind is the TOML type of a value.
type kind uint8

const (
	kindTable kind = iota + 1
	kindArray
	kindString
	kindInteger
	kindFloat
	kindBool
	kindDateTime
)

func (k kind) String() string {
	switch k {
	case kindTable:
		return "a table"
	case kindArray:
		return "an array"
	case kindString:
		return "a string"
	case kindInteger:
		return "an integer"
	case kindFloat:
		return "a float"
	case kindBool:
		return "a boolean"
	case kindDateTime:
		return "a date-time"
	}
	return "an unknown value"
}

// value is one TOML value and the line it starts on.
type value struct {
	kind kind
	line int // of the key, the table header or, for array elements, the element

	str string // kindString; the raw text for kindDateTime
	num int64  // kindInteger
	b   bool   // kindBool
	tab *table // kindTable
	arr []*value

	implicit   bool // a table only named as the parent of another ([a.b] or a.b = 1)
	tableArray bool // an array made by [[header]]
}

// describe names the value's type for messages, telling an array of tables
// from other arrays.
func (v *value) describe() string {
	if v.kind == kindArray && v.tableArray {
		return "an array of tables"
	}
	return v.kind.String()
}

// table is a TOML table with its keys in document order.
type table struct {
	keys []string
	vals map[string]*value
}

func newTable(line int) *value {
	return &value{kind: kindTable, line: line, tab: &table{vals: make(map[string]*value)}}
}

func (t *table) get(k string) *value { return t.vals[k] }

func (t *table) set(k string, v *value) {
	t.keys = append(t.keys, k)
	t.vals[k] = v
}

// parseTree parses data, the contents of file, into a table of values. A
// document that is not valid TOML gives a single error: its position is
// known but nothing after it can be trusted.
func parseTree(data []byte, file string) (*value, Errors) {
	var doc map[string]any
	if err := toml.Unmarshal(data, &doc); err != nil {
		var de *toml.DecodeError
		if errors.As(err, &de) {
			// The message names the key; de.Key() may be relative to the
			// current table, so it is not given as Error.Key.
			line, _ := de.Position()
			return nil, Errors{{File: file, Line: line, Msg: strings.TrimPrefix(de.Error(), "toml: ")}}
		}
		return nil, Errors{{File: file, Msg: err.Error()}}
	}

	b := &treeBuilder{file: file}
	for i, c := range data {
		if c == '\n' {
			b.newlines = append(b.newlines, i)
		}
	}
	root := newTable(1)
	cur := root.tab
	var p unstable.Parser
	p.Reset(data)
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			cur = b.header(root.tab, e)
		case unstable.KeyValue:
			if cur != nil {
				b.keyValue(cur, e)
			}
		}
	}
	if err := p.Error(); err != nil && len(b.errs) == 0 {
		// Not expected after toml.Unmarshal accepted the document.
		b.errs = append(b.errs, Error{File: file, Msg: err.Error()})
	}
	if len(b.errs) > 0 {
		return nil, b.errs
	}
	return root, nil
}

type treeBuilder struct {
	file     string
	newlines []int // offsets of '\n' in the document
	errs     Errors
}

// lineOf returns the 1-based line of a node, or def if the node has no
// position (arrays do not).
func (b *treeBuilder) lineOf(n *unstable.Node, def int) int {
	if n == nil || n.Raw.Length == 0 && n.Raw.Offset == 0 {
		return def
	}
	off := int(n.Raw.Offset)
	i, _ := slices.BinarySearch(b.newlines, off)
	return i + 1
}

// keyParts returns the parts of a (dotted) key and the line it starts on.
func (b *treeBuilder) keyParts(it unstable.Iterator) ([]string, int) {
	var parts []string
	line := 0
	for it.Next() {
		n := it.Node()
		if line == 0 {
			line = b.lineOf(n, 0)
		}
		parts = append(parts, string(n.Data))
	}
	return parts, line
}

func (b *treeBuilder) conflict(line int, parts []string, msg string) {
	b.errs = append(b.errs, Error{File: b.file, Line: line, Key: strings.Join(parts, "."), Msg: msg})
}

// descend walks from t through the tables named by parts, creating the
// missing ones; an array of tables stands for its last element.
func (b *treeBuilder) descend(t *table, parts []string, line int) *table {
	for i, k := range parts {
		v := t.get(k)
		switch {
		case v == nil:
			v = newTable(line)
			v.implicit = true
			t.set(k, v)
		case v.kind == kindArray && v.tableArray && len(v.arr) > 0:
			v = v.arr[len(v.arr)-1]
		case v.kind != kindTable:
			b.conflict(line, parts[:i+1], "already defined as "+v.describe())
			return nil
		}
		t = v.tab
	}
	return t
}

// header handles [a.b] and [[a.b]] and returns the table that the following
// key/values go into (nil after a conflict).
func (b *treeBuilder) header(root *table, e *unstable.Node) *table {
	parts, line := b.keyParts(e.Key())
	if len(parts) == 0 {
		return nil
	}
	t := b.descend(root, parts[:len(parts)-1], line)
	if t == nil {
		return nil
	}
	last := parts[len(parts)-1]
	v := t.get(last)
	if e.Kind == unstable.ArrayTable {
		if v == nil {
			v = &value{kind: kindArray, line: line, tableArray: true}
			t.set(last, v)
		} else if v.kind != kindArray || !v.tableArray {
			b.conflict(line, parts, "already defined as "+v.describe())
			return nil
		}
		elem := newTable(line)
		v.arr = append(v.arr, elem)
		return elem.tab
	}
	switch {
	case v == nil:
		v = newTable(line)
		t.set(last, v)
	case v.kind == kindTable && v.implicit:
		v.implicit = false
		v.line = line
	default:
		b.conflict(line, parts, "already defined as "+v.describe())
		return nil
	}
	return v.tab
}

// keyValue stores a key/value expression (top-level or in an inline table)
// into t.
func (b *treeBuilder) keyValue(t *table, e *unstable.Node) {
	parts, line := b.keyParts(e.Key())
	if len(parts) == 0 {
		return
	}
	t = b.descend(t, parts[:len(parts)-1], line)
	if t == nil {
		return
	}
	last := parts[len(parts)-1]
	if t.get(last) != nil {
		b.conflict(line, parts, "defined twice")
		return
	}
	v := b.value(e.Value(), line)
	if v != nil {
		t.set(last, v)
	}
}

// value converts a parsed value; line is where its key is.
func (b *treeBuilder) value(n *unstable.Node, line int) *value {
	if n == nil {
		return nil
	}
	switch n.Kind {
	case unstable.String:
		return &value{kind: kindString, line: line, str: string(n.Data)}
	case unstable.Bool:
		return &value{kind: kindBool, line: line, b: bytes.Equal(n.Data, []byte("true"))}
	case unstable.Integer:
		i, err := strconv.ParseInt(string(n.Data), 0, 64)
		if err != nil {
			b.errs = append(b.errs, Error{File: b.file, Line: line, Msg: fmt.Sprintf("bad integer %s", n.Data)})
			return nil
		}
		return &value{kind: kindInteger, line: line, num: i}
	case unstable.Float:
		return &value{kind: kindFloat, line: line, str: string(n.Data)}
	case unstable.LocalDate, unstable.LocalTime, unstable.LocalDateTime, unstable.DateTime:
		return &value{kind: kindDateTime, line: line, str: string(n.Data)}
	case unstable.Array:
		v := &value{kind: kindArray, line: line}
		it := n.Children()
		for it.Next() {
			c := it.Node()
			if c.Kind == unstable.Comment {
				continue
			}
			if e := b.value(c, b.lineOf(c, line)); e != nil {
				v.arr = append(v.arr, e)
			}
		}
		return v
	case unstable.InlineTable:
		v := newTable(b.lineOf(n, line))
		it := n.Children()
		for it.Next() {
			if c := it.Node(); c.Kind == unstable.KeyValue {
				b.keyValue(v.tab, c)
			}
		}
		return v
	}
	return nil
}
