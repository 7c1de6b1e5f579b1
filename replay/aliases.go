package replay

// regionAliases maps the region aliases Fly documents for fly-replay and
// fly-prefer-region to the Fly region codes of that area, west to east
// within an area. The table holds current and retired Fly regions (the same
// set routing knows coordinates for); ExpandRegions drops the codes a
// deployment does not have when it is given the deployment's regions.
var regionAliases = map[string][]string{
	"us":   usRegions,
	"usa":  usRegions,
	"na":   {"sea", "sjc", "lax", "phx", "den", "dfw", "ord", "atl", "mia", "iad", "ewr", "bos", "yyz", "yul", "gdl", "qro"},
	"sa":   {"bog", "scl", "eze", "gru", "gig"},
	"eu":   {"mad", "lhr", "cdg", "ams", "fra", "arn", "waw", "otp"},
	"apac": {"bom", "sin", "hkg", "nrt", "syd"},
}

var usRegions = []string{"sea", "sjc", "lax", "phx", "den", "dfw", "ord", "atl", "mia", "iad", "ewr", "bos"}

// RegionAny is the region "any": any region, nearest first.
const RegionAny = "any"

// ExpandRegions expands the aliases in regions (as in Instruction.Regions:
// lower-case, preference order) into Fly region codes, keeping each code at
// its first position. "any" is removed and reported as any == true: after
// the listed regions, any region will do, nearest first.
//
// all is the set of regions the deployment has. When it is non-nil, an
// alias expands only to codes in all; codes listed explicitly are kept
// whether or not they are in all (the caller decides what an unknown region
// means). With all == nil, aliases expand to the whole table.
func ExpandRegions(regions []string, all []string) (ordered []string, any bool) {
	var have map[string]bool
	if all != nil {
		have = make(map[string]bool, len(all))
		for _, r := range all {
			have[r] = true
		}
	}
	seen := make(map[string]bool, len(regions))
	add := func(r string) {
		if !seen[r] {
			seen[r] = true
			ordered = append(ordered, r)
		}
	}
	for _, r := range regions {
		if r == RegionAny {
			any = true
			continue
		}
		members, ok := regionAliases[r]
		if !ok {
			add(r)
			continue
		}
		for _, m := range members {
			if have == nil || have[m] {
				add(m)
			}
		}
	}
	return ordered, any
}
