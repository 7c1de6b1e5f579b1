package proxy

import (
	"fmt"
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
