//go:build linux

package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestRollingRestart restarts the edges of a three-edge fleet one by one
// (SIGTERM, wait for exit 0, start again with the same config) while
// clients send requests to every edge without pause. edge-iad owns no
// machine and reaches the others' through the backhaul; edge-cdg and
// edge-nrt own one each. A request an edge refused to accept (its
// listener closed: connection refused) is allowed; a request an edge
// accepted must be answered by a machine: the test counts every one.
func TestRollingRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs a fleet of child processes")
	}
	bin := buildGodwit(t)
	machines := map[string]string{} // id → address
	for _, id := range []string{"m-cdg", "m-nrt"} {
		m := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			// A little work, so that requests are in flight when a
			// drain begins.
			time.Sleep(5 * time.Millisecond)
			io.WriteString(w, id)
		}))
		defer m.Close()
		machines[id] = m.Listener.Addr().String()
	}

	subnet := loopbackSubnet(t)
	specs := []fleetEdge{
		{"edge-iad", "iad", subnet + "11", ""},
		{"edge-cdg", "cdg", subnet + "12", "m-cdg"},
		{"edge-nrt", "nrt", subnet + "13", "m-nrt"},
	}
	cfgs := writeFleetConfigs(t, fleetConfig{
		edges:    specs,
		machines: machines,
		// A fixed port on the edge's own address: clients keep sending to
		// the same address across its restart, as behind a load balancer.
		httpPort: 8080,
		extra:    "[proxy]\ndrain_timeout = \"10s\"\n",
	})
	edges := map[string]*childEdge{}
	for _, s := range specs {
		edges[s.name] = startChildEdge(t, bin, s.name, cfgs[s.name])
	}
	// Every edge sees both machines before the load starts, and again
	// after each restart before the next.
	ready := func() bool {
		for _, e := range edges {
			for _, id := range []string{"m-cdg", "m-nrt"} {
				if !routable(e, id) {
					return false
				}
			}
		}
		return true
	}
	waitForEdges(t, 30*time.Second, "every edge routing to m-cdg and m-nrt", ready, edges)

	// The load: clients each send to the edges in turn, one request at a
	// time, on kept-alive connections.
	var (
		ok, refused atomic.Int64
		backlog     atomic.Int64 // new connections reset in a closing listener's backlog
		mu          sync.Mutex
		lost        []string
		wg          sync.WaitGroup
	)
	stop := make(chan struct{})
	addrs := []string{edges["edge-iad"].http, edges["edge-cdg"].http, edges["edge-nrt"].http}
	for i := range 6 {
		wg.Go(func() {
			tr := &http.Transport{MaxIdleConnsPerHost: 1}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr, Timeout: 15 * time.Second}
			for n := i; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				addr := addrs[n%len(addrs)]
				// A POST: net/http's transport resends a GET whose
				// connection broke, which would hide a request the edge
				// lost; it resends a POST only if none of it was written.
				req, _ := http.NewRequest("POST", "http://"+addr+"/", strings.NewReader("x"))
				req.Host = "web.test"
				var reused bool
				req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
					GotConn: func(ci httptrace.GotConnInfo) { reused = ci.Reused },
				}))
				resp, err := client.Do(req)
				if err == nil {
					b, rerr := io.ReadAll(resp.Body)
					resp.Body.Close()
					if rerr == nil && resp.StatusCode == 200 && strings.HasPrefix(string(b), "m-") {
						ok.Add(1)
						continue
					}
					err = fmt.Errorf("%d %s %q (body read: %v)", resp.StatusCode, resp.Header.Get("Godwit-Error"), strings.TrimSpace(string(b)), rerr)
				}
				switch {
				case notAccepted(err):
					refused.Add(1)
					continue
				case !reused && errors.Is(err, syscall.ECONNRESET):
					// A new connection the kernel completed in the
					// listen backlog just as the edge closed its
					// listener: reset before the edge accepted it.
					backlog.Add(1)
					continue
				}
				mu.Lock()
				lost = append(lost, fmt.Sprintf("%s at %s (connection reused: %v): %v", time.Now().Format("15:04:05.000"), addr, reused, err))
				mu.Unlock()
			}
		})
	}
	// Steady load for a moment, then each edge in turn.
	waitLoad := func(n int64) {
		target := ok.Load() + n
		waitForEdges(t, 30*time.Second, fmt.Sprintf("%d more answered requests", n), func() bool { return ok.Load() >= target }, edges)
	}
	waitLoad(300)
	for _, s := range specs {
		e := edges[s.name]
		began := time.Now()
		if err := e.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case <-e.done:
		case <-time.After(30 * time.Second):
			t.Fatalf("%s did not exit within 30s of SIGTERM\n%s", s.name, logsOf(edges))
		}
		if code := e.cmd.ProcessState.ExitCode(); code != 0 {
			t.Errorf("%s exited %d after SIGTERM, want 0\n%s", s.name, code, e.log)
		}
		t.Logf("%s drained and exited in %v", s.name, time.Since(began).Round(time.Millisecond))
		edges[s.name] = startChildEdge(t, bin, s.name, cfgs[s.name])
		waitForEdges(t, 30*time.Second, "every edge routing to m-cdg and m-nrt after "+s.name+"'s restart", ready, edges)
		waitLoad(300)
	}
	close(stop)
	wg.Wait()

	t.Logf("rolling restart of 3 edges: %d requests answered, %d not accepted (%d connections refused, %d reset in a closing listener's backlog), %d lost",
		ok.Load(), refused.Load()+backlog.Load(), refused.Load(), backlog.Load(), len(lost))
	if len(lost) > 0 {
		n := min(len(lost), 10)
		t.Errorf("%d accepted requests were lost; the first %d:\n  %s\n%s", len(lost), n, strings.Join(lost[:n], "\n  "), logsOf(edges))
	}
}

// notAccepted reports whether err means the edge never accepted the
// request: the connection was refused (the listener is closed), or a
// kept-alive connection closed before the request was read (net/http's
// transport retries those itself when it can; what remains is a request it
// could not resend).
func notAccepted(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

// routable reports whether e's /v1/machines lists machine id as usable:
// reachable and, for its owner's view, started and passing.
func routable(e *childEdge, id string) bool {
	var ms []struct {
		ID        string `json:"id"`
		State     string `json:"state"`
		Health    string `json:"health"`
		Reachable bool   `json:"reachable"`
	}
	if adminJSON(e, "/v1/machines", &ms) != nil {
		return false
	}
	for _, m := range ms {
		if m.ID == id {
			return m.Reachable && m.State == "started" && m.Health == "passing"
		}
	}
	return false
}
