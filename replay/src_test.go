package replay

import (
	"errors"
	"testing"
	"time"
)

func TestSrcString(t *testing.T) {
	ts := time.UnixMicro(1_700_000_000_123_456)
	tests := []struct {
		name string
		src  Src
		want string
	}{
		{"all", Src{Instance: "00bb33ff", Region: "iad", T: ts, State: "s1"}, "instance=00bb33ff;region=iad;t=1700000000123456;state=s1"},
		{"no state", Src{Instance: "i", Region: "ams", T: ts}, "instance=i;region=ams;t=1700000000123456"},
		{"state with = and ;", Src{Instance: "i", State: "a=b;c=d;"}, "instance=i;state=a=b;c=d;"},
		{"zero", Src{}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.src.String(); got != tt.want {
				t.Errorf("String() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestParseSrc(t *testing.T) {
	ts := time.UnixMicro(1_700_000_000_123_456).UTC()
	tests := []struct {
		name, in string
		want     Src
	}{
		{"all", "instance=00bb33ff;region=iad;t=1700000000123456;state=s1", Src{"00bb33ff", "iad", ts, "s1"}},
		{"state with = and ;", "instance=i;region=r;t=1700000000123456;state=a=b;c;d=", Src{"i", "r", ts, "a=b;c;d="}},
		{"state trailing ;", "state=x;", Src{State: "x;"}},
		{"state verbatim spaces", "state= x ; y", Src{State: " x ; y"}},
		{"empty state", "instance=i;state=", Src{Instance: "i"}},
		{"whitespace", " instance = i ; region=r ", Src{Instance: "i", Region: "r"}},
		{"unknown key ignored", "instance=i;v=2", Src{Instance: "i"}},
		{"empty", "", Src{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseSrc(tt.in)
			if err != nil {
				t.Fatalf("ParseSrc(%q): %v", tt.in, err)
			}
			if !srcEqual(got, tt.want) {
				t.Errorf("ParseSrc(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
			again, err := ParseSrc(got.String())
			if err != nil || !srcEqual(again, got) {
				t.Errorf("ParseSrc(%q) = %+v, %v; want %+v (round trip)", got.String(), again, err, got)
			}
		})
	}
}

func TestParseSrcErrors(t *testing.T) {
	tests := []struct {
		name, in, field string
	}{
		{"no =", "instance", "fly-replay-src"},
		{"empty key", "=x", "fly-replay-src"},
		{"bad t", "t=soon", "fly-replay-src.t"},
		{"duplicate", "region=a;region=b", "fly-replay-src.region"},
		{"control", "state=a\nb", "fly-replay-src"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseSrc(tt.in)
			var e *Error
			if !errors.Is(err, ErrInvalid) || !errors.As(err, &e) || e.Field != tt.field {
				t.Errorf("ParseSrc(%q) error = %v, want ErrInvalid with Field %q", tt.in, err, tt.field)
			}
		})
	}
}

func TestSrcRoundTrip(t *testing.T) {
	for _, s := range []Src{
		{Instance: "00bb33ff", Region: "iad", T: time.UnixMicro(1_700_000_000_000_001).UTC(), State: "token=abc;x=y"},
		{Region: "ams", State: ";;=;"},
		{T: time.Unix(0, 0).UTC()},
	} {
		got, err := ParseSrc(s.String())
		if err != nil || !srcEqual(got, s) {
			t.Errorf("ParseSrc(%q) = %+v, %v; want %+v", s.String(), got, err, s)
		}
	}
}

func srcEqual(a, b Src) bool {
	return a.Instance == b.Instance && a.Region == b.Region && a.State == b.State && a.T.Equal(b.T)
}

func TestFailedString(t *testing.T) {
	tests := []struct {
		name string
		f    Failed
		want string
	}{
		{"docs example", Failed{Instance: "00bb33ff", App: "target-app", Region: "iad", ReplaySource: "11aa44ee", Reason: ReasonTimeout, Elapsed: 10 * time.Second},
			"instance=00bb33ff;app=target-app;region=iad;replay_source=11aa44ee;reason=timeout;elapsed_ms=10000"},
		{"no candidate", Failed{App: "a", ReplaySource: "s", Reason: ReasonNoCandidate, Elapsed: 1500 * time.Microsecond},
			"app=a;replay_source=s;reason=no_candidate;elapsed_ms=1"},
		{"retries", Failed{Reason: ReasonRetriesExhausted}, "reason=retries_exhausted;elapsed_ms=0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.f.String(); got != tt.want {
				t.Errorf("String() = %q, want %q", got, tt.want)
			}
		})
	}
}
