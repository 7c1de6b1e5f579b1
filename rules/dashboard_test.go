package rules

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// dashboardFile is the Grafana dashboard, from this package's directory.
var dashboardFile = filepath.Join(moduleRoot, "dashboards", "godwit.json")

// dashboard is the part of Grafana's dashboard JSON model the tests read.
type dashboard struct {
	UID           string  `json:"uid"`
	Title         string  `json:"title"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []variable `json:"list"`
	} `json:"templating"`
}

type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panel struct {
	ID          int                      `json:"id"`
	Type        string                   `json:"type"`
	Title       string                   `json:"title"`
	Description string                   `json:"description"`
	Datasource  *datasourceRef           `json:"datasource"`
	GridPos     struct{ H, W, X, Y int } `json:"gridPos"`
	Targets     []struct {
		RefID        string         `json:"refId"`
		Expr         string         `json:"expr"`
		LegendFormat string         `json:"legendFormat"`
		Datasource   *datasourceRef `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // of a collapsed row
}

type variable struct {
	Name       string          `json:"name"`
	Type       string          `json:"type"`
	Query      json.RawMessage `json:"query"` // a string, or Grafana's {query: ...} object
	Datasource *datasourceRef  `json:"datasource"`
}

// queryString is the variable's query text.
func (v variable) queryString() string {
	var s string
	if json.Unmarshal(v.Query, &s) == nil {
		return s
	}
	var o struct{ Query string }
	json.Unmarshal(v.Query, &o)
	return o.Query
}

// labelValues splits a label_values(selector, label) query.
func (v variable) labelValues() (selector, label string, ok bool) {
	m := regexp.MustCompile(`^label_values\((.+),\s*(\w+)\)$`).FindStringSubmatch(strings.TrimSpace(v.queryString()))
	if m == nil {
		return "", "", false
	}
	return m[1], m[2], true
}

// allPanels returns the panels that show data: rows' nested panels
// included, rows themselves left out.
func (d *dashboard) allPanels() []panel {
	var out []panel
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if p.Type == "row" {
				walk(p.Panels)
				continue
			}
			out = append(out, p)
		}
	}
	walk(d.Panels)
	return out
}

func readDashboard(t testing.TB) *dashboard {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	if !json.Valid(b) {
		t.Fatalf("%s: not valid JSON", dashboardFile)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	return &d
}

// TestDashboard checks the dashboard's structure: a Grafana schema of
// today, the datasource variable and the app, region and instance
// variables, every panel on ${datasource}, and the metrics the issue
// asks to chart. TestLiveFleet checks its metric names.
func TestDashboard(t *testing.T) {
	d := readDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Errorf("uid %q, title %q; want both", d.UID, d.Title)
	}
	// 39 is Grafana 11.0's schema; Grafana migrates older ones on import,
	// and newer Grafanas this one.
	if d.SchemaVersion < 39 {
		t.Errorf("schemaVersion %d, want that of a current Grafana (39 or more)", d.SchemaVersion)
	}

	vars := map[string]variable{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v
	}
	if ds := vars["datasource"]; ds.Type != "datasource" || ds.queryString() != "prometheus" {
		t.Errorf("variable datasource: type %q, query %q; want a datasource variable of type prometheus", ds.Type, ds.queryString())
	}
	for _, c := range []struct{ name, label string }{{"app", "app"}, {"region", "region"}, {"instance", "instance"}} {
		v, ok := vars[c.name]
		if !ok {
			t.Errorf("no variable %s", c.name)
			continue
		}
		sel, label, ok := v.labelValues()
		if v.Type != "query" || !ok || label != c.label || !strings.HasPrefix(sel, "godwit_") {
			t.Errorf("variable %s: type %q, query %q; want a query label_values(godwit_..., %s)", c.name, v.Type, v.queryString(), c.label)
		}
		if v.Datasource == nil || v.Datasource.UID != "${datasource}" {
			t.Errorf("variable %s: datasource %+v, want uid ${datasource}", c.name, v.Datasource)
		}
	}

	panels := d.allPanels()
	if len(panels) < 20 {
		t.Fatalf("%d panels, want the whole dashboard", len(panels))
	}
	ids := map[int]string{}
	varRef := regexp.MustCompile(`\$\{?(\w+)`)
	used := map[string]bool{}
	for _, p := range panels {
		where := "panel " + p.Title
		if prev, dup := ids[p.ID]; dup || p.ID == 0 {
			t.Errorf("%s: id %d, also that of %q", where, p.ID, prev)
		}
		ids[p.ID] = p.Title
		if p.Title == "" || p.Description == "" {
			t.Errorf("panel %d: title %q, description %q; want both", p.ID, p.Title, p.Description)
		}
		if p.Datasource == nil || p.Datasource.Type != "prometheus" || p.Datasource.UID != "${datasource}" {
			t.Errorf("%s: datasource %+v, want {prometheus ${datasource}}", where, p.Datasource)
		}
		if g := p.GridPos; g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("%s: gridPos %+v outside Grafana's 24 columns", where, g)
		}
		if len(p.Targets) == 0 {
			t.Errorf("%s: no query", where)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if tg.Datasource == nil || tg.Datasource.UID != "${datasource}" {
				t.Errorf("%s, query %s: datasource %+v, want uid ${datasource}", where, tg.RefID, tg.Datasource)
			}
			if tg.RefID == "" || refs[tg.RefID] {
				t.Errorf("%s: refId %q empty or repeated", where, tg.RefID)
			}
			refs[tg.RefID] = true
			if tg.Expr == "" || tg.LegendFormat == "" {
				t.Errorf("%s, query %s: expr %q, legendFormat %q; want both", where, tg.RefID, tg.Expr, tg.LegendFormat)
			}
			for _, m := range varRef.FindAllStringSubmatch(tg.Expr, -1) {
				if _, ok := vars[m[1]]; !ok && !strings.HasPrefix(m[1], "__") {
					t.Errorf("%s, query %s: $%s is not a variable of the dashboard", where, tg.RefID, m[1])
				}
			}
			if strings.Contains(tg.Expr, "histogram_quantile(") && !regexp.MustCompile(`by \([^)]*\ble\b[^)]*\)`).MatchString(tg.Expr) {
				t.Errorf("%s, query %s: histogram_quantile without le in its aggregation: %q", where, tg.RefID, tg.Expr)
			}
			for _, name := range promqlMetricNames(tg.Expr) {
				used[strings.TrimSuffix(name, "_bucket")] = true
			}
		}
	}
	for _, name := range []string{
		"godwit_requests_total", "godwit_request_duration_seconds",
		"godwit_replays_total", "godwit_replay_duration_seconds",
		"godwit_machine_inflight", "godwit_machine_limit", "godwit_queue_wait_seconds", "godwit_queue_waiting",
		"godwit_concurrency_rejections_total",
		"godwit_machine_wakes_total", "godwit_machine_wake_duration_seconds",
		"godwit_gossip_members", "godwit_gossip_state_propagation_seconds",
		"godwit_backhaul_rtt_seconds", "godwit_backhaul_errors_total",
		"godwit_client_connections", "godwit_connection_limit", "godwit_connection_rejections_total",
	} {
		if !used[name] {
			t.Errorf("no panel charts %s", name)
		}
	}
	// The app and region variables filter the request panels.
	for _, p := range panels {
		for _, tg := range p.Targets {
			if slices.Contains(promqlMetricNames(tg.Expr), "godwit_requests_total") &&
				(!strings.Contains(tg.Expr, `app=~"$app"`) || !strings.Contains(tg.Expr, `region=~"$region"`)) {
				t.Errorf("panel %s, query %s: godwit_requests_total not filtered by $app and $region: %q", p.Title, tg.RefID, tg.Expr)
			}
		}
	}
}
