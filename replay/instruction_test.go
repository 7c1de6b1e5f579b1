package replay

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseHeader(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want Instruction
	}{
		{"single region", "region=iad", Instruction{Regions: []string{"iad"}}},
		{"region upper-case", "region=IAD", Instruction{Regions: []string{"iad"}}},
		{"quoted region list", `region="iad,ord,us,na"`, Instruction{Regions: []string{"iad", "ord", "us", "na"}}},
		{"quoted list with spaces", `region=" sjc , any "`, Instruction{Regions: []string{"sjc", "any"}}},
		{"unquoted list", "region=iad,ord;app=x", Instruction{Regions: []string{"iad", "ord"}, App: "x"}},
		{"instance", "instance=00bb33ff", Instruction{Instance: "00bb33ff"}},
		{"prefer_instance", "prefer_instance=00bb33ff", Instruction{PreferInstance: "00bb33ff"}},
		{"region and instance", "region=iad;instance=abc", Instruction{Regions: []string{"iad"}, Instance: "abc"}},
		{"app", "app=target-app", Instruction{App: "target-app"}},
		{"state", "state=some-state", Instruction{State: "some-state"}},
		{"state with =", "state=a=b", Instruction{State: "a=b"}},
		{"state quoted with ; and ,", `state="a;b,c"`, Instruction{State: "a;b,c"}},
		{"state escapes", `state="say \"hi\" \\o/"`, Instruction{State: `say "hi" \o/`}},
		{"state other escape", `state="\a"`, Instruction{State: "a"}},
		{"state empty", "state=;app=x", Instruction{App: "x"}},
		{"state quoted keeps spaces", `state=" x "`, Instruction{State: " x "}},
		{"state unquoted comma", "state=a,b", Instruction{State: "a,b"}},
		{"elsewhere true", "elsewhere=true", Instruction{Elsewhere: true}},
		{"elsewhere TRUE", "elsewhere=TRUE", Instruction{Elsewhere: true}},
		{"elsewhere 1", "elsewhere=1", Instruction{Elsewhere: true}},
		{"elsewhere false", "elsewhere=false;app=a", Instruction{App: "a"}},
		{"elsewhere 0", "elsewhere=0;app=a", Instruction{App: "a"}},
		{"timeout", "timeout=10s", Instruction{Timeout: 10 * time.Second}},
		{"timeout ms", "timeout=800ms", Instruction{Timeout: 800 * time.Millisecond}},
		{"timeout 1h", "timeout=1h", Instruction{Timeout: time.Hour}},
		{"fallback force_self", "app=w;timeout=10s;fallback=force_self",
			Instruction{App: "w", Timeout: 10 * time.Second, Fallback: FallbackForceSelf}},
		{"fallback prefer_self", "fallback=Prefer_Self", Instruction{Fallback: FallbackPreferSelf}},
		{"fallback alone", "fallback=force_self", Instruction{Fallback: FallbackForceSelf}},
		{"docs example", `region="sjc,any";app=target-app`, Instruction{Regions: []string{"sjc", "any"}, App: "target-app"}},
		{"keys case-insensitive", "REGION=iad;App=x", Instruction{Regions: []string{"iad"}, App: "x"}},
		{"whitespace", " region = iad ;\tapp = x ; ", Instruction{Regions: []string{"iad"}, App: "x"}},
		{"whitespace around quoted", `region = "iad,ord" ; app=x`, Instruction{Regions: []string{"iad", "ord"}, App: "x"}},
		{"empty fields skipped", ";;app=x;;", Instruction{App: "x"}},
		{"comma separator", "app=x,state=y", Instruction{App: "x", State: "y"}},
		{"comma separator with space", "app=x, state=y", Instruction{App: "x", State: "y"}},
		{"comma separator after quoted", `region="iad,ord",app=x`, Instruction{Regions: []string{"iad", "ord"}, App: "x"}},
		{"comma separator after region", "region=iad,ord,app=x", Instruction{Regions: []string{"iad", "ord"}, App: "x"}},
		{"unknown key recorded", "app=x;future=1;Other=\"a;b\"", Instruction{App: "x", Unknown: []string{"future", "other"}}},
		{"state 4 KiB", "state=" + strings.Repeat("s", MaxStateBytes), Instruction{State: strings.Repeat("s", MaxStateBytes)}},
		{"tab in quoted state", "state=\"a\tb\"", Instruction{State: "a\tb"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseHeader(tt.in)
			if err != nil {
				t.Fatalf("ParseHeader(%q): %v", tt.in, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseHeader(%q)\n got %+v\nwant %+v", tt.in, got, tt.want)
			}
		})
	}
}

func TestParseHeaderErrors(t *testing.T) {
	tests := []struct {
		name, in, field string
	}{
		{"empty", "", "header"},
		{"blank", "  \t", "header"},
		{"only separators", ";;", "header"},
		{"key without =", "region", "region"},
		{"key without = then field", "elsewhere;app=x", "elsewhere"},
		{"no key", "=iad", "header"},
		{"bad key char", "reg!on=iad", "reg"},
		{"empty region", "region=", "region"},
		{"empty quoted region", `region=""`, "region"},
		{"empty region element", `region="iad,,ord"`, "region"},
		{"trailing comma region", "region=iad,", "region"},
		{"region too short", "region=i", "region"},
		{"region too long", "region=abcdefghijk", "region"},
		{"region bad char", "region=ia_d", "region"},
		{"region dot", `region="iad,o.rd"`, "region"},
		{"quoted list never split", `region="iad,app=x"`, "region"},
		{"empty instance", "instance=", "instance"},
		{"empty prefer_instance", "prefer_instance=", "prefer_instance"},
		{"empty app", "app=;region=iad", "app"},
		{"app not a token", `app="a b"`, "app"},
		{"empty fallback", "fallback=", "fallback"},
		{"bad fallback", "fallback=self", "fallback"},
		{"empty timeout", "timeout=", "timeout"},
		{"timeout bare integer", "timeout=10", "timeout"},
		{"timeout zero", "timeout=0s", "timeout"},
		{"timeout negative", "timeout=-1s", "timeout"},
		{"timeout over 1h", "timeout=61m", "timeout"},
		{"timeout garbage", "timeout=soon", "timeout"},
		{"elsewhere bad", "elsewhere=yes", "elsewhere"},
		{"elsewhere empty", "elsewhere=", "elsewhere"},
		{"unterminated quote", `state="abc`, "state"},
		{"unterminated escape", `state="abc\`, "state"},
		{"garbage after quote", `state="abc"def`, "state"},
		{"quote inside unquoted", `state=ab"c`, "state"},
		{"duplicate key", "app=a;app=b", "app"},
		{"duplicate key case", "app=a;APP=b", "app"},
		{"duplicate unknown key", "x=1;x=2", "x"},
		{"control char unquoted", "state=a\x01b", "state"},
		{"control char quoted", "state=\"a\nb\"", "state"},
		{"DEL", "state=a\x7fb", "state"},
		{"control char as key", "\x00=1", "header"},
		{"NUL in key position", "app=x;\x00", "header"},
		{"value over 1 KiB", "app=" + strings.Repeat("a", MaxValueBytes+1), "app"},
		{"unknown value over 1 KiB", "future=" + strings.Repeat("a", MaxValueBytes+1), "future"},
		{"state over 4 KiB", "state=" + strings.Repeat("s", MaxStateBytes+1), "state"},
		{"header over 16 KiB", "state=" + strings.Repeat(";", MaxHeaderBytes), "header"},
		{"instance and prefer_instance", "instance=a;prefer_instance=b", "prefer_instance"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseHeader(tt.in)
			if err == nil {
				t.Fatalf("ParseHeader(%q) = %+v, want an error", tt.in, got)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("ParseHeader(%q): errors.Is(%v, ErrInvalid) = false, want true", tt.in, err)
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("ParseHeader(%q): error %T, want *Error", tt.in, err)
			}
			if e.Field != tt.field {
				t.Errorf("ParseHeader(%q): Field = %q, want %q (error %v)", tt.in, e.Field, tt.field, err)
			}
			if !strings.HasPrefix(err.Error(), "fly-replay: "+tt.field+": ") {
				t.Errorf("ParseHeader(%q): Error() = %q, want prefix %q", tt.in, err, "fly-replay: "+tt.field+": ")
			}
			if !reflect.DeepEqual(got, Instruction{}) {
				t.Errorf("ParseHeader(%q) with error returned %+v, want the zero Instruction", tt.in, got)
			}
		})
	}
}

func TestHeader(t *testing.T) {
	tests := []struct {
		name string
		in   Instruction
		want string
	}{
		{"zero", Instruction{}, ""},
		{"all fields", Instruction{
			Regions: []string{"sjc", "any"}, Instance: "i1", App: "a",
			State: "s", Elsewhere: true, Timeout: 800 * time.Millisecond, Fallback: FallbackPreferSelf,
		}, `region="sjc,any";instance=i1;app=a;elsewhere=true;timeout=800ms;fallback=prefer_self;state=s`},
		{"single region unquoted", Instruction{Regions: []string{"iad"}}, "region=iad"},
		{"prefer_instance", Instruction{PreferInstance: "p"}, "prefer_instance=p"},
		{"state quoted", Instruction{State: `a;b "c" \d`}, `state="a;b \"c\" \\d"`},
		{"state with = unquoted", Instruction{State: "a=b"}, "state=a=b"},
		{"state with comma quoted", Instruction{State: "a,b=c"}, `state="a,b=c"`},
		{"JSON-only fields left out", Instruction{App: "a", AllowBypass: true, Cache: CacheSpec{Invalidate: true}}, "app=a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.in.Header(); got != tt.want {
				t.Errorf("Header() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestHeaderRoundTrip(t *testing.T) {
	for _, h := range []string{
		`region="sjc,any";app=target-app`,
		`state="x;y,z \"q\" \\";region=IAD`,
		"app=x,state=a,b",
		"instance=abc;timeout=1h0m0s;fallback=force_self;elsewhere=1",
		"state=\" \t \"",
	} {
		in, err := ParseHeader(h)
		if err != nil {
			t.Fatalf("ParseHeader(%q): %v", h, err)
		}
		again, err := ParseHeader(in.Header())
		if err != nil {
			t.Fatalf("ParseHeader(%q) (from %q): %v", in.Header(), h, err)
		}
		if !reflect.DeepEqual(again, in) {
			t.Errorf("round trip of %q via %q:\n got %+v\nwant %+v", h, in.Header(), again, in)
		}
	}
}

func TestFallbackString(t *testing.T) {
	for f, want := range map[Fallback]string{FallbackNone: "", FallbackForceSelf: "force_self", FallbackPreferSelf: "prefer_self", 9: ""} {
		if got := f.String(); got != want {
			t.Errorf("Fallback(%d).String() = %q, want %q", f, got, want)
		}
	}
}
