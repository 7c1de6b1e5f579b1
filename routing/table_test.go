package routing

import (
	"errors"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/godwit/godwit/config"
)

func TestAppForHost(t *testing.T) {
	apps := []config.App{
		testApp("web", 20, 0, "example.com", "WWW.Example.COM"),
		testApp("v4", 20, 0, "192.0.2.1"),
		testApp("v6", 20, 0, "::1", "[2001:db8::1]"),
	}
	tab := NewTable("ams", apps, nil)
	tests := []struct {
		host string
		want string // app name, "" for none
	}{
		{"example.com", "web"},
		{"example.com:8080", "web"},
		{"example.com:", "web"},
		{"EXAMPLE.COM", "web"},
		{"Example.Com:443", "web"},
		{"www.example.com", "web"},
		{"www.EXAMPLE.com:80", "web"},
		{"192.0.2.1", "v4"},
		{"192.0.2.1:8080", "v4"},
		{"[::1]:8080", "v6"},
		{"[::1]", "v6"},
		{"::1", "v6"},
		{"[2001:DB8::1]:443", "v6"},
		{"2001:db8::1", "v6"},
		{"[2001:db8::1]", "v6"},
		{"unknown.example", ""},
		{"", ""},
		{":8080", ""},
		{"sub.example.com", ""},
		{"example.com.evil", ""},
		{"[::2]:80", ""},
		{"[::1", ""},
		{"192.0.2.10", ""},
	}
	for _, tt := range tests {
		t.Run(tt.host, func(t *testing.T) {
			got := ""
			if a := tab.AppForHost(tt.host); a != nil {
				got = a.Name
			}
			if got != tt.want {
				t.Errorf("AppForHost(%q): got app %q, want %q", tt.host, got, tt.want)
			}
		})
	}
}

func TestTableLookups(t *testing.T) {
	tab := NewTable("ams", []config.App{testApp("a", 20, 0, "a.example"), testApp("b", 20, 0)},
		[]config.Machine{testMachine("a1", "a", "ams"), testMachine("b1", "b", "fra"), testMachine("x1", "nope", "fra")})
	if got := tab.Region(); got != "ams" {
		t.Errorf("Region: got %q, want %q", got, "ams")
	}
	a := mustApp(t, tab, "a")
	if got := mustMachine(t, tab, "a1"); a.Machine("a1") != got {
		t.Errorf("App.Machine(a1): got %s, want %s", idOf(a.Machine("a1")), idOf(got))
	}
	if got := a.Machine("b1"); got != nil {
		t.Errorf("App(a).Machine(b1): got %s, want nil", idOf(got))
	}
	if got := tab.Machine("x1"); got != nil {
		t.Errorf("Machine(x1) of an unknown app: got %s, want nil", idOf(got))
	}
	if got := tab.App("c"); got != nil {
		t.Errorf("App(c): got %q, want nil", got.Name)
	}
	var names []string
	for _, a := range tab.Apps() {
		names = append(names, a.Name)
	}
	slices.Sort(names)
	if want := []string{"a", "b"}; !slices.Equal(names, want) {
		t.Errorf("Apps: got %v, want %v", names, want)
	}
	if got, want := a.Config.Name, "a"; got != want {
		t.Errorf("App.Config.Name: got %q, want %q", got, want)
	}
}

func TestDistance(t *testing.T) {
	tests := []struct {
		a, b     string
		want     float64 // km
		tolerant float64 // allowed error, km
	}{
		{"ams", "ams", 0, 0},
		{"local", "local", 0, 0},
		{"ams", "lhr", 370, 20},
		{"lhr", "ewr", 5570, 100},
		{"sin", "syd", 6300, 100},
		{"ams", "local", 1e6, 0},
		{"nowhere", "ams", 1e6, 0},
	}
	for _, tt := range tests {
		t.Run(tt.a+"-"+tt.b, func(t *testing.T) {
			got := Distance(tt.a, tt.b)
			if math.Abs(got-tt.want) > tt.tolerant {
				t.Errorf("Distance(%s, %s): got %.0f km, want %.0f ± %.0f", tt.a, tt.b, got, tt.want, tt.tolerant)
			}
			if back := Distance(tt.b, tt.a); back != got {
				t.Errorf("Distance(%s, %s): got %.0f km, want %.0f as the other way round", tt.b, tt.a, back, got)
			}
		})
	}
	for r := range regionCoords {
		if d := Distance("ams", r); r != "ams" && (d <= 0 || d >= 21000) {
			t.Errorf("Distance(ams, %s): got %.0f km, want between 0 and half the earth's circumference", r, d)
		}
	}
}

// pickOrder picks without releasing until the app is full and returns the
// regions of the machines picked, in order. Every machine has hard limit 1.
func pickOrder(t *testing.T, a *App) []string {
	t.Helper()
	var got []string
	for range len(a.Machines()) {
		m, err := a.Pick()
		if err != nil {
			t.Fatalf("Pick %d: got error %v, want a machine", len(got)+1, err)
		}
		got = append(got, m.Region)
	}
	if m, err := a.Pick(); !errors.Is(err, ErrAtCapacity) {
		t.Fatalf("Pick on a full app: got %s, %v, want ErrAtCapacity", idOf(m), err)
	}
	return got
}

func TestNearestRegionOrder(t *testing.T) {
	tests := []struct {
		name    string
		node    string
		regions []string // one machine each, hard limit 1
		want    []string // pick order
	}{
		{"node region first, then by distance", "ams",
			[]string{"syd", "iad", "sin", "lhr", "ams", "fra"},
			[]string{"ams", "fra", "lhr", "iad", "sin", "syd"}},
		{"node region without machines", "cdg",
			[]string{"fra", "ams", "lhr", "nrt"},
			[]string{"lhr", "ams", "fra", "nrt"}},
		{"unknown regions last, by name", "ord",
			[]string{"zzz", "lax", "aaa", "ewr"},
			[]string{"ewr", "lax", "aaa", "zzz"}},
		{"unknown node region", "local",
			[]string{"local", "fra", "ams"},
			[]string{"local", "ams", "fra"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ms []config.Machine
			for i, r := range tt.regions {
				ms = append(ms, testMachine(string(rune('a'+i)), "app", r))
			}
			tab := NewTable(tt.node, []config.App{testApp("app", 1, 1)}, ms)
			got := pickOrder(t, mustApp(t, tab, "app"))
			if !slices.Equal(got, tt.want) {
				t.Errorf("pick order from %s: got %v, want %v", tt.node, got, tt.want)
			}
			// The expectation is great-circle order itself.
			for i := 1; i < len(got); i++ {
				if d0, d1 := Distance(tt.node, got[i-1]), Distance(tt.node, got[i]); d0 > d1 {
					t.Errorf("pick order from %s: %s (%.0f km) before %s (%.0f km)", tt.node, got[i-1], d0, got[i], d1)
				}
			}
		})
	}
}

func TestLeaveRegion(t *testing.T) {
	const soft, hard = 2, 4
	tests := []struct {
		name  string
		soft  int
		hard  int
		setup func(t *testing.T, l1, l2 *Machine)
		want  string // region every pick must land in
	}{
		{"all local idle", soft, hard, func(t *testing.T, l1, l2 *Machine) {}, "ams"},
		{"all local above soft", soft, hard, func(t *testing.T, l1, l2 *Machine) {
			hold(l1, soft)
			hold(l2, hard-1)
		}, "ams"},
		{"soft limit 0: every request over soft", 0, hard, func(t *testing.T, l1, l2 *Machine) {}, "ams"},
		{"no hard limit, far over soft", soft, 0, func(t *testing.T, l1, l2 *Machine) {
			hold(l1, 1000)
			hold(l2, 1000)
		}, "ams"},
		{"one local unhealthy, other above soft", soft, hard, func(t *testing.T, l1, l2 *Machine) {
			l1.SetHealthy(false)
			hold(l2, soft)
		}, "ams"},
		{"one local at hard, other above soft", soft, hard, func(t *testing.T, l1, l2 *Machine) {
			fill(t, l1)
			hold(l2, soft+1)
		}, "ams"},
		{"all local unhealthy", soft, hard, func(t *testing.T, l1, l2 *Machine) {
			l1.SetHealthy(false)
			l2.SetHealthy(false)
		}, "fra"},
		{"all local stopped", soft, hard, func(t *testing.T, l1, l2 *Machine) {
			l1.SetStarted(false)
			l2.SetStarted(false)
		}, "fra"},
		{"all local at hard", soft, hard, func(t *testing.T, l1, l2 *Machine) {
			fill(t, l1)
			fill(t, l2)
		}, "fra"},
		{"local unhealthy and at hard", soft, hard, func(t *testing.T, l1, l2 *Machine) {
			l1.SetHealthy(false)
			fill(t, l2)
		}, "fra"},
		{"local stopped and at hard", soft, hard, func(t *testing.T, l1, l2 *Machine) {
			l1.SetStarted(false)
			fill(t, l2)
		}, "fra"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab := NewTable("ams", []config.App{testApp("app", tt.soft, tt.hard)}, []config.Machine{
				testMachine("l1", "app", "ams"), testMachine("l2", "app", "ams"),
				testMachine("r1", "app", "fra"), testMachine("r2", "app", "syd"),
			})
			a := mustApp(t, tab, "app")
			tt.setup(t, mustMachine(t, tab, "l1"), mustMachine(t, tab, "l2"))
			for range 50 {
				m, err := a.Pick()
				if err != nil {
					t.Fatalf("Pick: got error %v, want a machine in %s", err, tt.want)
				}
				if m.Region != tt.want {
					t.Fatalf("Pick: got %s, want a machine in %s", idOf(m), tt.want)
				}
				m.Release()
			}
		})
	}
}

func TestStoppedAtStart(t *testing.T) {
	tab := NewTable("ams", []config.App{testApp("app", 20, 0)}, []config.Machine{
		stopped(testMachine("l1", "app", "ams")), testMachine("r1", "app", "fra"),
	})
	a := mustApp(t, tab, "app")
	l1 := mustMachine(t, tab, "l1")
	if l1.Started() || !l1.Healthy() {
		t.Fatalf("stopped machine l1: got started %v healthy %v, want false true", l1.Started(), l1.Healthy())
	}
	if got := pickCounts(t, a, 20); got["r1"] != 20 {
		t.Errorf("picks with l1 stopped: got %v, want all on r1", got)
	}
	l1.SetStarted(true)
	if got := pickCounts(t, a, 20); got["l1"] != 20 {
		t.Errorf("picks with l1 started: got %v, want all on l1", got)
	}
}

func TestBands(t *testing.T) {
	const soft, hard = 4, 8
	ms := []config.Machine{testMachine("below", "app", "ams"), testMachine("full", "app", "ams")}
	for _, id := range []string{"above0", "above1", "above2", "above3"} {
		ms = append(ms, testMachine(id, "app", "ams"))
	}
	tab := NewTable("ams", []config.App{testApp("app", soft, hard)}, ms)
	a := mustApp(t, tab, "app")
	below, full := mustMachine(t, tab, "below"), mustMachine(t, tab, "full")
	hold(below, soft-1)
	fill(t, full)
	var above []*Machine
	for _, id := range []string{"above0", "above1", "above2", "above3"} {
		m := mustMachine(t, tab, id)
		hold(m, soft)
		above = append(above, m)
	}
	for _, c := range []struct {
		m    *Machine
		want Band
	}{{below, BelowSoft}, {above[0], AboveSoft}, {full, AtHard}} {
		if got := c.m.Band(); got != c.want {
			t.Errorf("%s.Band(): got %v, want %v", c.m.ID, got, c.want)
		}
	}
	// The one machine below soft takes every request: a pair drawn from all
	// usable machines would leave it out three times in five.
	if got := pickCounts(t, a, 200); got["below"] != 200 {
		t.Errorf("picks with one machine below soft and four above: got %v, want all 200 on below", got)
	}
	// Once it is above soft too, all five share the band and P2C spreads
	// picks over the four less loaded ones.
	hold(below, 2) // soft+1
	got := pickCounts(t, a, 400)
	if got["below"] != 0 || got["full"] != 0 {
		t.Errorf("picks with all above soft: got %v, want none on below (most loaded) or full (at hard)", got)
	}
	for _, m := range above {
		if got[m.ID] < 40 { // expected 100
			t.Errorf("picks with all above soft: got %d on %s, want at least 40 of 400 (all: %v)", got[m.ID], m.ID, got)
		}
	}
}

func TestBandString(t *testing.T) {
	for b, want := range map[Band]string{BelowSoft: "below_soft", AboveSoft: "above_soft", AtHard: "at_hard"} {
		if got := b.String(); got != want {
			t.Errorf("Band(%d).String(): got %q, want %q", b, got, want)
		}
	}
}

func TestPowerOfTwoChoices(t *testing.T) {
	tests := []struct {
		name     string
		inflight []int          // per machine m0, m1, ...; all below soft 20
		picks    int            // picks to make
		atLeast  map[string]int // machine → minimum picks
		atMost   map[string]int // machine → maximum picks
	}{
		// With two machines P2C compares both every time: the idle one
		// always wins. The bound leaves room for any tie-break slack.
		{"idle beats busy", []int{0, 10}, 1000,
			map[string]int{"m0": 900}, map[string]int{"m1": 100}},
		// The most loaded of three is never the lesser of a pair; the idle
		// one wins every pair it is in (expected 2/3 of the picks).
		{"most loaded never picked", []int{0, 5, 10}, 3000,
			map[string]int{"m0": 1700, "m1": 700}, map[string]int{"m2": 0}},
		// Equal loads: the tie is broken at random (expected 1/2 each).
		{"ties spread", []int{3, 3}, 2000,
			map[string]int{"m0": 700, "m1": 700}, nil},
		// Ten idle machines: every one gets its share (expected 1/10).
		{"uniform draw", []int{0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 10000,
			map[string]int{"m0": 600, "m1": 600, "m2": 600, "m3": 600, "m4": 600,
				"m5": 600, "m6": 600, "m7": 600, "m8": 600, "m9": 600}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ms []config.Machine
			for i := range tt.inflight {
				ms = append(ms, testMachine("m"+string(rune('0'+i)), "app", "ams"))
			}
			tab := NewTable("ams", []config.App{testApp("app", 20, 0)}, ms)
			a := mustApp(t, tab, "app")
			for i, n := range tt.inflight {
				hold(a.Machines()[i], n)
			}
			got := pickCounts(t, a, tt.picks)
			for id, min := range tt.atLeast {
				if got[id] < min {
					t.Errorf("%d picks: got %d on %s, want at least %d (all: %v)", tt.picks, got[id], id, min, got)
				}
			}
			for id, max := range tt.atMost {
				if got[id] > max {
					t.Errorf("%d picks: got %d on %s, want at most %d (all: %v)", tt.picks, got[id], id, max, got)
				}
			}
			for i, n := range tt.inflight {
				if m := a.Machines()[i]; m.Inflight() != n {
					t.Errorf("after picks and releases: %s has %d in flight, want %d", m.ID, m.Inflight(), n)
				}
			}
		})
	}
}

func TestPickErrors(t *testing.T) {
	const hard = 2
	tests := []struct {
		name    string
		setup   func(t *testing.T, ms []*Machine) (exclude []*Machine)
		wantErr error
	}{
		{"all unhealthy", func(t *testing.T, ms []*Machine) []*Machine {
			for _, m := range ms {
				m.SetHealthy(false)
			}
			return nil
		}, ErrNoMachine},
		{"all stopped", func(t *testing.T, ms []*Machine) []*Machine {
			for _, m := range ms {
				m.SetStarted(false)
			}
			return nil
		}, ErrNoMachine},
		{"unhealthy or stopped", func(t *testing.T, ms []*Machine) []*Machine {
			ms[0].SetHealthy(false)
			ms[1].SetStarted(false)
			ms[2].SetHealthy(false)
			ms[2].SetStarted(false)
			return nil
		}, ErrNoMachine},
		{"all at hard", func(t *testing.T, ms []*Machine) []*Machine {
			for _, m := range ms {
				fill(t, m)
			}
			return nil
		}, ErrAtCapacity},
		{"at hard or unhealthy", func(t *testing.T, ms []*Machine) []*Machine {
			fill(t, ms[0])
			ms[1].SetHealthy(false)
			fill(t, ms[2])
			return nil
		}, ErrAtCapacity},
		{"forced over hard", func(t *testing.T, ms []*Machine) []*Machine {
			for _, m := range ms {
				hold(m, hard+3)
			}
			return nil
		}, ErrAtCapacity},
		{"all excluded", func(t *testing.T, ms []*Machine) []*Machine {
			return ms
		}, ErrNoMachine},
		{"free ones excluded, others at hard", func(t *testing.T, ms []*Machine) []*Machine {
			fill(t, ms[0])
			return ms[1:]
		}, ErrAtCapacity},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab := NewTable("ams", []config.App{testApp("app", 1, hard)}, []config.Machine{
				testMachine("m0", "app", "ams"), testMachine("m1", "app", "fra"), testMachine("m2", "app", "syd"),
			})
			a := mustApp(t, tab, "app")
			exclude := tt.setup(t, a.Machines())
			if m, err := a.Pick(exclude...); !errors.Is(err, tt.wantErr) || m != nil {
				t.Errorf("Pick: got %s, %v, want nil, %v", idOf(m), err, tt.wantErr)
			}
		})
	}
	t.Run("no machines", func(t *testing.T) {
		a := mustApp(t, NewTable("ams", []config.App{testApp("app", 1, hard)}, nil), "app")
		if m, err := a.Pick(); !errors.Is(err, ErrNoMachine) {
			t.Errorf("Pick: got %s, %v, want nil, %v", idOf(m), err, ErrNoMachine)
		}
	})
}

func TestPickExclude(t *testing.T) {
	tab := NewTable("ams", []config.App{testApp("app", 20, 0)}, []config.Machine{
		testMachine("l1", "app", "ams"), testMachine("l2", "app", "ams"), testMachine("l3", "app", "ams"),
		testMachine("r1", "app", "fra"),
	})
	a := mustApp(t, tab, "app")
	l1, l2, l3, r1 := a.Machine("l1"), a.Machine("l2"), a.Machine("l3"), a.Machine("r1")
	tests := []struct {
		name    string
		exclude []*Machine
		want    []string // machines allowed
	}{
		{"one local excluded", []*Machine{l1}, []string{"l2", "l3"}},
		{"two local excluded", []*Machine{l3, l1}, []string{"l2"}},
		{"all local excluded", []*Machine{l1, l2, l3}, []string{"r1"}},
		{"remote excluded", []*Machine{r1}, []string{"l1", "l2", "l3"}},
		{"duplicates", []*Machine{l1, l1, l2}, []string{"l3"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for id, n := range pickCounts(t, a, 300, tt.exclude...) {
				if !slices.Contains(tt.want, id) {
					t.Errorf("Pick(exclude %v): got %s %d times, want only %v", tt.exclude, id, n, tt.want)
				}
			}
		})
	}
	checkIdle(t, a)
}

func TestPickDoesNotAllocate(t *testing.T) {
	tab := NewTable("ams", []config.App{testApp("app", 2, 4)}, []config.Machine{
		testMachine("l1", "app", "ams"), testMachine("l2", "app", "ams"), testMachine("r1", "app", "fra"),
	})
	a := mustApp(t, tab, "app")
	l1 := a.Machine("l1")
	fill(t, a.Machine("l2"))
	allocs := testing.AllocsPerRun(1000, func() {
		m, err := a.Pick(l1)
		if err != nil {
			t.Fatalf("Pick: got error %v, want a machine", err)
		}
		m.Release()
	})
	if allocs != 0 {
		t.Errorf("Pick with exclude, walking to the next region: got %v allocations, want 0", allocs)
	}
}

func TestTryAcquire(t *testing.T) {
	tab := NewTable("ams", []config.App{testApp("limited", 1, 3), testApp("unlimited", 1, 0)}, []config.Machine{
		testMachine("lim", "limited", "ams"), testMachine("unl", "unlimited", "ams"),
	})
	lim, unl := mustMachine(t, tab, "lim"), mustMachine(t, tab, "unl")
	for i := range 3 {
		if !lim.TryAcquire() {
			t.Fatalf("TryAcquire %d of 3 on hard limit 3: got false, want true", i+1)
		}
	}
	if lim.TryAcquire() {
		t.Errorf("TryAcquire at hard limit 3: got true, want false")
	}
	lim.Acquire() // forced
	if got := lim.Inflight(); got != 4 {
		t.Errorf("Inflight after a forced Acquire: got %d, want 4", got)
	}
	for range 4 {
		lim.Release()
	}
	for i := range 1000 {
		if !unl.TryAcquire() {
			t.Fatalf("TryAcquire %d without hard limit: got false, want true", i+1)
		}
	}
	if got, want := unl.Band(), AboveSoft; got != want {
		t.Errorf("Band with 1000 in flight and no hard limit: got %v, want %v", got, want)
	}
}

// FuzzAppForHost checks that any Host header is looked up without panicking,
// whatever its ASCII case, and that a port does not change the answer.
func FuzzAppForHost(f *testing.F) {
	tab := NewTable("ams", []config.App{
		testApp("web", 20, 0, "example.com"), testApp("v6", 20, 0, "::1"),
	}, nil)
	for _, h := range []string{"example.com", "EXAMPLE.com:8080", "[::1]:80", "::1", "[::1", "]:", ":", ""} {
		f.Add(h)
	}
	f.Fuzz(func(t *testing.T, host string) {
		got := tab.AppForHost(host)
		if upper := strings.ToUpper(host); isASCII(host) {
			if other := tab.AppForHost(upper); other != got {
				t.Errorf("AppForHost(%q) = %v but AppForHost(%q) = %v, want the same app", host, got, upper, other)
			}
		}
		if !strings.ContainsAny(host, ":[]") {
			for _, h := range []string{host + ":443", "[" + host + "]:443"} {
				if other := tab.AppForHost(h); other != got && !(host == "" && other == nil) {
					t.Errorf("AppForHost(%q) = %v but AppForHost(%q) = %v, want the same app", host, got, h, other)
				}
			}
		}
	})
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
