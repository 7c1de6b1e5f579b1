package proxy

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
)

// TestFleetWake: a request at an edge with no machines, for an app whose
// only machine is another edge's and stopped, reaches it: the owner wakes
// it and the answer says it waited.
func TestFleetWake(t *testing.T) {
	bin := buildTestApp(t)
	addr := deadAddr(t)
	machine := fmt.Sprintf(`
[[machine]]
id      = "m-nrt"
app     = "web"
region  = "nrt"
address = %q
state   = "stopped"
[machine.driver]
kind    = "exec"
command = [%q, "-listen-delay", "200ms"]
`, addr, bin)
	owner := startEdge(t, "edge-nrt", "nrt", "", machine)
	a := startEdge(t, "edge-iad", "iad", owner.srv.GossipAddr(), "")
	eventually(t, 15e9, "edge-iad knows m-nrt", func() bool {
		m := a.srv.Table().Machine("m-nrt")
		return m != nil && m.Remote() && m.Reachable()
	})
	c := newClient(t)
	r := a.get(t, c, webHost, "/pid")
	if r.status != 200 || r.header.Get(hdrWoke) == "" {
		t.Fatalf("request at edge-iad for the stopped m-nrt: %d %q (%s %q), want the machine's answer after a wake",
			r.status, r.body, hdrWoke, r.header.Get(hdrWoke))
	}
	if st := owner.machineStatus(t, "m-nrt"); st.State != "started" {
		t.Errorf("m-nrt at its owner after the wake: %q, want started", st.State)
	}
}

// TestFleetRecentlyStopped: Fly's PM11. An owner asked to wake a machine it
// stopped moments ago, while another machine of the app runs there,
// refuses (the accepting edge's view is stale) instead of waking it.
func TestFleetRecentlyStopped(t *testing.T) {
	bin := buildTestApp(t)
	running := startMachine(t, "m-run", headerEcho, nil)
	cfg := fmt.Sprintf(`
[[machine]]
id      = "m-run"
app     = "web"
region  = "nrt"
address = %q

[[machine]]
id      = "m-exec"
app     = "web"
region  = "nrt"
address = %q
[machine.driver]
kind    = "exec"
command = [%q]
`, running.addr, deadAddr(t), bin)
	owner := startEdge(t, "edge-nrt", "nrt", "", cfg)
	eventually(t, 10e9, "m-exec started at boot", func() bool { return owner.machineStatus(t, "m-exec").State == "started" })
	resp, err := adminClient.Post("http://"+owner.adminAddr+"/v1/apps/web/machines/m-exec/stop", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("admin stop: %d", resp.StatusCode)
	}

	req := httptest.NewRequest(http.MethodGet, "/", nil)
	req.Header.Set(hdrBackhaul, "machine=m-exec&length=0&wake=1&region=iad")
	rec := httptest.NewRecorder()
	owner.srv.handler.BackhaulHandler().ServeHTTP(rec, req)
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get(hdrRefused) != refusedStopped {
		t.Errorf("wake of the machine stopped moments ago while m-run runs: %d, refused %q; want 503 refused %q",
			rec.Code, rec.Header().Get(hdrRefused), refusedStopped)
	}
	if st := owner.machineStatus(t, "m-exec").State; st != "stopped" {
		t.Errorf("m-exec after the refused wake: %q, want stopped", st)
	}
}
