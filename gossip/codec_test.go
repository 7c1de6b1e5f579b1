package gossip

import (
	"bytes"
	"encoding/binary"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/serf/coordinate"
)

func TestRecordRoundTrip(t *testing.T) {
	recs := []Record{
		{ID: "m1", App: "web", Region: "iad", Addr: "10.0.0.1:8080", Owner: "edge-iad-1", State: "started",
			Healthy: true, Soft: 20, Hard: 25, Band: 2, Version: math.MaxUint64, Updated: time.Unix(1, 2)},
		{ID: "m2", Owner: "o", Deleted: true, Soft: -1, Hard: math.MaxInt32},
	}
	for _, kind := range []byte{kindUpdate, kindState} {
		got, err := decodeRecords(encodeRecords(kind, recs), kind)
		if err != nil || !reflect.DeepEqual(got, recs) {
			t.Errorf("kind %d: round trip = %+v, %v; want %+v", kind, got, err, recs)
		}
	}
	if got, err := decodeRecords(encodeRecords(kindState, nil), kindState); err != nil || len(got) != 0 {
		t.Errorf("empty state: %+v, %v", got, err)
	}
}

// TestRecordForwardCompatible: fields a later format appends to a record
// are skipped.
func TestRecordForwardCompatible(t *testing.T) {
	r := Record{ID: "m1", Owner: "o", State: "started", Version: 3}
	body := appendRecord(nil, &r)
	body = append(body, "future field"...)
	msg := []byte{wireVersion, kindUpdate, 1}
	msg = binary.AppendUvarint(msg, uint64(len(body)))
	msg = append(msg, body...)
	got, err := decodeRecords(msg, kindUpdate)
	if err != nil || len(got) != 1 || got[0] != r {
		t.Fatalf("decode with an appended field = %+v, %v; want %+v", got, err, r)
	}
}

func TestDecodeRecordsErrors(t *testing.T) {
	good := encodeRecords(kindUpdate, []Record{{ID: "m", Owner: "o"}})
	huge := []byte{wireVersion, kindUpdate}
	huge = binary.AppendUvarint(huge, 1<<40)
	long := encodeRecords(kindUpdate, []Record{{ID: strings.Repeat("x", maxStringBytes+1), Owner: "o"}})
	cases := []struct {
		name string
		buf  []byte
		want string
	}{
		{"empty", nil, "truncated"},
		{"newer format", append([]byte{2}, good[1:]...), "unknown format version 2"},
		{"wrong kind", encodeRecords(kindState, nil), "message kind 2, want 1"},
		{"truncated", good[:len(good)-1], "truncated"},
		{"trailing bytes", append(append([]byte(nil), good...), 0), "after the last record"},
		{"count beyond the size", huge, "claims"},
		{"string too long", long, "longer than 1024"},
		{"no owner", encodeRecords(kindUpdate, []Record{{ID: "m"}}), "without id or owner"},
		{"no id", encodeRecords(kindUpdate, []Record{{Owner: "o"}}), "without id or owner"},
		{"limit overflow", encodeRecords(kindUpdate, []Record{{ID: "m", Owner: "o", Soft: math.MaxInt32 + 1}}), "out of range"},
	}
	for _, c := range cases {
		got, err := decodeRecords(c.buf, kindUpdate)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: decode = %+v, %v; want an error with %q", c.name, got, err, c.want)
		}
	}
}

func TestMetaRoundTrip(t *testing.T) {
	fp := strings.Repeat("ab", 32)
	for _, m := range []meta{
		{Region: "iad", BackhaulAddr: "10.0.0.1:4433", Fingerprint: fp},
		{Region: "fra"},
		{Region: strings.Repeat("r", maxRegionBytes), BackhaulAddr: strings.Repeat("a", maxAddrBytes), Fingerprint: fp},
	} {
		b := encodeMeta(m)
		if len(b) > 512 {
			t.Errorf("meta of %d bytes, over memberlist's 512", len(b))
		}
		got, err := decodeMeta(b)
		if err != nil || got != m {
			t.Errorf("meta round trip = %+v, %v; want %+v", got, err, m)
		}
	}
	for _, bad := range [][]byte{nil, {2}, {1, 3, 'i'}, append(encodeMeta(meta{Region: "x"})[:3], 3, 1, 2, 3)} {
		if m, err := decodeMeta(bad); err == nil {
			t.Errorf("decodeMeta(%x) = %+v, want an error", bad, m)
		}
	}
}

func TestCoordRoundTrip(t *testing.T) {
	co := coordinate.NewCoordinate(coordinate.DefaultConfig())
	co.Vec[3], co.Error, co.Adjustment, co.Height = 0.012, 0.5, -0.001, 0.0002
	b := encodeCoord(co)
	if len(b) != 90 {
		t.Errorf("coordinate payload of %d bytes, want 90", len(b))
	}
	got, err := decodeCoord(b, 8)
	if err != nil || !reflect.DeepEqual(got, co) {
		t.Fatalf("coordinate round trip = %+v, %v; want %+v", got, err, co)
	}
	nan := co.Clone()
	nan.Vec[0] = math.NaN()
	far := co.Clone()
	far.Height = 1e9
	for name, buf := range map[string][]byte{
		"empty":            nil,
		"other dimensions": encodeCoord(&coordinate.Coordinate{Vec: make([]float64, 3)}),
		"NaN":              encodeCoord(nan),
		"out of range":     encodeCoord(far),
		"truncated":        b[:len(b)-1],
		"trailing":         append(bytes.Clone(b), 0),
		"newer format":     append([]byte{9}, b[1:]...),
	} {
		if got, err := decodeCoord(buf, 8); err == nil {
			t.Errorf("%s: decodeCoord = %+v, want an error", name, got)
		}
	}
}

func TestLeaveRoundTrip(t *testing.T) {
	name, at, err := decodeLeave(encodeLeave("edge-a", 42))
	if err != nil || name != "edge-a" || at != 42 {
		t.Fatalf("leave round trip = %q, %d, %v", name, at, err)
	}
	for _, bad := range [][]byte{nil, {1, kindLeave}, {1, kindLeave, 0, 0}, {1, kindUpdate, 1, 'a', 0}} {
		if _, _, err := decodeLeave(bad); err == nil {
			t.Errorf("decodeLeave(%x) succeeded", bad)
		}
	}
}

// FuzzDecode feeds arbitrary bytes to every decoder of peer input: none
// may panic, and whatever decodes must encode back to an equal value.
func FuzzDecode(f *testing.F) {
	f.Add(encodeRecords(kindUpdate, []Record{{ID: "m1", App: "web", Region: "iad", Addr: "10.0.0.1:80", Owner: "o", State: "started", Healthy: true, Soft: 2, Hard: 3, Band: 1, Version: 7, Updated: time.Unix(0, 99)}}))
	f.Add(encodeRecords(kindState, []Record{{ID: "a", Owner: "o"}, {ID: "b", Owner: "p", Deleted: true}}))
	f.Add(encodeMeta(meta{Region: "iad", BackhaulAddr: "10.0.0.1:4433", Fingerprint: strings.Repeat("0f", 32)}))
	f.Add(encodeCoord(coordinate.NewCoordinate(coordinate.DefaultConfig())))
	f.Add(encodeLeave("edge-a", 1))
	f.Add([]byte{})
	f.Add([]byte{1, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, buf []byte) {
		for _, kind := range []byte{kindUpdate, kindState} {
			if recs, err := decodeRecords(buf, kind); err == nil {
				again, err := decodeRecords(encodeRecords(kind, recs), kind)
				if err != nil || !reflect.DeepEqual(again, recs) {
					t.Fatalf("records re-encoded decode to %+v, %v; want %+v", again, err, recs)
				}
			}
		}
		if m, err := decodeMeta(buf); err == nil {
			if again, err := decodeMeta(encodeMeta(m)); err != nil || again != m {
				t.Fatalf("meta re-encoded decodes to %+v, %v; want %+v", again, err, m)
			}
		}
		if co, err := decodeCoord(buf, 8); err == nil {
			if again, err := decodeCoord(encodeCoord(co), 8); err != nil || !reflect.DeepEqual(again, co) {
				t.Fatalf("coordinate re-encoded decodes to %+v, %v; want %+v", again, err, co)
			}
		}
		if name, at, err := decodeLeave(buf); err == nil {
			if n2, a2, err := decodeLeave(encodeLeave(name, at)); err != nil || n2 != name || a2 != at {
				t.Fatalf("leave re-encoded decodes to %q, %d, %v", n2, a2, err)
			}
		}
	})
}
