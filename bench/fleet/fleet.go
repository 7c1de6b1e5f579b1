package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Fixed ports of every edge; each edge has an address of its own (see
// newSubnet), so they never meet. A restarted edge comes back at the same
// gossip and backhaul address, as it would in production.
const (
	gossipPort   = 7946
	backhaulPort = 4433
)

// newSubnet returns a random "127.x.y." prefix that nothing on the machine
// listens in, checked by binding its .11 on the gossip port. Every address
// of 127.0.0.0/8 is loopback on Linux.
func newSubnet() (string, error) {
	for range 20 {
		x, _ := rand.Int(rand.Reader, big.NewInt(254))
		y, _ := rand.Int(rand.Reader, big.NewInt(254))
		s := fmt.Sprintf("127.%d.%d.", 1+x.Int64(), 1+y.Int64())
		ln, err := net.Listen("tcp", s+"11:"+strconv.Itoa(gossipPort))
		if err != nil {
			continue
		}
		ln.Close()
		return s, nil
	}
	return "", fmt.Errorf("no free 127.x.y.0/24 found")
}

// fleetSpec describes a fleet to start: one edge per entry of edges.
type fleetSpec struct {
	tag      string // names the files in the temp dir
	protocol string // backhaul.protocol
	cpu      int    // taskset core for every edge; -1: none
	edges    []edgeSpec
	// simRTT is backhaul.simulated_rtt ("iad-nrt" = "12ms"), nil: none.
	simRTT map[string]string
	// appExtra is appended to the [[app]] table (checks, limits).
	appExtra string
}

// edgeSpec is one edge: its region, and the machines it owns (id →
// address).
type edgeSpec struct {
	name, region string
	machines     map[string]string
}

// fleet is a running fleet of edges.
type fleet struct {
	spec   fleetSpec
	subnet string
	edges  []*edge
	byName map[string]*edge
}

const appHost = "web.bench"

// startFleet writes every edge's config and starts them all, each joining
// all the others (gossip retries until they are up).
func startFleet(ctx context.Context, spec fleetSpec) (*fleet, error) {
	subnet, err := newSubnet()
	if err != nil {
		return nil, err
	}
	f := &fleet{spec: spec, subnet: subnet, byName: map[string]*edge{}}
	keyFile := filepath.Join(tmpDir, spec.tag+"-gossip.key")
	key := make([]byte, 32)
	rand.Read(key)
	if err := os.WriteFile(keyFile, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		return nil, err
	}
	ip := func(i int) string { return subnet + strconv.Itoa(11+i) }
	for i, es := range spec.edges {
		var join []string
		for j := range spec.edges {
			if j != i {
				join = append(join, strconv.Quote(net.JoinHostPort(ip(j), strconv.Itoa(gossipPort))))
			}
		}
		var b strings.Builder
		fmt.Fprintf(&b, `[node]
name   = %q
region = %q

[listen]
http  = "%s:0"
admin = "%s:0"

[log]
format = "json"
access = false

[gossip]
bind = "%s:%d"
join = [%s]
secret_key_file = %q

[backhaul]
listen   = "%s:%d"
protocol = %q
`, es.name, es.region, ip(i), ip(i), ip(i), gossipPort, strings.Join(join, ", "), keyFile, ip(i), backhaulPort, spec.protocol)
		if len(spec.simRTT) > 0 {
			b.WriteString("\n[backhaul.simulated_rtt]\n")
			for _, k := range slices.Sorted(maps.Keys(spec.simRTT)) {
				fmt.Fprintf(&b, "%s = %q\n", k, spec.simRTT[k])
			}
		}
		fmt.Fprintf(&b, "\n[[app]]\nname  = \"web\"\nhosts = [%q]\n%s\n", appHost, spec.appExtra)
		for _, id := range slices.Sorted(maps.Keys(es.machines)) {
			fmt.Fprintf(&b, "\n[[machine]]\nid      = %q\napp     = \"web\"\naddress = %q\n", id, es.machines[id])
		}
		e := &edge{
			name: es.name, region: es.region, cpu: spec.cpu,
			cfgPath: filepath.Join(tmpDir, spec.tag+"-"+es.name+".toml"),
			logPath: filepath.Join(tmpDir, spec.tag+"-"+es.name+".log"),
		}
		if err := os.WriteFile(e.cfgPath, []byte(b.String()), 0o644); err != nil {
			return nil, err
		}
		f.edges = append(f.edges, e)
		f.byName[e.name] = e
	}
	for _, e := range f.edges {
		if err := e.start(ctx); err != nil {
			f.stop()
			return nil, err
		}
	}
	return f, nil
}

// stop ends every edge of the fleet.
func (f *fleet) stop() {
	for _, e := range f.edges {
		e.p.Kill()
	}
}

// machineStatus is an entry of /v1/machines.
type machineStatus struct {
	ID        string `json:"id"`
	Health    string `json:"health"`
	State     string `json:"state"`
	Owner     string `json:"owner"`
	Reachable bool   `json:"reachable"`
}

// memberStatus is an entry of /v1/members.
type memberStatus struct {
	Name  string `json:"name"`
	State string `json:"state"`
}

// getJSON decodes GET url into v.
func getJSON(c *http.Client, url string, v any) error {
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		io.Copy(io.Discard, resp.Body)
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

var adminClient = &http.Client{Timeout: 2 * time.Second}

func (e *edge) machines(c *http.Client) (map[string]machineStatus, error) {
	var ms []machineStatus
	if err := getJSON(c, "http://"+e.admin+"/v1/machines", &ms); err != nil {
		return nil, err
	}
	out := make(map[string]machineStatus, len(ms))
	for _, m := range ms {
		out[m.ID] = m
	}
	return out, nil
}

func (e *edge) memberState(c *http.Client, name string) string {
	var ms []memberStatus
	if err := getJSON(c, "http://"+e.admin+"/v1/members", &ms); err != nil {
		return "?"
	}
	for _, m := range ms {
		if m.Name == name {
			return m.State
		}
	}
	return "absent"
}

// metrics returns the values of sample lines of e's /metrics, each named
// with its labels exactly as exposed; an error if one is missing.
func (e *edge) metrics(c *http.Client, names ...string) (map[string]float64, error) {
	resp, err := c.Get("http://" + e.admin + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, " ")
		if !ok || !want[k] {
			continue
		}
		if i := strings.IndexByte(v, ' '); i >= 0 { // a timestamp
			v = v[:i]
		}
		f, err := strconv.ParseFloat(v, 64)
		if err == nil {
			out[k] = f
		}
	}
	for _, n := range names {
		if _, ok := out[n]; !ok {
			return out, fmt.Errorf("%s: no %s in /metrics", e.name, n)
		}
	}
	return out, nil
}

// hasRTT reports whether e has measured the RTT to region (its
// godwit_backhaul_rtt_seconds series): until then the static estimate
// orders the region.
func (e *edge) hasRTT(region string) bool {
	resp, err := adminClient.Get("http://" + e.admin + "/metrics")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return strings.Contains(string(b), `godwit_backhaul_rtt_seconds{region="`+region+`"}`)
}

// waitUntil polls cond every 20 ms until it holds, or fails after timeout.
func waitUntil(ctx context.Context, timeout time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v waiting for %s", timeout, what)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// allReachable reports whether e's /v1/machines lists every id of ids as
// started, passing and (for other edges' machines) reachable.
func (e *edge) allReachable(ids []string) bool {
	ms, err := e.machines(adminClient)
	if err != nil {
		return false
	}
	for _, id := range ids {
		m, ok := ms[id]
		if !ok || !m.Reachable || m.Health != "passing" || m.State != "started" {
			return false
		}
	}
	return true
}

// get sends GET path with the app's Host to addr and returns status and
// body.
func get(c *http.Client, addr, path string, hdr ...string) (int, string, error) {
	req, err := http.NewRequest("GET", "http://"+addr+path, nil)
	if err != nil {
		return 0, "", err
	}
	req.Host = appHost
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b)), err
}
