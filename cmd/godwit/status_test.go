package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/godwit/godwit/internal/edgetest"
	"github.com/godwit/godwit/proxy"
)

// statusEdge is one proxy.Server of a test fleet, run in the test process.
type statusEdge struct {
	name  string
	srv   *proxy.Server
	admin string // admin URL
}

// statusEdgeConfig is the TOML of a test edge: every listener, gossip and
// the backhaul on loopback with free ports, joining join ("" for none),
// serving apps web (limits 20/25) and api (soft 5, no hard limit), and
// owning the given [[machine]] tables.
func statusEdgeConfig(name, region, join, machines string) string {
	joinLine := ""
	if join != "" {
		joinLine = fmt.Sprintf("join = [%q]", join)
	}
	return fmt.Sprintf(`
[node]
name   = %q
region = %q

[listen]
http  = "127.0.0.1:0"
admin = "127.0.0.1:0"

[log]
access = false

[gossip]
bind = "127.0.0.1:0"
%s

[backhaul]
listen = "127.0.0.1:0"

[[app]]
name  = "web"
hosts = ["web.test"]
  [app.http_service.concurrency]
  soft_limit = 20
  hard_limit = 25

[[app]]
name  = "api"
hosts = ["api.test"]
  [app.http_service.concurrency]
  soft_limit = 5
`, name, region, joinLine) + machines
}

// statusMachine is a [[machine]] table.
func statusMachine(id, app, region, addr, state string) string {
	return fmt.Sprintf("\n[[machine]]\nid = %q\napp = %q\nregion = %q\naddress = %q\nstate = %q\n", id, app, region, addr, state)
}

// startStatusEdge runs an edge until the test ends and waits until its
// gossip is up.
func startStatusEdge(t *testing.T, name, region, join, machines string) *statusEdge {
	t.Helper()
	e := edgetest.Start(t, name, statusEdgeConfig(name, region, join, machines), edgetest.Options{})
	return &statusEdge{name: name, srv: e.Server, admin: "http://" + e.Server.Addr("admin")}
}

// statusMachineServer is a started app machine: an HTTP server on loopback.
func statusMachineServer(t *testing.T) string {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	t.Cleanup(s.Close)
	return s.Listener.Addr().String()
}

// statusRun runs `godwit status args...` in-process.
func statusRun(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(t.Context(), append([]string{"status"}, args...), &out, &errOut)
	return code, out.String(), errOut.String()
}

// adminGet decodes the JSON answer of GET url into v.
func adminGet(t *testing.T, url string, v any) {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}

// TestStatusFleet runs a fleet of three edges gossiping on loopback and
// `godwit status` against one of them: the table and --json must show
// every member and machine as the admin API does.
func TestStatusFleet(t *testing.T) {
	iadM, cdgM, nrtWeb, nrtAPI := statusMachineServer(t), statusMachineServer(t), statusMachineServer(t), statusMachineServer(t)
	iad := startStatusEdge(t, "edge-iad", "iad", "",
		statusMachine("m-iad-1", "web", "iad", iadM, "started")+
			statusMachine("a-iad-1", "api", "iad", "127.0.0.1:9", "stopped"))
	join := iad.srv.GossipAddr()
	cdg := startStatusEdge(t, "edge-cdg", "cdg", join, statusMachine("m-cdg-1", "web", "cdg", cdgM, "started"))
	nrt := startStatusEdge(t, "edge-nrt", "nrt", join,
		statusMachine("m-nrt-1", "web", "nrt", nrtWeb, "started")+
			statusMachine("a-nrt-1", "api", "nrt", nrtAPI, "started"))
	edges := []*statusEdge{iad, cdg, nrt}

	// What each machine must look like from edge-iad, once gossip is done.
	type want struct{ app, region, owner, state, load string }
	wantMachines := map[string]want{
		"a-iad-1": {"api", "iad", "local", "stopped", "0/5/-"},
		"a-nrt-1": {"api", "nrt", "edge-nrt", "started", "0/5/-"},
		"m-cdg-1": {"web", "cdg", "edge-cdg", "started", "0/20/25"},
		"m-iad-1": {"web", "iad", "local", "started", "0/20/25"},
		"m-nrt-1": {"web", "nrt", "edge-nrt", "started", "0/20/25"},
	}
	for _, e := range edges {
		edgetest.Poll(t, 30*time.Second, e.name+" seeing the two others alive", func() bool {
			alive := 0
			for _, m := range e.srv.Members() {
				if m.State == "alive" {
					alive++
				}
			}
			return alive == len(edges)
		})
	}
	edgetest.Poll(t, 30*time.Second, "edge-iad knowing every machine, started and healthy where it should be", func() bool {
		ms := iad.srv.Machines()
		if len(ms) != len(wantMachines) {
			return false
		}
		for _, m := range ms {
			w, ok := wantMachines[m.ID]
			if !ok || m.State != w.state || !m.Reachable || (m.State == "started" && m.Health != "passing") {
				return false
			}
		}
		return true
	})

	t.Run("table", func(t *testing.T) {
		code, out, errOut := statusRun(t, "--admin", iad.admin)
		if code != 0 || errOut != "" {
			t.Fatalf("godwit status: exit %d, stderr %q; want 0 and nothing", code, errOut)
		}
		t.Logf("godwit status:\n%s", out)
		var apiMachines []proxy.MachineStatus
		adminGet(t, iad.admin+"/v1/machines", &apiMachines)
		health := map[string]string{}
		for _, m := range apiMachines {
			health[m.ID] = m.Health
		}

		rows := statusRows(out)
		memberRegion := map[string]string{"edge-iad (self)": "iad", "edge-cdg": "cdg", "edge-nrt": "nrt"}
		var memberOrder, machineOrder []string
		rtt := regexp.MustCompile(`^(-|\d+\.\d\d)$`)
		for _, r := range rows["MEMBERS"] {
			if len(r) != 4 {
				t.Errorf("member row %q: got %d columns, want 4", r, len(r))
				continue
			}
			region, ok := memberRegion[r[0]]
			if !ok {
				t.Errorf("member row %q: unknown member", r)
				continue
			}
			memberOrder = append(memberOrder, r[0])
			if r[1] != region || r[2] != "alive" || !rtt.MatchString(r[3]) {
				t.Errorf("member row %q: want region %s, state alive and an RTT in ms or -", r, region)
			}
		}
		if want := []string{"edge-cdg", "edge-iad (self)", "edge-nrt"}; !slices.Equal(memberOrder, want) {
			t.Errorf("members: got %q, want %q (by region, then name)", memberOrder, want)
		}
		for _, r := range rows["MACHINES"] {
			if len(r) != 10 {
				t.Errorf("machine row %q: got %d columns, want 10", r, len(r))
				continue
			}
			w, ok := wantMachines[r[1]]
			if !ok {
				t.Errorf("machine row %q: unknown machine", r)
				continue
			}
			machineOrder = append(machineOrder, r[1])
			got := []string{r[0], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9]}
			wantRow := []string{w.app, w.region, w.owner, w.state, health[r[1]], w.load, "below_soft", "0", "yes"}
			if !slices.Equal(got, wantRow) {
				t.Errorf("machine %s: got %q, want %q", r[1], got, wantRow)
			}
		}
		if want := []string{"a-iad-1", "a-nrt-1", "m-cdg-1", "m-iad-1", "m-nrt-1"}; !slices.Equal(machineOrder, want) {
			t.Errorf("machines: got %q, want %q (by app, region, id)", machineOrder, want)
		}
		if want := "godwit status of " + iad.admin + " (edge edge-iad, region iad)\n"; !strings.HasPrefix(out, want) {
			t.Errorf("first line: got %q, want %q", strings.SplitN(out, "\n", 2)[0], want)
		}
		if want := "3 of 3 members alive; 5 machines: 4 started, 1 stopped, 0 failed"; !strings.Contains(out, want) {
			t.Errorf("no summary line %q", want)
		}
	})

	t.Run("json", func(t *testing.T) {
		t.Setenv("GODWIT_ADMIN", iad.admin) // no --admin: the environment says where
		code, out, errOut := statusRun(t, "--json")
		if code != 0 || errOut != "" {
			t.Fatalf("godwit status --json: exit %d, stderr %q; want 0 and nothing", code, errOut)
		}
		var got struct {
			Admin    string                `json:"admin"`
			Members  []proxy.MemberStatus  `json:"members"`
			Machines []proxy.MachineStatus `json:"machines"`
		}
		dec := json.NewDecoder(strings.NewReader(out))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&got); err != nil {
			t.Fatalf("godwit status --json: %v in\n%s", err, out)
		}
		if dec.More() {
			t.Errorf("godwit status --json printed more than one JSON value:\n%s", out)
		}
		var members []proxy.MemberStatus
		var machines []proxy.MachineStatus
		adminGet(t, iad.admin+"/v1/members", &members)
		adminGet(t, iad.admin+"/v1/machines", &machines)
		if got.Admin != iad.admin {
			t.Errorf("admin: got %q, want %q", got.Admin, iad.admin)
		}
		// RTT estimates move between two reads; the rest must not.
		strip := func(ms []proxy.MemberStatus) []proxy.MemberStatus {
			out := slices.Clone(ms)
			for i := range out {
				out[i].RTTMs = nil
			}
			return out
		}
		if g, w := strip(got.Members), strip(members); !slices.Equal(g, w) {
			t.Errorf("members:\ngot  %+v\nwant %+v (GET /v1/members)", g, w)
		}
		if !slices.Equal(got.Machines, machines) {
			t.Errorf("machines:\ngot  %+v\nwant %+v (GET /v1/machines)", got.Machines, machines)
		}

		// The field names are the admin API's, element by element.
		var raw struct{ Members, Machines []map[string]any }
		json.Unmarshal([]byte(out), &raw)
		var rawMachines []map[string]any
		adminGet(t, iad.admin+"/v1/machines", &rawMachines)
		if len(raw.Machines) != len(rawMachines) {
			t.Fatalf("machines: got %d, want %d", len(raw.Machines), len(rawMachines))
		}
		for i := range rawMachines {
			if g, w := slices.Sorted(maps.Keys(raw.Machines[i])), slices.Sorted(maps.Keys(rawMachines[i])); !slices.Equal(g, w) {
				t.Errorf("machine %d fields: got %q, want %q", i, g, w)
			}
		}
	})

	t.Run("unreachable", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		dead := "http://" + l.Addr().String()
		l.Close()
		code, out, errOut := statusRun(t, "--admin", dead)
		if code != 1 || out != "" {
			t.Errorf("godwit status --admin %s: exit %d, stdout %q; want 1 and nothing", dead, code, out)
		}
		for _, want := range []string{"cannot reach the admin API at " + dead, "--admin"} {
			if !strings.Contains(errOut, want) {
				t.Errorf("stderr %q lacks %q", errOut, want)
			}
		}
	})
}

// statusRows splits the table output into its sections' rows (header
// rows left out), cells split on runs of two or more spaces.
func statusRows(out string) map[string][][]string {
	rows := map[string][][]string{}
	section := ""
	header := false
	gap := regexp.MustCompile(`\s{2,}`)
	for _, line := range strings.Split(out, "\n") {
		switch {
		case line == "MEMBERS" || line == "MACHINES":
			section, header = line, true
		case line == "":
			section = ""
		case section != "" && header:
			header = false
		case section != "":
			rows[section] = append(rows[section], gap.Split(strings.TrimSpace(line), -1))
		}
	}
	return rows
}

// The fixture: an admin API's canned lists: members and
// machines out of order, one unmeasured RTT, a dead member, a failed
// machine, no hard limit, an unreachable owner.
const (
	fixtureMembers = `[
  {"name": "edge-nrt", "region": "nrt", "addr": "10.0.0.3:7946", "backhaul": "10.0.0.3:4433", "state": "dead", "self": false},
  {"name": "edge-iad-2", "region": "iad", "addr": "10.0.0.2:7946", "backhaul": "10.0.0.2:4433", "state": "alive", "self": false, "rtt_ms": 0.25},
  {"name": "edge-iad-1", "region": "iad", "addr": "10.0.0.1:7946", "backhaul": "10.0.0.1:4433", "state": "alive", "self": true, "rtt_ms": 0},
  {"name": "edge-cdg", "region": "cdg", "addr": "10.0.0.4:7946", "backhaul": "10.0.0.4:4433", "state": "alive", "self": false, "rtt_ms": 81.125}
]`
	fixtureMachines = `[
  {"id": "m-2", "app": "web", "region": "iad", "address": "10.1.0.2:8080", "state": "failed", "health": "failing", "band": "below_soft", "inflight": 0, "soft_limit": 20, "hard_limit": 25, "queued": 0, "reachable": true, "last_failure": "2026-05-01T10:00:00Z: exec: \"./app\": not found"},
  {"id": "m-1", "app": "web", "region": "iad", "address": "10.1.0.1:8080", "state": "started", "health": "passing", "band": "above_soft", "inflight": 21, "soft_limit": 20, "hard_limit": 25, "queued": 3, "reachable": true},
  {"id": "m-9", "app": "web", "region": "cdg", "address": "10.1.0.9:8080", "state": "started", "health": "passing", "band": "at_hard", "inflight": 25, "soft_limit": 20, "hard_limit": 25, "queued": 3, "owner": "edge-cdg", "reachable": true},
  {"id": "m-7", "app": "web", "region": "nrt", "address": "10.1.0.7:8080", "state": "started", "health": "failing", "band": "below_soft", "inflight": 0, "soft_limit": 20, "hard_limit": 25, "queued": 3, "owner": "edge-nrt", "reachable": false},
  {"id": "a-1", "app": "api", "region": "iad", "address": "10.1.0.5:9000", "state": "suspended", "health": "failing", "band": "below_soft", "inflight": 0, "soft_limit": 5, "hard_limit": 0, "queued": 0, "reachable": true, "future_field": 1}
]`
	fixtureTable = `godwit status of {{admin}} (edge edge-iad-1, region iad)

MEMBERS
NAME               REGION  STATE  RTT (ms)
edge-cdg           cdg     alive  81.12
edge-iad-1 (self)  iad     alive  -
edge-iad-2         iad     alive  0.25
edge-nrt           nrt     dead   -

MACHINES
APP  ID   REGION  OWNER     STATE       HEALTH   IN/SOFT/HARD  BAND        QUEUED  REACHABLE
api  a-1  iad     local     suspended   failing  0/5/-         below_soft  0       yes
web  m-9  cdg     edge-cdg  started     passing  25/20/25      at_hard     3       yes
web  m-1  iad     local     started     passing  21/20/25      above_soft  3       yes
web  m-2  iad     local     failed [1]  failing  0/20/25       below_soft  0       yes
web  m-7  nrt     edge-nrt  started     failing  0/20/25       below_soft  3       no
[1] m-2 last failed: 2026-05-01T10:00:00Z: exec: "./app": not found

3 of 4 members alive; 5 machines: 3 started, 0 stopped, 1 suspended, 1 failed; 1 started but failing health checks; 1 unreachable
`
)

// fixtureAdmin serves the fixture; an Authorization header, if any, is
// sent to auth.
func fixtureAdmin(t *testing.T, auth chan<- string) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if auth != nil {
			auth <- r.Header.Get("Authorization")
		}
		switch r.URL.Path {
		case "/v1/members":
			io.WriteString(w, fixtureMembers)
		case "/v1/machines":
			io.WriteString(w, fixtureMachines)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(s.Close)
	return s
}

// TestStatusTable compares the whole table with the expected one: order,
// alignment, "-" for what is not there, footnotes and the summary.
func TestStatusTable(t *testing.T) {
	s := fixtureAdmin(t, nil)
	code, out, errOut := statusRun(t, "--admin", s.URL+"/")
	if code != 0 || errOut != "" {
		t.Fatalf("exit %d, stderr %q; want 0 and nothing", code, errOut)
	}
	if want := strings.ReplaceAll(fixtureTable, "{{admin}}", s.URL); out != want {
		t.Errorf("table:\ngot\n%s\nwant\n%s", out, want)
	}

	// Coloured, the table is the same once the colours are taken out:
	// the columns stay aligned.
	st, err := fetchStatus(t.Context(), s.URL, "")
	if err != nil {
		t.Fatal(err)
	}
	var colored bytes.Buffer
	st.render(&colored, true)
	sgr := regexp.MustCompile("\x1b\\[[0-9;]*m")
	if !strings.Contains(colored.String(), sgrRed+"failed [1]"+sgrReset) {
		t.Errorf("coloured table lacks a red failed state:\n%q", colored.String())
	}
	if got := sgr.ReplaceAllString(colored.String(), ""); got != out {
		t.Errorf("coloured table without its colours:\ngot\n%s\nwant\n%s", got, out)
	}
}

// TestStatusJSONPassesFieldsThrough: --json keeps the admin API's lists as
// they are, fields godwit does not know included, and [] for null.
func TestStatusJSONPassesFieldsThrough(t *testing.T) {
	s := fixtureAdmin(t, nil)
	code, out, _ := statusRun(t, "--admin", s.URL, "--json")
	if code != 0 {
		t.Fatalf("exit %d, want 0", code)
	}
	var got struct {
		Admin    string            `json:"admin"`
		Members  []json.RawMessage `json:"members"`
		Machines []json.RawMessage `json:"machines"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	var wantMachines []json.RawMessage
	json.Unmarshal([]byte(fixtureMachines), &wantMachines)
	if len(got.Machines) != len(wantMachines) || len(got.Members) != 4 || got.Admin != s.URL {
		t.Fatalf("got admin %q, %d members, %d machines; want %q, 4, %d", got.Admin, len(got.Members), len(got.Machines), s.URL, len(wantMachines))
	}
	for i := range wantMachines {
		var g, w bytes.Buffer
		json.Compact(&g, got.Machines[i])
		json.Compact(&w, wantMachines[i])
		if g.String() != w.String() {
			t.Errorf("machine %d:\ngot  %s\nwant %s", i, g.String(), w.String())
		}
	}

	empty := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "null") }))
	defer empty.Close()
	if code, out, _ := statusRun(t, "--admin", empty.URL, "--json"); code != 0 || !strings.Contains(out, `"members": []`) || !strings.Contains(out, `"machines": []`) {
		t.Errorf("admin answering null: exit %d, output %s; want 0 and empty lists", code, out)
	}
}

func TestStatusToken(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "admin.token")
	if err := os.WriteFile(tokenFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"none", nil, ""},
		{"flag", []string{"--token", "s3cret"}, "Bearer s3cret"},
		{"file", []string{"--token-file", tokenFile}, "Bearer s3cret"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			auth := make(chan string, 2)
			s := fixtureAdmin(t, auth)
			code, _, errOut := statusRun(t, append([]string{"--admin", s.URL}, tc.args...)...)
			if code != 0 {
				t.Fatalf("exit %d (%s), want 0", code, errOut)
			}
			for range 2 {
				if got := <-auth; got != tc.want {
					t.Errorf("Authorization: got %q, want %q", got, tc.want)
				}
			}
		})
	}
}

// TestStatusErrors: what the admin API answers wrong exits 1 with the
// reason; a wrong command line exits 2 with the usage.
func TestStatusErrors(t *testing.T) {
	answer := func(status int, body string) string {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(status)
			io.WriteString(w, body)
		}))
		t.Cleanup(s.Close)
		return s.URL
	}
	unauthorized := answer(401, `{"error":"this admin call needs the bearer token"}`)
	broken := answer(500, "internal trouble\nsecond line")
	badJSON := answer(200, `{"members": "not a list"`)
	wrongShape := answer(200, `[{"name": 7}]`)
	for _, tc := range []struct {
		name string
		args []string
		code int
		want []string // in stderr
	}{
		{"401 with a JSON error", []string{"--admin", unauthorized}, 1,
			[]string{"GET " + unauthorized + "/v1/members: 401 Unauthorized: this admin call needs the bearer token", "--token-file"}},
		{"500 with text", []string{"--admin", broken}, 1, []string{"500 Internal Server Error: internal trouble"}},
		{"bad JSON", []string{"--admin", badJSON}, 1, []string{"GET " + badJSON + "/v1/members: bad JSON"}},
		{"JSON of the wrong shape", []string{"--admin", wrongShape}, 1, []string{"bad JSON"}},
		{"missing token file", []string{"--admin", unauthorized, "--token-file", filepath.Join(t.TempDir(), "nope")}, 1, []string{"--token-file", "no such file"}},
		{"argument", []string{"extra"}, 2, []string{`unexpected argument "extra"`, "usage: godwit status"}},
		{"unknown flag", []string{"--frob"}, 2, []string{"flag provided but not defined: -frob", "usage: godwit status"}},
		{"bad scheme", []string{"--admin", "ftp://127.0.0.1:9090"}, 2, []string{`--admin "ftp://127.0.0.1:9090": scheme "ftp"`}},
		{"two tokens", []string{"--token", "a", "--token-file", "b"}, 2, []string{"--token and --token-file both given"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := statusRun(t, tc.args...)
			if code != tc.code || out != "" {
				t.Errorf("exit %d, stdout %q; want %d and nothing", code, out, tc.code)
			}
			for _, w := range tc.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr %q lacks %q", errOut, w)
				}
			}
		})
	}
}

func TestStatusHelp(t *testing.T) {
	code, out, errOut := statusRun(t, "--help")
	if code != 0 || errOut != "" {
		t.Fatalf("godwit status --help: exit %d, stderr %q; want 0 and nothing", code, errOut)
	}
	for _, want := range []string{"usage: godwit status", "GODWIT_ADMIN", "-admin URL", "-json", "-token-file FILE", "Exit status"} {
		if !strings.Contains(out, want) {
			t.Errorf("help lacks %q:\n%s", want, out)
		}
	}
}

func TestStatusAdminURL(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{"http://127.0.0.1:9090", "http://127.0.0.1:9090", ""},
		{"http://127.0.0.1:9090/", "http://127.0.0.1:9090", ""},
		{"127.0.0.1:9090", "http://127.0.0.1:9090", ""},
		{"https://edge.example.com/admin/", "https://edge.example.com/admin", ""},
		{"[::1]:9090", "http://[::1]:9090", ""},
		{"ftp://x", "", "scheme"},
		{"http://", "", "no host"},
		{"http://x/?a=b", "", "without user, query or fragment"},
	} {
		got, err := statusAdminURL(tc.in)
		switch {
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("statusAdminURL(%q): got %q, %v; want %q", tc.in, got, err, tc.want)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("statusAdminURL(%q): got %q, %v; want an error with %q", tc.in, got, err, tc.err)
		}
	}
}
