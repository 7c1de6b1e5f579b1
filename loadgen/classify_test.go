package loadgen

import (
	"net/http"
	"testing"
	"time"
)

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		name       string
		timing     []string // Server-Timing lines
		wantClass  Class
		wantReplay time.Duration
	}{
		{"godwit direct", []string{"route;dur=0.012, queue;dur=0.000, replay;dur=0.000, upstream;dur=1.234"}, Direct, 0},
		{"godwit replayed", []string{"route;dur=0.012, queue;dur=0.000, replay;dur=20.412, upstream;dur=1.234"}, Replayed, 20412 * time.Microsecond},
		{"godwit woke and replayed", []string{"route;dur=0.010, queue;dur=0.000, wake;dur=310.000, replay;dur=0.001, upstream;dur=0.500"}, Replayed, time.Microsecond},
		{"no header", nil, Unclassified, 0},
		{"no replay phase", []string{"route;dur=0.012, upstream;dur=1.234"}, Unclassified, 0},
		{"another server's timing", []string{"db;dur=53, app;dur=47.2"}, Unclassified, 0},
		{"replay without dur", []string{"replay;desc=\"x\", upstream;dur=1"}, Unclassified, 0},
		{"replay with a bad dur", []string{"replay;dur=soon"}, Unclassified, 0},
		{"negative dur", []string{"replay;dur=-1"}, Unclassified, 0},
		{"quoted dur", []string{`replay;dur="2.5"`}, Replayed, 2500 * time.Microsecond},
		{"spaces and case", []string{" Route ; dur=1 ,  REPLAY ; DUR = 3 "}, Replayed, 3 * time.Millisecond},
		{"on a second line", []string{"cache;dur=1", "replay;dur=0.000"}, Direct, 0},
		{"the first replay decides", []string{"replay;dur=0, replay;dur=5"}, Direct, 0},
		{"integer ms", []string{"replay;dur=20"}, Replayed, 20 * time.Millisecond},
		{"huge dur", []string{"replay;dur=1e300"}, Unclassified, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			for _, v := range tc.timing {
				h.Add("Server-Timing", v)
			}
			c, d := Classify(h)
			if c != tc.wantClass || d != tc.wantReplay {
				t.Errorf("Classify(Server-Timing %q): got %s, %v; want %s, %v", tc.timing, c, d, tc.wantClass, tc.wantReplay)
			}
		})
	}
	if c, d := Classify(nil); c != Unclassified || d != 0 {
		t.Errorf("Classify(nil): got %s, %v; want unclassified, 0", c, d)
	}
}

func TestServerTimingPhaseAllocs(t *testing.T) {
	h := http.Header{"Server-Timing": {"route;dur=0.012, queue;dur=0.000, replay;dur=20.412, upstream;dur=1.234"}}
	if n := testing.AllocsPerRun(100, func() { ServerTimingPhase(h, "replay") }); n != 0 {
		t.Errorf("ServerTimingPhase: got %v allocations per call, want 0", n)
	}
}

func FuzzServerTimingPhase(f *testing.F) {
	for _, s := range []string{
		"route;dur=0.012, queue;dur=0.000, replay;dur=20.412, upstream;dur=1.234",
		"replay;dur=\"1\"", "replay", "replay;dur=", ",,;;==", "replay;dur=NaN", "replay;dur=+Inf",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		d, ok := ServerTimingPhase(http.Header{"Server-Timing": {v}}, "replay")
		if d < 0 || (!ok && d != 0) {
			t.Errorf("ServerTimingPhase(%q): got %v, %v; want a duration >= 0, and 0 when not ok", v, d, ok)
		}
		c, r := Classify(http.Header{"Server-Timing": {v}})
		if (c == Replayed) != (r > 0) {
			t.Errorf("Classify(%q): got %s with replay %v; want replayed exactly when the phase is > 0", v, c, r)
		}
	})
}
