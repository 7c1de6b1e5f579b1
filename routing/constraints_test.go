package routing

import (
	"errors"
	"testing"

	"github.com/godwit/godwit/config"
)

// TestPickWith covers the constraints of fly-replay and Fly's routing
// headers on an app with machines in ams (the node's region), fra and iad.
func TestPickWith(t *testing.T) {
	type setup func(t *testing.T, tab *Table)
	unhealthy := func(ids ...string) setup {
		return func(t *testing.T, tab *Table) {
			for _, id := range ids {
				mustMachine(t, tab, id).SetHealthy(false)
			}
		}
	}
	full := func(ids ...string) setup {
		return func(t *testing.T, tab *Table) {
			for _, id := range ids {
				t.Cleanup(fill(t, mustMachine(t, tab, id)))
			}
		}
	}
	tests := []struct {
		name      string
		setup     setup
		c         Constraints
		exclude   []string
		wantIn    []string // any of these
		wantErr   error
		wantUnmet bool
	}{
		{name: "no constraints: nearest", wantIn: []string{"ams-1", "ams-2"}},
		{name: "region list in order", c: Constraints{Regions: []string{"iad", "fra"}}, wantIn: []string{"iad-1"}},
		{name: "first listed region down: the next listed", setup: unhealthy("iad-1"),
			c: Constraints{Regions: []string{"iad", "fra"}}, wantIn: []string{"fra-1"}},
		{name: "force region without machines: no fallback", c: Constraints{Regions: []string{"syd"}}, wantErr: ErrNoMachine},
		{name: "prefer region without machines: nearest", c: Constraints{Regions: []string{"syd"}, AnyRegion: true},
			wantIn: []string{"ams-1", "ams-2"}},
		{name: "force region at hard limit: capacity, not elsewhere", setup: full("iad-1"),
			c: Constraints{Regions: []string{"iad"}}, wantErr: ErrAtCapacity},
		{name: "force instance", c: Constraints{Instance: "fra-1"}, wantIn: []string{"fra-1"}},
		{name: "force instance failing: no fallback", setup: unhealthy("fra-1"),
			c: Constraints{Instance: "fra-1"}, wantErr: ErrInstanceUnavailable},
		{name: "force instance unknown", c: Constraints{Instance: "nope"}, wantErr: ErrInstanceUnavailable},
		{name: "force instance at hard limit", setup: full("fra-1"), c: Constraints{Instance: "fra-1"}, wantErr: ErrAtCapacity},
		{name: "prefer instance", c: Constraints{PreferInstance: "iad-1"}, wantIn: []string{"iad-1"}},
		{name: "prefer instance at hard limit: another, flagged", setup: full("iad-1"),
			c: Constraints{PreferInstance: "iad-1"}, wantIn: []string{"ams-1", "ams-2"}, wantUnmet: true},
		{name: "prefer instance unknown, with a region: that region, flagged",
			c: Constraints{PreferInstance: "nope", Regions: []string{"fra"}}, wantIn: []string{"fra-1"}, wantUnmet: true},
		{name: "elsewhere: the responding machine excluded", exclude: []string{"ams-1"},
			c: Constraints{Regions: []string{"ams"}}, wantIn: []string{"ams-2"}},
		{name: "excluded forced instance", exclude: []string{"fra-1"}, c: Constraints{Instance: "fra-1"}, wantErr: ErrInstanceUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab := NewTable("ams", []config.App{testApp("web", 2, 2, "web.test")}, []config.Machine{
				testMachine("ams-1", "web", "ams"), testMachine("ams-2", "web", "ams"),
				testMachine("fra-1", "web", "fra"), testMachine("iad-1", "web", "iad"),
			})
			if tt.setup != nil {
				tt.setup(t, tab)
			}
			c := tt.c
			for _, id := range tt.exclude {
				c.Exclude = append(c.Exclude, mustMachine(t, tab, id))
			}
			m, res, err := mustApp(t, tab, "web").PickWith(c)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("PickWith(%+v): got error %v, want %v", tt.c, err, tt.wantErr)
			}
			if err != nil {
				if m != nil {
					t.Errorf("PickWith: got machine %s with error %v, want none", m.ID, err)
				}
				return
			}
			defer m.Release()
			ok := false
			for _, id := range tt.wantIn {
				ok = ok || m.ID == id
			}
			if !ok {
				t.Errorf("PickWith(%+v): got %s, want one of %v", tt.c, m.ID, tt.wantIn)
			}
			if res.PreferredUnavailable != tt.wantUnmet {
				t.Errorf("PreferredUnavailable: got %v, want %v", res.PreferredUnavailable, tt.wantUnmet)
			}
			if m.Inflight() < 1 {
				t.Errorf("picked machine has no slot taken (in-flight %d)", m.Inflight())
			}
		})
	}
}

func TestRegionsNearestFirst(t *testing.T) {
	tab := NewTable("ams", []config.App{testApp("web", 2, 0, "web.test")}, []config.Machine{
		testMachine("syd-1", "web", "syd"), testMachine("fra-1", "web", "fra"), testMachine("ams-1", "web", "ams"),
	})
	got := mustApp(t, tab, "web").Regions()
	want := []string{"ams", "fra", "syd"}
	if len(got) != len(want) {
		t.Fatalf("Regions: got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("Regions: got %v, want %v", got, want)
		}
	}
}

func TestConstraintsRestricts(t *testing.T) {
	m := &Machine{ID: "m1"}
	tests := []struct {
		c    Constraints
		want bool
	}{
		{Constraints{}, false},
		{Constraints{PreferInstance: "m1"}, false},
		{Constraints{Regions: []string{"syd"}, AnyRegion: true}, false},
		{Constraints{Regions: []string{"syd"}}, true},
		{Constraints{Instance: "m1"}, true},
		{Constraints{Exclude: []*Machine{m}}, true},
	}
	for _, tt := range tests {
		if got := tt.c.Restricts(); got != tt.want {
			t.Errorf("%+v.Restricts(): got %v, want %v", tt.c, got, tt.want)
		}
	}
}
