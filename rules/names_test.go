package rules

import (
	"bufio"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// moduleRoot is the repository, from this package's directory.
const moduleRoot = ".."

// contractMetrics reads README's metrics table (the contract): metric
// family name → type (counter, gauge, histogram).
func contractMetrics(t testing.TB) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(moduleRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("^\\| `(godwit_[a-z0-9_]+)` \\| (counter|gauge|histogram)")
	out := map[string]string{}
	for line := range strings.SplitSeq(string(b), "\n") {
		if m := row.FindStringSubmatch(line); m != nil {
			out[m[1]] = m[2]
		}
	}
	if len(out) < 20 {
		t.Fatalf("README's metrics table: found %d godwit_ metrics (%v), want the whole table", len(out), out)
	}
	return out
}

// exposedFamilies returns the metric families (from # TYPE lines) of a
// text exposition: name → type.
func exposedFamilies(text string) map[string]string {
	out := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
			out[f[2]] = f[3]
		}
	}
	return out
}

// codeMetricNames returns the godwit_ names written in the module's
// non-test Go code, as string literals or as Namespace, Subsystem and
// Name of a collector's options: metrics the code registers, whether or
// not a series of them exists yet (a counter vector shows no series until
// its first increment). The load tools under bench/ only read metrics.
func codeMetricNames(t testing.TB) map[string]bool {
	t.Helper()
	lit := regexp.MustCompile(`"(godwit_[a-z0-9_]+)"`)
	opts := regexp.MustCompile(`Namespace:\s*"(godwit)",\s*Subsystem:\s*"([a-z0-9_]+)",\s*Name:\s*"([a-z0-9_]+)"`)
	out := map[string]bool{}
	err := filepath.WalkDir(moduleRoot, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); path != moduleRoot && (strings.HasPrefix(name, ".") || name == "bench" || name == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range lit.FindAllStringSubmatch(string(b), -1) {
			out[m[1]] = true
		}
		for _, m := range opts.FindAllStringSubmatch(string(b), -1) {
			out[m[1]+"_"+m[2]+"_"+m[3]] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// PromQL words that are neither metric nor function names.
var promqlKeywords = map[string]bool{
	"and": true, "or": true, "unless": true, "bool": true, "offset": true,
	"by": true, "without": true, "on": true, "ignoring": true,
	"group_left": true, "group_right": true, "inf": true, "nan": true, "atan2": true,
}

var (
	promqlStrings  = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	promqlMatchers = regexp.MustCompile(`\{[^{}]*\}|\[[^\[\]]*\]`)
	promqlGrouping = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)`)
	promqlVars     = regexp.MustCompile(`\$\{?\w+\}?`)
	promqlTokens   = regexp.MustCompile(`[0-9][\w.]*|([a-zA-Z_:][\w:]*)(\s*\()?`)
)

// promqlMetricNames returns the metric names an expression selects, in
// order, without repeats: every identifier that is not a function (one
// followed by a parenthesis), a keyword, a label name in a grouping or a
// matcher, a number or duration, or a Grafana variable.
func promqlMetricNames(expr string) []string {
	s := promqlStrings.ReplaceAllString(expr, " ")
	s = promqlMatchers.ReplaceAllString(s, " ")
	s = promqlGrouping.ReplaceAllString(s, " ")
	s = promqlVars.ReplaceAllString(s, " ")
	var out []string
	for _, m := range promqlTokens.FindAllStringSubmatch(s, -1) {
		name, call := m[1], m[2]
		if name == "" || call != "" || promqlKeywords[strings.ToLower(name)] || slices.Contains(out, name) {
			continue
		}
		out = append(out, name)
	}
	return out
}

func TestPromqlMetricNames(t *testing.T) {
	for _, c := range []struct {
		name, expr string
		want       []string
	}{
		{"plain", `godwit_gossip_members`, []string{"godwit_gossip_members"}},
		{"matchers and range", `sum by (app, region) (rate(godwit_requests_total{app=~"$app", code="5xx"}[$__rate_interval]))`,
			[]string{"godwit_requests_total"}},
		{"histogram", `histogram_quantile(0.99, sum by (le) (rate(godwit_queue_wait_seconds_bucket[5m])))`,
			[]string{"godwit_queue_wait_seconds_bucket"}},
		{"binary with matching", `a_total / ignoring (scope) group_left () (b{scope="node"} > 0) and on (app) c:d:rate5m > bool 1e3`,
			[]string{"a_total", "b", "c:d:rate5m"}},
		{"offset and strings with braces", `x offset 5m unless y{l="}{"}`, []string{"x", "y"}},
		{"repeats", `m / m`, []string{"m"}},
		{"function only", `time()`, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := promqlMetricNames(c.expr); !slices.Equal(got, c.want) {
				t.Errorf("promqlMetricNames(%q):\ngot  %q\nwant %q", c.expr, got, c.want)
			}
		})
	}
}

// metricNames checks metric names used by rules or panels.
type metricNames struct {
	contract map[string]string // README's table: family → type
	live     map[string]string // families a live fleet exposes
	code     map[string]bool   // names the code registers
	recorded map[string]bool   // recording rules' outputs
}

// family returns the family of a sample name (a histogram's _bucket,
// _sum and _count are its family's).
func (n *metricNames) family(name string) string {
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok && n.contract[base] == "histogram" {
			return base
		}
	}
	return name
}

// check reports, for an expression of where, every name that is not a
// recorded series or a contract metric registered by the code.
func (n *metricNames) check(t testing.TB, where, expr string) {
	t.Helper()
	names := promqlMetricNames(expr)
	if len(names) == 0 {
		t.Errorf("%s: no metric name in %q", where, expr)
	}
	for _, name := range names {
		if n.recorded[name] {
			continue
		}
		fam := n.family(name)
		if _, ok := n.contract[fam]; !ok {
			t.Errorf("%s: %s is not in README's metrics table (the contract), in %q", where, name, expr)
			continue
		}
		if _, ok := n.live[fam]; !ok && !n.code[fam] {
			t.Errorf("%s: %s is in README's metrics table but neither exposed by a live edge nor registered in the code, in %q", where, name, expr)
		}
		if fam != name && n.live[fam] != "" && n.live[fam] != "histogram" {
			t.Errorf("%s: %s: the live family %s is a %s, not a histogram", where, name, fam, n.live[fam])
		}
	}
}
