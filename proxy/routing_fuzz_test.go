package proxy

import (
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/godwit/godwit/config"
	"github.com/godwit/godwit/replay"
	"github.com/godwit/godwit/routing"
)

// FuzzRoutingConstraints checks how the request routing headers
// (fly-force-instance-id, fly-prefer-instance-id, fly-force-region,
// fly-prefer-region) become constraints, whatever a client sends: no
// panic; force wins over prefer; an instance ID is the first value,
// trimmed; regions are lower-case items without commas, outer blanks or
// "any" (an item with a blank inside, "cdg iad", stays one unknown region
// that matches no machine), each listed once, each either named in the
// header or one of the app's regions (an alias expands only to those), in
// the order the header first names them, itself or through an alias; a
// prefer header always falls back, a force header
// only with "any"; and the ASCII case of a region list does not matter.
// Each string argument is one header, its lines its values; present says
// which are sent.
func FuzzRoutingConstraints(f *testing.F) {
	tab := routing.NewTable("iad", []config.App{{
		Name: "web", Hosts: []string{"web.example"}, Org: "personal", PrimaryRegion: "iad",
		HTTPService: config.HTTPService{Concurrency: config.Concurrency{Type: config.ConcurrencyRequests, SoftLimit: 20, HardLimit: 25}},
	}}, []config.Machine{
		{ID: "148e21ea7e7689", App: "web", Region: "iad", Address: "a.internal:8080", State: config.StateStarted},
		{ID: "3d8d9e1f2a0b77", App: "web", Region: "cdg", Address: "b.internal:8080", State: config.StateStarted},
		{ID: "90801e7c5d3e28", App: "web", Region: "nrt", Address: "c.internal:8080", State: config.StateStarted},
	})
	app := tab.App("web")
	if app == nil {
		f.Fatal("no app web")
	}
	const all = 0xf
	f.Add(uint8(all), "148e21ea7e7689", "", "", "")
	f.Add(uint8(all), "", "3d8d9e1f2a0b77", "", "")
	f.Add(uint8(all), " 148e21ea7e7689 \nother", "3d8d9e1f2a0b77", "cdg", "nrt")
	f.Add(uint8(all), "", "", "cdg", "")
	f.Add(uint8(all), "", "", "", "nrt")
	f.Add(uint8(all), "", "", "", "lhr,cdg, iad")
	f.Add(uint8(all), "", "", "EU,any", "")
	f.Add(uint8(all), "", "", "", "us,eu,apac,sa,na,usa")
	f.Add(uint8(all), "", "", "", "any")
	f.Add(uint8(all), "", "", " , ,,", "cdg\nnrt,,IAD")
	f.Add(uint8(all), "", "", "", "cdg,cdg,CDG,eu")
	f.Add(uint8(0b0101), "", "", "", "")
	f.Add(uint8(0), "x", "y", "cdg", "nrt")
	f.Fuzz(func(t *testing.T, present uint8, forceID, preferID, forceRegion, preferRegion string) {
		h := http.Header{}
		for i, kv := range []struct{ k, v string }{
			{hdrForceInstanceID, forceID}, {hdrPreferInstanceID, preferID},
			{hdrForceRegion, forceRegion}, {hdrPreferRegion, preferRegion},
		} {
			if present&(1<<i) != 0 {
				h[kv.k] = strings.Split(kv.v, "\n")
			}
		}
		c := routingConstraints(h, app)

		switch {
		case h[hdrForceInstanceID] != nil:
			if want := strings.TrimSpace(h[hdrForceInstanceID][0]); c.Instance != want || c.PreferInstance != "" {
				t.Errorf("instance %q, preferred %q; want forced %q", c.Instance, c.PreferInstance, want)
			}
		case h[hdrPreferInstanceID] != nil:
			if want := strings.TrimSpace(h[hdrPreferInstanceID][0]); c.PreferInstance != want || c.Instance != "" {
				t.Errorf("instance %q, preferred %q; want preferred %q", c.Instance, c.PreferInstance, want)
			}
		default:
			if c.Instance != "" || c.PreferInstance != "" {
				t.Errorf("instance %q, preferred %q without an instance header", c.Instance, c.PreferInstance)
			}
		}

		list, wantAny := h[hdrForceRegion], false
		switch {
		case list != nil:
			wantAny = slices.Contains(splitList(list), "any")
		case h[hdrPreferRegion] != nil:
			list, wantAny = h[hdrPreferRegion], true
		}
		if c.AnyRegion != wantAny {
			t.Errorf("AnyRegion = %v, want %v (header %q)", c.AnyRegion, wantAny, list)
		}
		named := splitList(list)
		seen := map[string]bool{}
		last := -1
		for _, r := range c.Regions {
			switch {
			case r == "" || r == "any" || strings.Contains(r, ",") || r != strings.TrimSpace(r) || r != strings.ToLower(r):
				t.Errorf("region %q in %q (header %q)", r, c.Regions, list)
			case seen[r]:
				t.Errorf("region %q twice in %q (header %q)", r, c.Regions, list)
			case !slices.Contains(named, r) && !slices.Contains(app.Regions(), r):
				t.Errorf("region %q in %q: neither named in %q nor one of the app's %q", r, c.Regions, list, app.Regions())
			}
			seen[r] = true
			// A region comes where the header first names it, itself or
			// through an alias ("us,0,iad": iad, from us, before 0).
			if i := slices.IndexFunc(named, func(n string) bool {
				exp, _ := replay.ExpandRegions([]string{n}, app.Regions())
				return n == r || slices.Contains(exp, r)
			}); i >= 0 {
				if i < last {
					t.Errorf("regions %q are not in the header's order %q", c.Regions, named)
				}
				last = i
			}
		}
		if len(c.Regions) > len(named)+len(app.Regions()) {
			t.Errorf("%d regions from %d named, for an app in %d", len(c.Regions), len(named), len(app.Regions()))
		}
		if c.Exclude != nil {
			t.Errorf("Exclude = %v from request headers", c.Exclude)
		}

		// The case of a region list does not matter (ASCII; Unicode case
		// mappings do not round-trip).
		if isASCII(forceRegion) && isASCII(preferRegion) {
			u := h.Clone()
			for _, k := range []string{hdrForceRegion, hdrPreferRegion} {
				for i := range u[k] {
					u[k][i] = strings.ToUpper(u[k][i])
				}
			}
			if cu := routingConstraints(u, app); !slices.Equal(cu.Regions, c.Regions) || cu.AnyRegion != c.AnyRegion {
				t.Errorf("upper-case region headers give %q, any %v; lower-case %q, any %v", cu.Regions, cu.AnyRegion, c.Regions, c.AnyRegion)
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
