package proxy

import (
	"net/http"
	"testing"
)

// TestRoutingHeaders: Fly's request routing headers steer the pick; the
// force forms have no fallback, the prefer forms fall back to the nearest
// machine, and the machine learns of an unmet instance preference.
func TestRoutingHeaders(t *testing.T) {
	m1 := startMachine(t, "m1", nil, nil) // iad, the node's region
	m2 := startMachine(t, "m2", nil, nil) // fra
	m3 := startMachine(t, "m3", nil, nil) // syd
	p := startProxy(t, oneApp("", []string{m1.addr, m2.addr, m3.addr}, "iad", "fra", "syd"))
	c := newClient(t)

	tests := []struct {
		name        string
		header      map[string]string
		wantMachine string // "" with wantCode
		wantCode    Code
		wantUnmet   string // Fly-Preferred-Instance-Unavailable at the machine
	}{
		{name: "no header: nearest", wantMachine: "m1"},
		{name: "prefer region", header: map[string]string{"Fly-Prefer-Region": "syd"}, wantMachine: "m3"},
		{name: "prefer region list, first without machines", header: map[string]string{"fly-prefer-region": "ord, fra,syd"}, wantMachine: "m2"},
		{name: "prefer region without machines: nearest", header: map[string]string{"Fly-Prefer-Region": "ord"}, wantMachine: "m1"},
		{name: "prefer alias eu", header: map[string]string{"Fly-Prefer-Region": "eu"}, wantMachine: "m2"},
		{name: "force region", header: map[string]string{"Fly-Force-Region": "fra"}, wantMachine: "m2"},
		{name: "force region without machines: no fallback", header: map[string]string{"Fly-Force-Region": "ord"}, wantCode: CodeNoMachine},
		{name: "force region list with any", header: map[string]string{"Fly-Force-Region": "ord,any"}, wantMachine: "m1"},
		{name: "force instance", header: map[string]string{"Fly-Force-Instance-Id": "m3"}, wantMachine: "m3"},
		{name: "force unknown instance: no fallback", header: map[string]string{"Fly-Force-Instance-Id": "m9"}, wantCode: CodeInstanceUnavailable},
		{name: "prefer instance", header: map[string]string{"Fly-Prefer-Instance-Id": "m2"}, wantMachine: "m2"},
		{name: "prefer unknown instance: nearest, machine told", header: map[string]string{"Fly-Prefer-Instance-Id": "m9"},
			wantMachine: "m1", wantUnmet: "m9"},
		{name: "spoofed unmet header dropped", header: map[string]string{"Fly-Preferred-Instance-Unavailable": "spoof"}, wantMachine: "m1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := newRequest(t, http.MethodGet, p.url("/"), webHost, nil)
			for k, v := range tt.header {
				req.Header.Set(k, v)
			}
			r := do(c, req)
			if tt.wantCode != "" {
				wantProxyError(t, r, tt.wantCode)
				return
			}
			if r.err != nil || r.status != http.StatusOK {
				t.Fatalf("got %d (err %v), want 200", r.status, r.err)
			}
			got := r.header.Get("X-Machine")
			if got != tt.wantMachine {
				t.Fatalf("served by %s, want %s", got, tt.wantMachine)
			}
			served := map[string]*machine{"m1": m1, "m2": m2, "m3": m3}[got]
			last := served.lastRequest()
			if u := last.Header.Get("Fly-Preferred-Instance-Unavailable"); u != tt.wantUnmet {
				t.Errorf("machine's Fly-Preferred-Instance-Unavailable: got %q, want %q", u, tt.wantUnmet)
			}
			for _, h := range []string{"Fly-Prefer-Region", "Fly-Force-Region", "Fly-Force-Instance-Id", "Fly-Prefer-Instance-Id"} {
				if v := last.Header.Get(h); v != "" {
					t.Errorf("machine saw the client's %s: %q, want it consumed by the proxy", h, v)
				}
			}
		})
	}
}
