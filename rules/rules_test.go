package rules

import (
	"bytes"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	rulesFile     = "godwit.rules.yml"
	rulesTestFile = "godwit.test.yml"
)

// rule is one recording or alerting rule of rulesFile.
type rule struct {
	Record, Alert, Expr, For string
	Labels, Annotations      map[string]string
}

func (r rule) name() string { return r.Record + r.Alert }

// readRules reads rulesFile. It understands the YAML subset the file is
// written in (block maps, plain, quoted and block scalars), enough to
// check names without a YAML dependency; promtool checks the syntax.
func readRules(t testing.TB) []rule {
	t.Helper()
	b, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	var rules []rule
	var cur *rule
	keyIndent := 0
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		trimmed := strings.TrimSpace(l)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		if kind, name, ok := strings.Cut(trimmed, ": "); ok && (kind == "- record" || kind == "- alert") {
			rules = append(rules, rule{Labels: map[string]string{}, Annotations: map[string]string{}})
			cur = &rules[len(rules)-1]
			keyIndent = indentOf(l) + 2
			if kind == "- record" {
				cur.Record = name
			} else {
				cur.Alert = name
			}
			continue
		}
		if cur == nil || indentOf(l) != keyIndent {
			if indentOf(l) < keyIndent {
				cur = nil
			}
			continue
		}
		key, val, _ := strings.Cut(trimmed, ":")
		val = strings.TrimSpace(val)
		switch key {
		case "expr":
			cur.Expr, i = yamlScalar(t, lines, i, keyIndent, val)
		case "for":
			cur.For, i = yamlScalar(t, lines, i, keyIndent, val)
		case "labels", "annotations":
			m := cur.Labels
			if key == "annotations" {
				m = cur.Annotations
			}
			for i+1 < len(lines) && indentOf(lines[i+1]) > keyIndent {
				i++
				k, v, _ := strings.Cut(strings.TrimSpace(lines[i]), ":")
				m[k], i = yamlScalar(t, lines, i, indentOf(lines[i]), strings.TrimSpace(v))
			}
		}
	}
	return rules
}

// yamlScalar returns the scalar whose key is on line i (indented ind) and
// starts with val, and the index of its last line.
func yamlScalar(t testing.TB, lines []string, i, ind int, val string) (string, int) {
	t.Helper()
	switch {
	case strings.HasPrefix(val, "|") || strings.HasPrefix(val, ">"):
		var parts []string
		for i+1 < len(lines) && (strings.TrimSpace(lines[i+1]) == "" || indentOf(lines[i+1]) > ind) {
			i++
			parts = append(parts, strings.TrimSpace(lines[i]))
		}
		sep := " "
		if val[0] == '|' {
			sep = "\n"
		}
		return strings.TrimSpace(strings.Join(parts, sep)), i
	case strings.HasPrefix(val, `"`):
		s, err := strconv.Unquote(val)
		if err != nil {
			t.Fatalf("%s line %d: %v", rulesFile, i+1, err)
		}
		return s, i
	case strings.HasPrefix(val, "'"):
		return strings.ReplaceAll(strings.Trim(val, "'"), "''", "'"), i
	}
	return val, i
}

func indentOf(l string) int { return len(l) - len(strings.TrimLeft(l, " ")) }

// TestRules checks the rules without promtool: recording rule names, and
// for every alert a severity, a summary and a description, a for, and
// unit tests in rulesTestFile that fire it and that do not.
func TestRules(t *testing.T) {
	rules := readRules(t)
	var records, alerts int
	levelName := regexp.MustCompile(`^[a-z_]+:godwit_[a-z0-9_]+:[a-z0-9_]+$`)
	seen := map[string]bool{}
	for _, r := range rules {
		if seen[r.name()] && r.Record == "" {
			t.Errorf("alert %s: defined twice", r.name())
		}
		seen[r.name()] = true
		if r.Expr == "" {
			t.Errorf("%s: no expr read", r.name())
		}
		if r.Record != "" {
			records++
			if !levelName.MatchString(r.Record) {
				t.Errorf("recording rule %s: want a name level:godwit_metric:operation", r.Record)
			}
			continue
		}
		alerts++
		if !strings.HasPrefix(r.Alert, "Godwit") {
			t.Errorf("alert %s: want a name starting with Godwit", r.Alert)
		}
		if sev := r.Labels["severity"]; sev != "warning" && sev != "critical" {
			t.Errorf("alert %s: severity %q, want warning or critical", r.Alert, sev)
		}
		if d, err := time.ParseDuration(r.For); err != nil || d < time.Minute {
			t.Errorf("alert %s: for %q, want a duration of a minute or more", r.Alert, r.For)
		}
		for _, a := range []string{"summary", "description"} {
			if len(r.Annotations[a]) < 20 {
				t.Errorf("alert %s: annotation %s %q, want a sentence", r.Alert, a, r.Annotations[a])
			}
		}
	}
	if records < 10 || alerts < 10 {
		t.Fatalf("%s: read %d recording rules and %d alerts; want the whole file", rulesFile, records, alerts)
	}

	// Every alert is tested firing and not firing; two recording rules
	// or more are tested by value.
	b, err := os.ReadFile(rulesTestFile)
	if err != nil {
		t.Fatal(err)
	}
	firing, quiet, tested := map[string]int{}, map[string]int{}, map[string]bool{}
	lines := strings.Split(string(b), "\n")
	for i, l := range lines {
		trimmed := strings.TrimSpace(l)
		if name, ok := strings.CutPrefix(trimmed, "alertname: "); ok && i+1 < len(lines) {
			next := strings.TrimSpace(lines[i+1])
			switch {
			case strings.HasPrefix(next, "exp_alerts: []"):
				quiet[name]++
			case next == "exp_alerts:":
				firing[name]++
			}
		}
		if expr, ok := strings.CutPrefix(trimmed, "- expr: "); ok {
			for _, n := range promqlMetricNames(expr) {
				if seen[n] && strings.Contains(n, ":") {
					tested[n] = true
				}
			}
		}
	}
	for _, r := range rules {
		if r.Alert == "" {
			continue
		}
		if firing[r.Alert] == 0 {
			t.Errorf("alert %s: no test in %s where it fires", r.Alert, rulesTestFile)
		}
		// An alert tested firing with other series in the same group that
		// must not fire covers the quiet case too; still, ask for an
		// evaluation before it fires (pending, or nothing at all).
		if quiet[r.Alert] == 0 && !sharesQuietTest(lines, r.Alert) {
			t.Errorf("alert %s: no test in %s where it must not fire (exp_alerts: [])", r.Alert, rulesTestFile)
		}
	}
	if len(tested) < 2 {
		t.Errorf("%s: recording rules tested by value: %v; want two or more", rulesTestFile, tested)
	}
}

// sharesQuietTest reports whether alert is tested in a test group (one
// "- interval:" block) that also has an exp_alerts: [] case for another
// alert of the same series, such as GodwitWakeFailures next to
// GodwitWakeTimeouts.
func sharesQuietTest(lines []string, alert string) bool {
	var group []string
	check := func() bool {
		has, quiet := false, false
		for i, l := range group {
			if strings.TrimSpace(l) == "alertname: "+alert {
				has = true
			}
			if strings.HasPrefix(strings.TrimSpace(l), "alertname: ") && i+1 < len(group) && strings.HasPrefix(strings.TrimSpace(group[i+1]), "exp_alerts: []") {
				quiet = true
			}
		}
		return has && quiet
	}
	for _, l := range lines {
		if strings.TrimSpace(l) == "- interval: 1m" {
			if check() {
				return true
			}
			group = nil
		}
		group = append(group, l)
	}
	return check()
}

// promtool returns the path of promtool, skipping the test without it.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (Debian: apt-get install prometheus); skipping the promtool checks")
	}
	return p
}

// runPromtool runs promtool with args (and stdin, when not nil) and fails
// the test unless it succeeds.
func runPromtool(t *testing.T, stdin []byte, args ...string) string {
	t.Helper()
	cmd := exec.Command(promtool(t), args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	if len(bytes.TrimSpace(out)) == 0 {
		out = []byte("(no output: no problems found)")
	}
	t.Logf("promtool %s:\n%s", strings.Join(args, " "), out)
	return string(out)
}

func TestPromtoolCheckRules(t *testing.T) {
	out := runPromtool(t, nil, "check", "rules", rulesFile)
	if !strings.Contains(out, "SUCCESS") {
		t.Errorf("promtool check rules: got %q, want SUCCESS", out)
	}
}

func TestPromtoolTestRules(t *testing.T) {
	out := runPromtool(t, nil, "test", "rules", rulesTestFile)
	if !strings.Contains(out, "SUCCESS") {
		t.Errorf("promtool test rules: got %q, want SUCCESS", out)
	}
}

// TestLiveFleet runs the fleet, sends it traffic, and checks the names
// the dashboard and the rules use against what the edges expose (and the
// code registers), and the exposition with promtool check metrics.
func TestLiveFleet(t *testing.T) {
	f := startFleet(t)
	f.exercise(t)
	texts := map[string]string{}
	live := map[string]string{}
	for _, e := range []*edge{f.iad, f.nrt} {
		texts[e.name] = f.scrape(t, e)
		for name, typ := range exposedFamilies(texts[e.name]) {
			live[name] = typ
		}
	}
	// The traffic made these exist: the request path, the queue and its
	// rejections, replays over the backhaul, gossip.
	for _, name := range []string{
		"godwit_requests_total", "godwit_request_duration_seconds", "godwit_queue_wait_seconds",
		"godwit_concurrency_rejections_total", "godwit_queue_waiting", "godwit_replays_total",
		"godwit_replay_duration_seconds", "godwit_machine_inflight", "godwit_machine_limit",
		"godwit_machine_wakes_total", "godwit_machine_wake_duration_seconds", "godwit_backhaul_requests_total",
		"godwit_gossip_members", "godwit_gossip_state_propagation_seconds", "godwit_client_connections",
		"godwit_connection_limit",
	} {
		if _, ok := exposedFamilies(texts["edge-iad"])[name]; !ok {
			t.Errorf("edge-iad's /metrics after the traffic: no %s", name)
		}
	}
	contract := contractMetrics(t)
	for name := range live {
		if strings.HasPrefix(name, "godwit_") && contract[name] == "" {
			t.Errorf("live edge exposes %s (%s), which README's metrics table lacks", name, live[name])
		}
	}
	n := &metricNames{contract: contract, live: live, code: codeMetricNames(t), recorded: map[string]bool{}}
	rules := readRules(t)
	for _, r := range rules {
		if r.Record != "" {
			n.recorded[r.Record] = true
		}
	}

	t.Run("rules", func(t *testing.T) {
		for _, r := range rules {
			n.check(t, rulesFile+": "+r.name(), r.Expr)
		}
	})
	t.Run("dashboard", func(t *testing.T) {
		d := readDashboard(t)
		for _, p := range d.allPanels() {
			for _, tg := range p.Targets {
				n.check(t, "dashboard panel "+strconv.Quote(p.Title)+" "+tg.RefID, tg.Expr)
			}
		}
		for _, v := range d.Templating.List {
			if sel, _, ok := v.labelValues(); ok {
				n.check(t, "dashboard variable "+v.Name, sel)
			}
		}
	})
	t.Run("promtool check metrics", func(t *testing.T) {
		for _, e := range []*edge{f.iad, f.nrt} {
			t.Logf("/metrics of %s (%d bytes):", e.name, len(texts[e.name]))
			runPromtool(t, []byte(texts[e.name]), "check", "metrics")
		}
	})
}
