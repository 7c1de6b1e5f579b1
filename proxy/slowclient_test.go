package proxy

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// trickle writes s to c one byte every interval, from a goroutine of its
// own, until a write fails or stop is closed; wait waits for the goroutine.
func trickle(c net.Conn, s string, interval time.Duration) (stop func(), wait func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for i := 0; ; i = (i + 1) % len(s) {
			if _, err := c.Write([]byte{s[i]}); err != nil {
				return
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	})
	var once sync.Once
	return func() { once.Do(func() { close(done) }) }, wg.Wait
}

// wantCutWithin reads c until the proxy closes it and checks that this
// happens no sooner than min and no later than max after start. A read
// that hits c's own deadline means the proxy never closed it.
func wantCutWithin(t *testing.T, what string, c net.Conn, start time.Time, minD, maxD time.Duration) {
	t.Helper()
	c.SetReadDeadline(start.Add(maxD))
	_, err := io.Copy(io.Discard, c)
	took := time.Since(start)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("%s: still open after %v, want closed by the proxy", what, maxD)
	}
	if took < minD {
		t.Errorf("%s: closed after %v, want no sooner than %v", what, took.Round(time.Millisecond), minD)
	}
	t.Logf("%s: closed after %v", what, took.Round(time.Millisecond))
}

func TestSlowlorisHeadersCut(t *testing.T) {
	m := startMachine(t, "m1", nil, nil)
	const timeout = 500 * time.Millisecond
	p := startProxy(t, "[proxy]\nread_header_timeout = \"500ms\"\nidle_timeout = \"700ms\"\n"+oneApp("", []string{m.addr}))
	head := "GET / HTTP/1.1\r\nHost: " + webHost + "\r\nX-Slow: "
	h2Preface := "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + "\x00\x00\x00\x04\x00\x00\x00\x00\x00" // + an empty SETTINGS frame
	for _, tc := range []struct {
		name string
		dial func(t *testing.T) net.Conn
		// sent at once, then trickle (if any) a byte every 100 ms
		first, trickle string
		limit          time.Duration // the bound that applies
	}{
		{"http/1.1 head", func(t *testing.T) net.Conn { return dialProxy(t, p.httpAddr) }, head, "abcdefgh", timeout},
		{"tls handshake", func(t *testing.T) net.Conn { return dialProxy(t, p.httpsAddr) }, "\x16\x03\x01", "", timeout},
		{"http/1.1 head over tls", func(t *testing.T) net.Conn {
			nc := dialProxy(t, p.httpsAddr)
			tc := tls.Client(nc, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
			if err := tc.Handshake(); err != nil {
				t.Fatalf("tls handshake: %v", err)
			}
			return tc
		}, head, "abcdefgh", timeout},
		// A HEADERS frame that never ends: no stream yet, so the
		// connection is idle, and idle_timeout closes it.
		{"h2c headers frame", func(t *testing.T) net.Conn { return dialProxy(t, p.httpAddr) }, h2Preface + "\x00\x01\x00\x01\x04\x00\x00\x00\x01", "\x82\x84\x86", 700 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			c := tc.dial(t)
			if _, err := io.WriteString(c, tc.first); err != nil {
				t.Fatalf("write: %v", err)
			}
			if tc.trickle != "" {
				stop, wait := trickle(c, tc.trickle, 100*time.Millisecond)
				defer wait()
				defer stop()
			}
			// Another client is served meanwhile.
			if r := p.get(t, newClient(t), webHost, "/"); r.err != nil || r.status != http.StatusOK {
				t.Errorf("a normal client during the slow one: got %d (err %v), want 200", r.status, r.err)
			}
			wantCutWithin(t, tc.name, c, start, tc.limit-50*time.Millisecond, tc.limit+3*time.Second)
		})
	}
	if n := m.requests.Load(); n != 4 {
		t.Errorf("machine requests: got %d, want 4 (the normal clients' only)", n)
	}
}

// slowBodyMachine reads the request body to its end and answers its
// length; it records the error its read ended with.
type slowBodyMachine struct {
	*machine
	mu   sync.Mutex
	errs []error
}

func startSlowBodyMachine(t *testing.T) *slowBodyMachine {
	sm := &slowBodyMachine{}
	sm.machine = startMachine(t, "m1", func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		sm.mu.Lock()
		sm.errs = append(sm.errs, err)
		sm.mu.Unlock()
		fmt.Fprint(w, n)
	}, nil)
	return sm
}

func (sm *slowBodyMachine) bodyErrs() []error {
	sm.mu.Lock()
	defer sm.mu.Unlock()
	return append([]error(nil), sm.errs...)
}

// slowBodyCut sends a request body to p, 8 KiB at once and then a byte a
// second, and checks that the client gets 408 PL07 after p's
// body_read_timeout (800 ms) and a closed connection, and that machine
// m's read of the body is cut short and its request ended (inflight, the
// edge's count of requests at m, back to 0).
func slowBodyCut(t *testing.T, p *testProxy, m *slowBodyMachine, inflight func() int) {
	t.Helper()
	c := dialRaw(t, p.httpAddr)
	start := time.Now()
	fmt.Fprintf(c, "POST /upload HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n%s", webHost, 16<<10, strings.Repeat("x", 8<<10))
	stop, wait := trickle(c, "x", time.Second)
	defer wait()
	defer stop()
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		t.Fatalf("read response: got error %v, want 408 %s", err, CodeBodyReadTimeout)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	took := time.Since(start)
	if resp.StatusCode != http.StatusRequestTimeout || resp.Header.Get(HeaderError) != string(CodeBodyReadTimeout) {
		t.Fatalf("got %d %s %q, want 408 %s", resp.StatusCode, resp.Header.Get(HeaderError), body, CodeBodyReadTimeout)
	}
	if took < 800*time.Millisecond || took > 5*time.Second {
		t.Errorf("answered after %v, want about body_read_timeout (800ms) after the last byte", took)
	}
	if !resp.Close {
		t.Error("408 without Connection: close, want it")
	}
	wantClosed(t, c.br)
	stop()
	eventually(t, 10*time.Second, "the machine's request ended", func() bool {
		return m.inflight.Load() == 0 && inflight() == 0 && len(m.bodyErrs()) == 1
	})
	if err := m.bodyErrs()[0]; err == nil {
		t.Error("the machine read the whole body, want its read cut short")
	}
}

// TestSlowBodyCutBackhaul: the same stalled body sent to an edge that
// passes it over the backhaul to the machine's owner edge.
func TestSlowBodyCutBackhaul(t *testing.T) {
	m := startSlowBodyMachine(t)
	owner := startEdge(t, "edge-nrt", "nrt", "", ownedMachine("m1", "nrt", m.addr))
	front := startEdge(t, "edge-iad", "iad", owner.srv.GossipAddr(), "[proxy]\nbody_read_timeout = \"800ms\"\n")
	routable(t, front, "m1")
	slowBodyCut(t, front, m, owner.srv.Table().Machine("m1").Inflight)
	wantMetric(t, front, `godwit_client_timeouts_total{kind="body_read"}`, 1)
}

func TestSlowBodyCut(t *testing.T) {
	m := startSlowBodyMachine(t)
	p := startProxy(t, "[proxy]\nbody_read_timeout = \"800ms\"\n"+oneApp("", []string{m.addr}))
	machine := p.srv.Table().Machine("m1")

	t.Run("a byte per second", func(t *testing.T) {
		slowBodyCut(t, p, m, machine.Inflight)
		wantMetric(t, p, `godwit_client_timeouts_total{kind="body_read"}`, 1)
		wantMetric(t, p, `godwit_proxy_errors_total{app="web",code="PL07"}`, 1)
	})

	t.Run("fast 100 MB upload", func(t *testing.T) {
		const size = 100 << 20
		req := newRequest(t, http.MethodPut, p.url("/upload"), webHost, &patternReader{n: size})
		req.ContentLength = size
		r := do(newClient(t), req)
		if r.err != nil || r.status != http.StatusOK || r.body != fmt.Sprint(size) {
			t.Fatalf("PUT %d bytes: got %d %q (err %v), want 200 %d", size, r.status, r.body, r.err, size)
		}
		wantMetric(t, p, `godwit_client_timeouts_total{kind="body_read"}`, 1)
	})
}

// stalledReaderSize is the response a stalled client does not read: far
// more than the socket buffers between the proxy and it.
const stalledReaderSize = 64 << 20

func TestStalledReaderCut(t *testing.T) {
	var sent atomic.Int64
	var writeErrs atomic.Int64
	m := startMachine(t, "m1", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(stalledReaderSize))
		n, err := io.Copy(w, &patternReader{n: stalledReaderSize})
		sent.Store(n)
		if err != nil {
			writeErrs.Add(1)
		}
	}, nil)
	p, h3addr := startH3Proxy(t, "[proxy]\nbody_write_timeout = \"500ms\"\n"+oneApp("", []string{m.addr}))
	machine := p.srv.Table().Machine("m1")

	for i, tc := range []struct {
		name string
		get  func(t *testing.T) (io.ReadCloser, error) // returns the response body, read no further
	}{
		{"http/1.1", func(t *testing.T) (io.ReadCloser, error) {
			c := dialRaw(t, p.httpAddr)
			fmt.Fprintf(c, "GET /big HTTP/1.1\r\nHost: %s\r\n\r\n", webHost)
			resp, err := http.ReadResponse(c.br, nil)
			if err != nil {
				return nil, err
			}
			return struct {
				io.Reader
				io.Closer
			}{resp.Body, c}, nil
		}},
		{"h2", func(t *testing.T) (io.ReadCloser, error) {
			tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true}
			t.Cleanup(tr.CloseIdleConnections)
			req := newRequest(t, http.MethodGet, "https://"+p.httpsAddr+"/big", webHost, nil)
			resp, err := tr.RoundTrip(req)
			if err != nil {
				return nil, err
			}
			if resp.ProtoMajor != 2 {
				t.Fatalf("got %s, want HTTP/2", resp.Proto)
			}
			return resp.Body, nil
		}},
		{"h3", func(t *testing.T) (io.ReadCloser, error) {
			_, tr := newH3Client(t, 0)
			resp, err := tr.RoundTrip(newRequest(t, http.MethodGet, "https://"+h3addr+"/big", webHost, nil))
			if err != nil {
				return nil, err
			}
			if resp.ProtoMajor != 3 {
				t.Fatalf("got %s, want HTTP/3", resp.Proto)
			}
			return resp.Body, nil
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body, err := tc.get(t)
			if err != nil {
				t.Fatalf("GET: got error %v, want a response", err)
			}
			defer body.Close()
			if _, err := io.ReadFull(body, make([]byte, 1024)); err != nil {
				t.Fatalf("first KiB of the response: %v", err)
			}
			// The client reads no more. The proxy gives up on it, and
			// the machine's connection, whose writes fail in turn.
			eventually(t, 20*time.Second, "the machine's request ended", func() bool {
				return writeErrs.Load() == int64(i+1) && m.inflight.Load() == 0 && machine.Inflight() == 0
			})
			if n := sent.Load(); n >= stalledReaderSize {
				t.Errorf("the machine wrote all %d bytes, want it cut short", n)
			}
			wantMetric(t, p, `godwit_client_timeouts_total{kind="body_write"}`, float64(i+1))
			// What the client still reads ends short of the whole.
			n, _ := io.Copy(io.Discard, body)
			if n+1024 >= stalledReaderSize {
				t.Errorf("the stalled client got the whole response (%d bytes), want it cut", n+1024)
			}
		})
	}
}

func TestConnectionFlood(t *testing.T) {
	m := startMachine(t, "m1", nil, nil)
	const limit, flood = 500, 1500
	p := startProxy(t, fmt.Sprintf("[proxy]\nmax_connections = %d\n", limit)+oneApp("", []string{m.addr}))

	held := make([]*rawConn, limit)
	for i := range held {
		held[i] = dialRaw(t, p.httpAddr)
		wantOKFrom(t, fmt.Sprintf("connection %d within the limit", i+1), held[i].get(t, webHost), "m1")
	}

	var refused, unanswered, served atomic.Int64
	var wg sync.WaitGroup
	for range flood {
		wg.Go(func() {
			c, err := net.Dial("tcp", p.httpAddr)
			if err != nil {
				unanswered.Add(1) // the backlog overflowed: refused by the kernel
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", webHost)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			switch {
			case err != nil:
				unanswered.Add(1) // closed at once: maxRefusing refusals were under way
			case resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get(HeaderError) == string(CodeNodeConnLimit):
				refused.Add(1)
			default:
				served.Add(1)
			}
		})
	}
	// Meanwhile the connections within the limit are served.
	for i, c := range held[:20] {
		wantOKFrom(t, fmt.Sprintf("held connection %d during the flood", i+1), c.get(t, webHost), "m1")
	}
	wg.Wait()
	t.Logf("flood of %d over max_connections = %d: %d answered %s, %d closed unanswered", flood, limit, refused.Load(), CodeNodeConnLimit, unanswered.Load())
	if served.Load() != 0 || refused.Load() == 0 || refused.Load()+unanswered.Load() != flood {
		t.Errorf("flood: got %d served, %d refused with %s, %d unanswered; want 0 served, the rest refused (some with %s)",
			served.Load(), refused.Load(), CodeNodeConnLimit, unanswered.Load(), CodeNodeConnLimit)
	}
	wantMetric(t, p, `godwit_client_connections{listener="http"}`, limit)

	// One held connection goes: a new client takes its place.
	held[0].Close()
	wantMetric(t, p, `godwit_client_connections{listener="http"}`, limit-1)
	if r := p.get(t, newClient(t), webHost, "/"); r.err != nil || r.status != http.StatusOK {
		t.Fatalf("a normal client after the flood: got %d (err %v), want 200", r.status, r.err)
	}
	for i, c := range held[1:] {
		if r := c.get(t, webHost); r.err != nil || r.status != http.StatusOK {
			t.Fatalf("held connection %d after the flood: got %d (err %v), want 200", i+2, r.status, r.err)
		}
	}
}
