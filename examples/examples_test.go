package examples

import (
	"io/fs"
	"path/filepath"
	"slices"
	"testing"

	"github.com/godwit/godwit/config"
)

// configs returns the godwit configs under this directory: every *.toml
// but the fly.toml files, which the configs import.
func configs(t *testing.T) []string {
	t.Helper()
	var paths []string
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && filepath.Ext(path) == ".toml" && d.Name() != "fly.toml" {
			paths = append(paths, path)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walking examples: %v", err)
	}
	return paths
}

// TestExamplesConfigCheck loads every example config as `godwit config
// check` does (config.Load) and fails with every error it reports.
func TestExamplesConfigCheck(t *testing.T) {
	paths := configs(t)
	want := []string{"autostop/godwit.toml", "multi-host/edge-cdg.toml", "multi-host/edge-iad.toml", "single-edge/godwit.toml"}
	for _, p := range want {
		if !slices.Contains(paths, filepath.FromSlash(p)) {
			t.Errorf("example %s is missing; found %q", p, paths)
		}
	}
	for _, p := range paths {
		t.Run(filepath.ToSlash(p), func(t *testing.T) {
			cfg, err := config.Load(p)
			if err != nil {
				t.Fatalf("godwit config check %s:\n%v", p, err)
			}
			if len(cfg.Apps) == 0 || len(cfg.Machines) == 0 {
				t.Errorf("%s: got %d apps and %d machines, want at least one of each", p, len(cfg.Apps), len(cfg.Machines))
			}
		})
	}
}

// TestExamplesMultiHostAgree checks that the two edges of multi-host form
// one fleet: each joins the other's gossip address, and they use the same
// backhaul protocol, gossip key, apps and hosts, with no machine id twice.
func TestExamplesMultiHostAgree(t *testing.T) {
	iad, err := config.Load(filepath.Join("multi-host", "edge-iad.toml"))
	if err != nil {
		t.Fatal(err)
	}
	cdg, err := config.Load(filepath.Join("multi-host", "edge-cdg.toml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name     string
		from, to *config.Config
	}{{"iad joins cdg", iad, cdg}, {"cdg joins iad", cdg, iad}} {
		if !slices.Contains(c.from.Gossip.Join, c.to.Gossip.Bind) {
			t.Errorf("%s: gossip.join is %q, want it to include %s", c.name, c.from.Gossip.Join, c.to.Gossip.Bind)
		}
	}
	if iad.Node.Name == cdg.Node.Name || iad.Node.Region == cdg.Node.Region {
		t.Errorf("node names %q, %q and regions %q, %q: want both different", iad.Node.Name, cdg.Node.Name, iad.Node.Region, cdg.Node.Region)
	}
	if iad.Backhaul.Protocol != cdg.Backhaul.Protocol {
		t.Errorf("backhaul.protocol: iad %q, cdg %q: want the same", iad.Backhaul.Protocol, cdg.Backhaul.Protocol)
	}
	if iad.Gossip.SecretKeyFile == "" || iad.Gossip.SecretKeyFile != cdg.Gossip.SecretKeyFile {
		t.Errorf("gossip.secret_key_file: iad %q, cdg %q: want the same file, set", iad.Gossip.SecretKeyFile, cdg.Gossip.SecretKeyFile)
	}
	if len(iad.Apps) != len(cdg.Apps) {
		t.Fatalf("iad has %d apps, cdg %d: want the same apps on every edge", len(iad.Apps), len(cdg.Apps))
	}
	for i := range iad.Apps {
		a, b := iad.Apps[i], cdg.Apps[i]
		if a.Name != b.Name || !slices.Equal(a.Hosts, b.Hosts) || a.Org != b.Org || a.PrimaryRegion != b.PrimaryRegion {
			t.Errorf("app %d: iad %s %q org %s primary %s, cdg %s %q org %s primary %s: want the same",
				i, a.Name, a.Hosts, a.Org, a.PrimaryRegion, b.Name, b.Hosts, b.Org, b.PrimaryRegion)
		}
	}
	ids := map[string]string{}
	for edge, cfg := range map[string]*config.Config{"iad": iad, "cdg": cdg} {
		for _, m := range cfg.Machines {
			if other, dup := ids[m.ID]; dup {
				t.Errorf("machine %s is on both %s and %s: an id names one machine in the fleet", m.ID, other, edge)
			}
			ids[m.ID] = edge
		}
	}
}
