package replay

import (
	"reflect"
	"testing"
)

func TestExpandRegions(t *testing.T) {
	all := []string{"iad", "ord", "sjc", "lax", "ewr", "dfw", "yyz", "gru", "ams", "fra", "lhr", "cdg", "arn", "sin", "nrt", "syd", "bom", "jnb"}
	tests := []struct {
		name    string
		regions []string
		all     []string
		want    []string
		wantAny bool
	}{
		{"none", nil, all, nil, false},
		{"plain codes", []string{"iad", "ord"}, all, []string{"iad", "ord"}, false},
		{"unknown code kept", []string{"xyz", "iad"}, all, []string{"xyz", "iad"}, false},
		{"us", []string{"us"}, all, []string{"sjc", "lax", "dfw", "ord", "iad", "ewr"}, false},
		{"usa", []string{"usa"}, all, []string{"sjc", "lax", "dfw", "ord", "iad", "ewr"}, false},
		{"na", []string{"na"}, all, []string{"sjc", "lax", "dfw", "ord", "iad", "ewr", "yyz"}, false},
		{"sa", []string{"sa"}, all, []string{"gru"}, false},
		{"eu", []string{"eu"}, all, []string{"lhr", "cdg", "ams", "fra", "arn"}, false},
		{"apac", []string{"apac"}, all, []string{"bom", "sin", "nrt", "syd"}, false},
		{"any", []string{"any"}, all, nil, true},
		{"sjc then any", []string{"sjc", "any"}, all, []string{"sjc"}, true},
		{"duplicates keep first", []string{"ord", "us", "iad", "ord"}, all, []string{"ord", "sjc", "lax", "dfw", "iad", "ewr"}, false},
		{"us and usa", []string{"us", "usa", "any", "any"}, all, []string{"sjc", "lax", "dfw", "ord", "iad", "ewr"}, true},
		{"alias with nil all", []string{"sa"}, nil, []string{"bog", "scl", "eze", "gru", "gig"}, false},
		{"alias with no region", []string{"apac", "iad"}, []string{}, []string{"iad"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, gotAny := ExpandRegions(tt.regions, tt.all)
			if !reflect.DeepEqual(got, tt.want) || gotAny != tt.wantAny {
				t.Errorf("ExpandRegions(%q) = %q, %v; want %q, %v", tt.regions, got, gotAny, tt.want, tt.wantAny)
			}
		})
	}
}

func TestAliasTable(t *testing.T) {
	for alias, members := range regionAliases {
		if !isRegionCode(alias) {
			t.Errorf("alias %q is not a valid region code", alias)
		}
		seen := map[string]bool{}
		for _, m := range members {
			if !isRegionCode(m) || len(m) != 3 {
				t.Errorf("alias %q: member %q is not a 3-letter region code", alias, m)
			}
			if _, nested := regionAliases[m]; nested || m == RegionAny {
				t.Errorf("alias %q: member %q is itself an alias", alias, m)
			}
			if seen[m] {
				t.Errorf("alias %q: member %q listed twice", alias, m)
			}
			seen[m] = true
		}
	}
}
