package proxy

import (
	"bytes"
	"io"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestReplayBadInputReleases: bad replays (a loop, a region without
// machines, a malformed header, a huge JSON instruction) each end with
// their code, quickly, and leave nothing behind: no goroutine, no
// buffered request body, no held concurrency slot.
func TestReplayBadInputReleases(t *testing.T) {
	hugeJSON := `{"region":"syd"` + strings.Repeat(" ", 8<<20) + `}`
	bad := func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		switch r.URL.Path {
		case "/loop":
			w.Header().Set("Fly-Replay", "elsewhere=true")
		case "/missing-region":
			w.Header().Set("Fly-Replay", "region=ord")
		case "/malformed":
			w.Header().Set("Fly-Replay", `region="iad;state=x`)
		case "/huge-json":
			w.Header().Set("Content-Type", "application/vnd.fly.replay+json")
			io.WriteString(w, hugeJSON)
		}
	}
	m1 := startMachine(t, "m1", bad, nil)
	m2 := startMachine(t, "m2", bad, nil)
	p := startProxy(t, oneApp("", []string{m1.addr, m2.addr}))
	cases := map[string]Code{
		"/loop":           CodeReplayLoop,
		"/missing-region": CodeNoMachine,
		"/malformed":      CodeReplayInvalid,
		"/huge-json":      CodeReplayInvalid,
	}
	body := bytes.Repeat([]byte("b"), 512<<10) // kept for replay: under the 1 MiB limit

	c := newClient(t)
	round := func() {
		var wg sync.WaitGroup
		for path, code := range cases {
			for range 4 {
				wg.Go(func() {
					start := time.Now()
					r := do(c, newRequest(t, http.MethodPost, p.url(path), webHost, bytes.NewReader(body)))
					wantProxyError(t, r, code)
					if took := time.Since(start); took > 10*time.Second {
						t.Errorf("%s took %v, want a bounded answer", path, took)
					}
				})
			}
		}
		wg.Wait()
	}
	settled := func() (goroutines int, heap uint64) {
		c.CloseIdleConnections()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return runtime.NumGoroutine(), ms.HeapAlloc
	}

	round() // warm up: connection pools, buffer pools
	g0, h0 := settled()
	for range 5 {
		round()
	}
	// 80 requests kept 512 KiB each (40 MiB) and read up to 64 KiB of
	// JSON each: none of it may stay.
	// Connections come and go between rounds, each with its goroutines
	// on both sides: allow a few, not one per request.
	eventually(t, 10*time.Second, "no request handler left, and goroutines back near their number before the rounds", func() bool {
		g, _ := settled()
		return g <= g0+6 && proxyHandlerStacks() == ""
	})
	if _, h := settled(); h > h0+8<<20 {
		t.Errorf("heap grew from %d to %d bytes over 80 bad replays, want under 8 MiB of growth", h0, h)
	}
	for _, id := range []string{"m1", "m2"} {
		if st := p.machineStatus(t, id); st.Inflight != 0 {
			t.Errorf("machine %s: %d requests in flight after every answer, want 0", id, st.Inflight)
		}
	}
}
