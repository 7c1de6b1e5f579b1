//go:build linux

package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// chaosHold is how long each phase of TestChaos keeps its load once the
// fleet has converged after its fault; bench/chaos sets it for a longer
// run. At zero a phase ends after a fixed number of answered requests.
var chaosHold = flag.Duration("chaos.hold", 0, "TestChaos: keep the load this long in each phase after the fleet converged")

// Bounds of TestChaos.
const (
	// chaosHangBound is every request's client timeout: a request that
	// reaches it hung.
	chaosHangBound = 10 * time.Second
	// chaosFailover is how long after a machine or an owner edge dies
	// requests may fail (with a code) before they reroute: the 2 s
	// TestFleetKill asserts, plus a margin for a loaded machine.
	chaosFailover = 3 * time.Second
)

// chaosMachine is a machine of app web: an HTTP server at a fixed loopback
// address that can be killed (its listener and every connection closed at
// once, as when its process dies) and started again at the same address.
type chaosMachine struct {
	id, addr string
	mu       sync.Mutex
	srv      *http.Server // nil while killed
	done     chan struct{}
}

// startChaosMachine starts machine id on a free loopback port and kills it
// when the test ends.
func startChaosMachine(t *testing.T, id string) *chaosMachine {
	t.Helper()
	m := &chaosMachine{id: id, addr: "127.0.0.1:0"}
	m.start(t)
	t.Cleanup(m.kill)
	return m
}

// start serves at m.addr (a free port the first time: m.addr is then
// set to it).
func (m *chaosMachine) start(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", m.addr)
	if err != nil {
		t.Fatalf("machine %s: %v", m.id, err)
	}
	m.addr = ln.Addr().String()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		// A little work, so that requests are in flight at each fault.
		time.Sleep(5 * time.Millisecond)
		io.WriteString(w, m.id)
	})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	m.mu.Lock()
	m.srv, m.done = srv, done
	m.mu.Unlock()
}

// kill closes the listener and every connection at once and waits until
// the server has stopped; a no-op when it is not running.
func (m *chaosMachine) kill() {
	m.mu.Lock()
	srv, done := m.srv, m.done
	m.srv = nil
	m.mu.Unlock()
	if srv != nil {
		srv.Close()
		<-done
	}
}

// chaosPhase counts the requests that ended during one phase of TestChaos
// by outcome; every request is exactly one of them.
type chaosPhase struct {
	Name    string `json:"phase"`
	Sent    int64  `json:"sent"`
	OK      int64  `json:"succeeded"`
	Coded   int64  `json:"failed_with_code"`
	Refused int64  `json:"not_accepted"`
	Cut     int64  `json:"cut_by_sigkill"`
	Hung    int64  `json:"hung"`
	Lost    int64  `json:"lost"`
	// Late counts the requests that failed with a code when none may:
	// sent after the failover window of a machine or an edge that died,
	// or in a phase without such a fault. Not a class of its own: they
	// are counted in Coded too.
	Late int64 `json:"late"`
	// ConvergedMs is how long the fleet took to converge (every edge
	// routing to every machine) after what the fault killed came back
	// (restarted, reloaded), in ms; 0 for a phase without a fault.
	ConvergedMs int64 `json:"converged_ms"`
	// Codes counts the Coded requests by Godwit-Error code.
	Codes map[string]int64 `json:"codes,omitempty"`

	// cutEdge is the edge SIGKILLed in this phase ("" if none): its
	// requests that fail before restarted are cut, not lost.
	cutEdge string
	// codedUntil: a request sent before this time may fail with a code
	// (zero: none may).
	codedUntil atomic.Int64 // unix ns
	restarted  atomic.Int64 // unix ns when cutEdge was up again; 0 before
}

func (p *chaosPhase) add(q *chaosPhase) {
	p.Sent += q.Sent
	p.OK += q.OK
	p.Coded += q.Coded
	p.Refused += q.Refused
	p.Cut += q.Cut
	p.Hung += q.Hung
	p.Lost += q.Lost
	p.Late += q.Late
	for c, n := range q.Codes {
		if p.Codes == nil {
			p.Codes = map[string]int64{}
		}
		p.Codes[c] += n
	}
}

func (p *chaosPhase) String() string {
	conv := "-"
	if p.ConvergedMs > 0 {
		conv = (time.Duration(p.ConvergedMs) * time.Millisecond).String()
	}
	return fmt.Sprintf("%-26s sent %6d  succeeded %6d  failed with a code %4d (late %d) %v  not accepted %4d  cut by SIGKILL %3d  hung %d  lost %d  converged in %s",
		p.Name+":", p.Sent, p.OK, p.Coded, p.Late, p.Codes, p.Refused, p.Cut, p.Hung, p.Lost, conv)
}

// TestChaos runs steady load from several clients through a fleet of three
// edges (child processes, as in TestRollingRestart) while faults follow
// one another, the fleet converging between them: a machine is killed and
// started again; an owner edge is SIGKILLed and restarted; an edge's
// config is reloaded with SIGHUP (a concurrency limit changed); an owner
// edge is stopped with SIGTERM (drain) and started again. Every request is
// counted: answered by a machine, failed with a code (a 5xx with a
// Godwit-Error header: only within the failover window of a fault that
// killed something), not accepted (connection refused: an edge that was
// down), cut by SIGKILL (accepted by the edge that was killed), hung (hit
// its client timeout) or lost (anything else). None may hang or be lost.
func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs a fleet of child processes")
	}
	bin := buildGodwit(t)
	machines := map[string]*chaosMachine{"m-cdg": startChaosMachine(t, "m-cdg"), "m-nrt": startChaosMachine(t, "m-nrt")}
	subnet := loopbackSubnet(t)
	specs := []fleetEdge{
		{"edge-iad", "iad", subnet + "11", ""},
		{"edge-cdg", "cdg", subnet + "12", "m-cdg"},
		{"edge-nrt", "nrt", subnet + "13", "m-nrt"},
	}
	cfgs := writeFleetConfigs(t, fleetConfig{
		edges:    specs,
		machines: map[string]string{"m-cdg": machines["m-cdg"].addr, "m-nrt": machines["m-nrt"].addr},
		httpPort: 8080, // fixed: clients keep the address across restarts
		extra:    "[proxy]\ndrain_timeout = \"10s\"\n",
	})
	edges := map[string]*childEdge{}
	var edgesMu sync.Mutex // edges is replaced at restarts while the load reads logs
	for _, s := range specs {
		edges[s.name] = startChildEdge(t, bin, s.name, cfgs[s.name])
	}
	snapshot := func() map[string]*childEdge {
		edgesMu.Lock()
		defer edgesMu.Unlock()
		out := map[string]*childEdge{}
		for n, e := range edges {
			out[n] = e
		}
		return out
	}
	restartEdge := func(name string) *childEdge {
		e := startChildEdge(t, bin, name, cfgs[name])
		edgesMu.Lock()
		edges[name] = e
		edgesMu.Unlock()
		return e
	}
	ready := func() bool {
		for _, e := range snapshot() {
			for id := range machines {
				if !routable(e, id) {
					return false
				}
			}
		}
		return true
	}
	waitForEdges(t, 30*time.Second, "every edge routing to m-cdg and m-nrt", ready, snapshot())

	var (
		phase   atomic.Pointer[chaosPhase]
		countMu sync.Mutex // guards the counts of every phase
		okTotal atomic.Int64
		errMu   sync.Mutex
		bad     []string // hung, lost and late requests, for the failure message
		wg      sync.WaitGroup
		stop    = make(chan struct{})
	)
	phase.Store(&chaosPhase{Name: "steady"})
	names := []string{"edge-iad", "edge-cdg", "edge-nrt"}
	addrs := map[string]string{}
	for n, e := range edges {
		addrs[n] = e.http
	}
	for i := range 6 {
		wg.Go(func() {
			tr := &http.Transport{MaxIdleConnsPerHost: 1}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr, Timeout: chaosHangBound}
			for n := i; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				edge := names[n%len(names)]
				sent := time.Now()
				req, _ := http.NewRequest("POST", "http://"+addrs[edge]+"/", strings.NewReader("x"))
				req.Host = "web.test"
				var reused bool
				req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
					GotConn: func(ci httptrace.GotConnInfo) { reused = ci.Reused },
				}))
				status, code, body, err := chaosDo(client, req)
				ph := phase.Load() // the phase in which the request ended
				countMu.Lock()
				ph.Sent++
				var what string
				switch {
				case err == nil && status == 200 && strings.HasPrefix(body, "m-"):
					ph.OK++
					okTotal.Add(1)
				case err == nil && status >= 500 && code != "":
					ph.Coded++
					if ph.Codes == nil {
						ph.Codes = map[string]int64{}
					}
					ph.Codes[code]++
					if sent.UnixNano() >= ph.codedUntil.Load() && !(edge == ph.cutEdge && ph.restarted.Load() == 0) {
						ph.Late++
						what = "late"
					}
				case err != nil && chaosTimeout(err):
					ph.Hung++
					what = "hung"
				case err != nil && (notAccepted(err) || !reused && errors.Is(err, syscall.ECONNRESET)):
					// Refused, or a new connection reset in a closing
					// listener's backlog (see TestRollingRestart).
					ph.Refused++
				case edge == ph.cutEdge && (ph.restarted.Load() == 0 || sent.UnixNano() < ph.restarted.Load()):
					ph.Cut++
				default:
					ph.Lost++
					what = "lost"
				}
				countMu.Unlock()
				if what != "" {
					errMu.Lock()
					bad = append(bad, fmt.Sprintf("%s: sent %s at %s (connection reused: %v): %d %s %q err=%v",
						what, sent.Format("15:04:05.000"), edge, reused, status, code, body, err))
					errMu.Unlock()
				}
			}
		})
	}

	var phases []*chaosPhase
	// hold keeps the load going for 300 more answered requests and
	// -chaos.hold.
	hold := func() {
		target := okTotal.Load() + 300
		holdUntil := time.Now().Add(*chaosHold)
		waitForEdges(t, 60*time.Second+*chaosHold, "300 more answered requests", func() bool {
			return okTotal.Load() >= target && !time.Now().Before(holdUntil)
		}, snapshot())
	}
	// next ends the current phase after hold and starts phase name with
	// its rules.
	next := func(name, cutEdge string) *chaosPhase {
		hold()
		p := &chaosPhase{Name: name, cutEdge: cutEdge}
		phases = append(phases, phase.Swap(p))
		return p
	}
	// converge waits until every edge routes to both machines again and
	// records how long it took since back (the restart or reload).
	converge := func(p *chaosPhase, back time.Time, what string) {
		waitForEdges(t, 30*time.Second, "every edge routing to m-cdg and m-nrt after "+what, ready, snapshot())
		p.ConvergedMs = max(1, time.Since(back).Milliseconds())
	}

	// 1. A machine dies: m-cdg's requests reroute to m-nrt; it comes back.
	p := next("machine killed", "")
	began := time.Now()
	p.codedUntil.Store(began.Add(chaosFailover).UnixNano())
	machines["m-cdg"].kill()
	time.Sleep(chaosFailover + time.Second) // the machine stays dead this long (the failover window and a second of rerouted load): the fault, not a wait for a condition
	back := time.Now()
	machines["m-cdg"].start(t)
	converge(p, back, "m-cdg's restart")

	// 2. An owner edge is SIGKILLed and restarted.
	p = next("edge SIGKILLed", "edge-cdg")
	began = time.Now()
	p.codedUntil.Store(began.Add(chaosFailover).UnixNano())
	snapshot()["edge-cdg"].kill(t)
	time.Sleep(chaosFailover + time.Second) // the edge stays dead this long: the fault, not a wait for a condition
	back = time.Now()
	restartEdge("edge-cdg")
	p.restarted.Store(time.Now().UnixNano())
	converge(p, back, "edge-cdg's SIGKILL and restart")

	// 3. An edge reloads a changed config: a concurrency limit.
	p = next("config reloaded (SIGHUP)", "")
	nrt := snapshot()["edge-nrt"]
	before := strings.Count(nrt.log.String(), `"msg":"config reloaded"`)
	old, err := os.ReadFile(cfgs["edge-nrt"])
	if err != nil {
		t.Fatal(err)
	}
	limited := strings.Replace(string(old), "hosts = [\"web.test\"]\n",
		"hosts = [\"web.test\"]\n\n[app.http_service.concurrency]\ntype = \"requests\"\nsoft_limit = 400\nhard_limit = 500\n", 1)
	if limited == string(old) {
		t.Fatalf("edge-nrt's config has no app web to limit:\n%s", old)
	}
	if err := os.WriteFile(cfgs["edge-nrt"], []byte(limited), 0o644); err != nil {
		t.Fatal(err)
	}
	back = time.Now()
	if err := nrt.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitForEdges(t, 10*time.Second, `edge-nrt's "config reloaded" log line`, func() bool {
		return strings.Count(nrt.log.String(), `"msg":"config reloaded"`) > before
	}, snapshot())
	if strings.Contains(nrt.log.String(), "reload refused") {
		t.Errorf("edge-nrt refused the reload:\n%s", logsOf(snapshot()))
	}
	converge(p, back, "edge-nrt's reload")

	// 4. An owner edge drains (SIGTERM) and starts again: nothing lost.
	p = next("edge drained (SIGTERM)", "")
	cdg := snapshot()["edge-cdg"]
	if err := cdg.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-cdg.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("edge-cdg did not exit within 30s of SIGTERM\n%s", logsOf(snapshot()))
	}
	if code := cdg.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("edge-cdg exited %d after SIGTERM, want 0\n%s", code, cdg.log)
	}
	back = time.Now()
	restartEdge("edge-cdg")
	converge(p, back, "edge-cdg's drain and restart")

	hold() // the restarted edge under load too
	close(stop)
	wg.Wait()
	phases = append(phases, phase.Load())

	total := &chaosPhase{Name: "total"}
	var lines []string
	for _, p := range phases {
		total.add(p)
		lines = append(lines, p.String())
		// One line per phase for bench/chaos, which reads them.
		j, _ := json.Marshal(p)
		t.Logf("chaos-counts %s", j)
	}
	j, _ := json.Marshal(total)
	t.Logf("chaos-counts %s", j)
	t.Logf("chaos under load, 3 edges, 6 clients, requests by phase:\n  %s\n  %s", strings.Join(lines, "\n  "), total)
	if total.Hung > 0 || total.Lost > 0 || total.Late > 0 {
		n := min(len(bad), 15)
		t.Errorf("%d requests hung (bound %v), %d were lost and %d failed with a code after the failover window (%v), want none; the first %d:\n  %s\n%s",
			total.Hung, chaosHangBound, total.Lost, total.Late, chaosFailover, n, strings.Join(bad[:n], "\n  "), logsOf(snapshot()))
	}
}

// chaosDo sends req and reads the whole response: its status, Godwit-Error
// code and body, or the error of the exchange or of reading the body.
func chaosDo(client *http.Client, req *http.Request) (status int, code, body string, err error) {
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Godwit-Error"), strings.TrimSpace(string(b)), err
}

// chaosTimeout reports whether err is the client's timeout: the request
// hung.
func chaosTimeout(err error) bool {
	var to interface{ Timeout() bool }
	return errors.As(err, &to) && to.Timeout() || strings.Contains(err.Error(), "Client.Timeout")
}
