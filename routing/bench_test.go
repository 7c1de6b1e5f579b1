package routing

import (
	"fmt"
	"slices"
	"testing"

	"github.com/godwit/godwit/config"
)

// Benchmark table shape: benchMachines machines in all; the app under test,
// benchApp, has benchAppMachines of them spread over benchRegions regions,
// the node being in one of them; the rest belong to small filler apps.
const (
	benchMachines    = 100_000
	benchAppMachines = 1_000
	benchRegions     = 30
	benchFillerSize  = 100 // machines per filler app
	benchApp         = "big"
	benchSoft        = 20
	benchHard        = 25
)

// benchRegionCodes returns n real region codes, sorted so the set is stable.
func benchRegionCodes(tb testing.TB, n int) []string {
	codes := make([]string, 0, len(regionCoords))
	for r := range regionCoords {
		codes = append(codes, r)
	}
	slices.Sort(codes)
	if len(codes) < n {
		tb.Fatalf("regionCoords has %d regions, want at least %d", len(codes), n)
	}
	return codes[:n]
}

// newBenchTable builds the benchmark table for a node in "fra" and returns
// it with the big app.
func newBenchTable(tb testing.TB) (*Table, *App) {
	tb.Helper()
	regions := benchRegionCodes(tb, benchRegions)
	const node = "fra"
	if !slices.Contains(regions, node) {
		tb.Fatalf("node region %q not among the benchmark regions %v", node, regions)
	}
	conc := config.Concurrency{Type: config.ConcurrencyRequests, SoftLimit: benchSoft, HardLimit: benchHard}
	apps := []config.App{{Name: benchApp, Hosts: []string{"big.example"},
		HTTPService: config.HTTPService{Concurrency: conc}}}
	machines := make([]config.Machine, 0, benchMachines)
	for i := range benchAppMachines {
		machines = append(machines, config.Machine{
			ID: fmt.Sprintf("big-%04d", i), App: benchApp,
			Region: regions[i%len(regions)], Address: fmt.Sprintf("10.0.%d.%d:8080", i/250, i%250),
		})
	}
	for i := 0; len(machines) < benchMachines; i++ {
		name := fmt.Sprintf("filler-%04d", i)
		apps = append(apps, config.App{Name: name, Hosts: []string{name + ".example"},
			HTTPService: config.HTTPService{Concurrency: conc}})
		for j := 0; j < benchFillerSize && len(machines) < benchMachines; j++ {
			machines = append(machines, config.Machine{
				ID: fmt.Sprintf("%s-%03d", name, j), App: name,
				Region: regions[(i+j)%len(regions)], Address: fmt.Sprintf("10.1.%d.%d:8080", i, j),
			})
		}
	}
	t := NewTable(node, apps, machines)
	a := t.App(benchApp)
	if got := len(a.Machines()); got != benchAppMachines {
		tb.Fatalf("app %s has %d machines, want %d", benchApp, got, benchAppMachines)
	}
	return t, a
}

// fillRegion takes every free slot of every machine of app a in region, so
// picks have to go elsewhere. It returns a function that gives them back.
func fillRegion(tb testing.TB, a *App, region string) (release func()) {
	tb.Helper()
	var held []*Machine
	for _, m := range a.Machines() {
		if m.Region != region {
			continue
		}
		for m.TryAcquire() {
			held = append(held, m)
		}
	}
	if len(held) == 0 {
		tb.Fatalf("no machine of app %s in region %s", a.Name, region)
	}
	return func() {
		for _, m := range held {
			m.Release()
		}
	}
}

func BenchmarkPick(b *testing.B) {
	_, a := newBenchTable(b)
	b.ReportAllocs()
	for b.Loop() {
		m, err := a.Pick()
		if err != nil {
			b.Fatalf("Pick: got error %v, want a machine", err)
		}
		m.Release()
	}
}

// BenchmarkPickNearestFull has every machine of the node's region at its
// hard limit, so each pick walks on to the next region.
func BenchmarkPickNearestFull(b *testing.B) {
	t, a := newBenchTable(b)
	defer fillRegion(b, a, t.Region())()
	next := a.regions[1].region
	b.ReportAllocs()
	for b.Loop() {
		m, err := a.Pick()
		if err != nil {
			b.Fatalf("Pick: got error %v, want a machine", err)
		}
		if m.Region != next {
			b.Fatalf("Pick: got region %s, want %s", m.Region, next)
		}
		m.Release()
	}
}

func BenchmarkPickParallel(b *testing.B) {
	_, a := newBenchTable(b)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m, err := a.Pick()
			if err != nil {
				b.Errorf("Pick: got error %v, want a machine", err)
				return
			}
			m.Release()
		}
	})
}

func BenchmarkAppForHost(b *testing.B) {
	t, _ := newBenchTable(b)
	b.ReportAllocs()
	for b.Loop() {
		if t.AppForHost("big.example:443") == nil {
			b.Fatal("AppForHost(big.example:443): got nil, want app big")
		}
	}
}
