package benchcmd

import (
	"flag"
	"io"
	"slices"
	"testing"
	"time"
)

func TestParseQuick(t *testing.T) {
	for _, tc := range []struct {
		name       string
		args       []string
		wantRounds int
		wantDur    time.Duration
		wantErr    bool
	}{
		{"defaults", nil, 5, 10 * time.Second, false},
		{"quick", []string{"-quick"}, 1, 2 * time.Second, false},
		{"quick: explicit flags still win", []string{"-quick", "-rounds", "3"}, 3, 2 * time.Second, false},
		{"quick after an explicit flag", []string{"-duration", "7s", "-quick"}, 1, 7 * time.Second, false},
		{"positional argument", []string{"extra"}, 0, 0, true},
	} {
		fs := flag.NewFlagSet("test", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		fs.Bool("quick", false, "")
		rounds := fs.Int("rounds", 5, "")
		dur := fs.Duration("duration", 10*time.Second, "")
		err := Parse(fs, tc.args, map[string]string{"rounds": "1", "duration": "2s"})
		if (err != nil) != tc.wantErr {
			t.Errorf("%s: Parse(%q) error %v, want error %v", tc.name, tc.args, err, tc.wantErr)
			continue
		}
		if err == nil && (*rounds != tc.wantRounds || *dur != tc.wantDur) {
			t.Errorf("%s: Parse(%q): -rounds %d -duration %v, want %d %v", tc.name, tc.args, *rounds, *dur, tc.wantRounds, tc.wantDur)
		}
	}
}

func TestParseQuickUnknownFlag(t *testing.T) {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.Bool("quick", false, "")
	if err := Parse(fs, []string{"-quick"}, map[string]string{"nope": "1"}); err == nil {
		t.Errorf("Parse with a -quick setting for a missing flag: no error, want one")
	}
}

func TestList(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"h1,h2,h3", []string{"h1", "h2", "h3"}},
		{"1, 64", []string{"1", "64"}},
		{",a,,b ,", []string{"a", "b"}},
	} {
		if got := List(tc.in); !slices.Equal(got, tc.want) {
			t.Errorf("List(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
