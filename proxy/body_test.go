package proxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	rtmetrics "runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// bigBodySize is the size of the large upload and download tests: 1 GiB,
// except under the race detector or -short, where pushing 1 GiB through
// three instrumented HTTP stacks on two cores takes minutes; 64 MiB there
// is still far more than any buffer on the path, so bounded memory shows.
func bigBodySize() int64 {
	if raceEnabled || testing.Short() {
		return 64 << 20
	}
	return 1 << 30
}

// maxHeapGrowth bounds how much the heap (and the resident set) of the test
// process, which holds client, proxy and machine, may grow while a big body
// streams through.
const maxHeapGrowth = 64 << 20

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// pattern is the content that bodies repeat. Its length is prime so that
// buffer boundaries fall at a different place in each repetition.
var pattern = func() []byte {
	r := rand.New(rand.NewPCG(1, 2))
	b := make([]byte, 65521)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}()

// patternReader yields n bytes of pattern, generated as read.
type patternReader struct{ n, off int64 }

func (p *patternReader) Read(b []byte) (int, error) {
	if p.n == 0 {
		return 0, io.EOF
	}
	if int64(len(b)) > p.n {
		b = b[:p.n]
	}
	n := 0
	for n < len(b) {
		k := copy(b[n:], pattern[p.off%int64(len(pattern)):])
		n += k
		p.off += int64(k)
	}
	p.n -= int64(n)
	return n, nil
}

// patternSum is the length and CRC-32C of a body of n pattern bytes.
func patternSum(n int64) string {
	h := crc32.New(castagnoli)
	io.Copy(h, &patternReader{n: n})
	return fmt.Sprintf("%d %08x", n, h.Sum32())
}

// bodySum reads r to its end and returns its length and CRC-32C.
func bodySum(r io.Reader) (string, error) {
	h := crc32.New(castagnoli)
	n, err := io.Copy(h, r)
	return fmt.Sprintf("%d %08x", n, h.Sum32()), err
}

// memWatch samples the heap in use every few milliseconds until stopped.
type memWatch struct {
	base, peak uint64
	hwm        int64 // VmHWM at the start, bytes; -1 if unknown
	stopc      chan struct{}
	done       chan struct{}
}

func heapInUse() uint64 {
	s := []rtmetrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/unused:bytes"},
	}
	rtmetrics.Read(s)
	return s[0].Value.Uint64() + s[1].Value.Uint64()
}

// vmHWM returns the process's peak resident set size, or -1.
func vmHWM() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return -1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return -1
			}
			return kb << 10
		}
	}
	return -1
}

func watchMemory() *memWatch {
	w := &memWatch{base: heapInUse(), hwm: vmHWM(), stopc: make(chan struct{}), done: make(chan struct{})}
	w.peak = w.base
	go func() {
		defer close(w.done)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-w.stopc:
				return
			case <-tick.C:
				w.peak = max(w.peak, heapInUse())
			}
		}
	}()
	return w
}

// check stops sampling and fails t if the heap or the peak resident set
// grew by more than maxHeapGrowth.
func (w *memWatch) check(t *testing.T, what string) {
	t.Helper()
	close(w.stopc)
	<-w.done
	w.peak = max(w.peak, heapInUse())
	growth := int64(w.peak) - int64(w.base)
	t.Logf("%s: heap in use %d MiB at start, peak %d MiB", what, w.base>>20, w.peak>>20)
	if growth > maxHeapGrowth {
		t.Errorf("%s: heap in use grew by %d MiB, want under %d MiB", what, growth>>20, maxHeapGrowth>>20)
	}
	if w.hwm >= 0 {
		// The peak RSS only ever rises; under -race it also counts shadow
		// memory, so it gets twice the room.
		limit := int64(maxHeapGrowth)
		if raceEnabled {
			limit *= 2
		}
		if g := vmHWM() - w.hwm; g > limit {
			t.Errorf("%s: peak resident set grew by %d MiB, want under %d MiB", what, g>>20, limit>>20)
		}
	}
}

// sumMachine answers every request with the length and CRC-32C of its
// body, its framing and its X-Req-Sum trailer.
func sumMachine(w http.ResponseWriter, r *http.Request) {
	sum, err := bodySum(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("X-Framing", fmt.Sprintf("cl=%d te=%v", r.ContentLength, r.TransferEncoding))
	w.Header().Set("X-Trailer", r.Trailer.Get("X-Req-Sum"))
	io.WriteString(w, sum)
}

func TestLargeUpload(t *testing.T) {
	size := bigBodySize()
	m := startMachine(t, "m1", sumMachine, nil)
	p := startProxy(t, oneApp("", []string{m.addr}))
	c := newClient(t)
	want := patternSum(size)

	mem := watchMemory()
	start := time.Now()
	req := newRequest(t, http.MethodPut, p.url("/upload"), webHost, &patternReader{n: size})
	req.ContentLength = size
	r := do(c, req)
	t.Logf("uploaded %d MiB in %v", size>>20, time.Since(start))
	mem.check(t, "upload")
	if r.err != nil || r.status != http.StatusOK || r.body != want {
		t.Fatalf("PUT %d bytes: got %d %q (err %v), want 200 %q", size, r.status, r.body, r.err, want)
	}
	if got, want := r.header.Get("X-Framing"), fmt.Sprintf("cl=%d te=[]", size); got != want {
		t.Errorf("machine saw framing %q, want %q", got, want)
	}
}

func TestChunkedUpload(t *testing.T) {
	m := startMachine(t, "m1", sumMachine, nil)
	p := startProxy(t, oneApp("", []string{m.addr}))
	c := newClient(t)
	for _, size := range []int64{0, 1, 100_003, 8<<20 + 7} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			// Hiding the reader's type keeps the client from learning the
			// length: it sends Transfer-Encoding: chunked.
			req := newRequest(t, http.MethodPost, p.url("/upload"), webHost, struct{ io.Reader }{&patternReader{n: size}})
			req.ContentLength = -1
			r := do(c, req)
			if want := patternSum(size); r.err != nil || r.status != http.StatusOK || r.body != want {
				t.Fatalf("chunked POST of %d bytes: got %d %q (err %v), want 200 %q", size, r.status, r.body, r.err, want)
			}
			if got := r.header.Get("X-Framing"); got != "cl=-1 te=[chunked]" {
				t.Errorf("machine saw framing %q, want chunked", got)
			}
		})
	}
}

func TestRequestTrailers(t *testing.T) {
	m := startMachine(t, "m1", sumMachine, nil)
	p := startProxy(t, oneApp("", []string{m.addr}))
	c := newClient(t)
	req := newRequest(t, http.MethodPost, p.url("/upload"), webHost, struct{ io.Reader }{&patternReader{n: 50_000}})
	req.ContentLength = -1
	req.Trailer = http.Header{"X-Req-Sum": {"c0ffee"}}
	r := do(c, req)
	if want := patternSum(50_000); r.err != nil || r.status != http.StatusOK || r.body != want {
		t.Fatalf("POST with trailer: got %d %q (err %v), want 200 %q", r.status, r.body, r.err, want)
	}
	if got := r.header.Get("X-Trailer"); got != "c0ffee" {
		t.Errorf("machine saw trailer X-Req-Sum %q, want \"c0ffee\"", got)
	}
}

func TestLargeDownload(t *testing.T) {
	size := bigBodySize()
	m := startMachine(t, "m1", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
		io.Copy(w, &patternReader{n: size})
	}, nil)
	p := startProxy(t, oneApp("", []string{m.addr}))
	c := newClient(t)
	want := patternSum(size)

	mem := watchMemory()
	start := time.Now()
	resp, err := c.Do(newRequest(t, http.MethodGet, p.url("/download"), webHost, nil))
	if err != nil {
		t.Fatalf("GET: %v", err)
	}
	got, err := bodySum(resp.Body)
	resp.Body.Close()
	t.Logf("downloaded %d MiB in %v", size>>20, time.Since(start))
	mem.check(t, "download")
	if err != nil || resp.StatusCode != http.StatusOK || got != want {
		t.Fatalf("GET %d bytes: got %d %q (err %v), want 200 %q", size, resp.StatusCode, got, err, want)
	}
	if resp.ContentLength != size {
		t.Errorf("response Content-Length: got %d, want %d", resp.ContentLength, size)
	}
}

// TestStreamingResponse checks that a response of unknown length reaches
// the client as the machine writes it, not when it ends.
func TestStreamingResponse(t *testing.T) {
	g := newGate()
	defer g.open()
	m := startMachine(t, "m1", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "first;")
		http.NewResponseController(w).Flush()
		g.wait(r)
		io.WriteString(w, "second")
	}, nil)
	p := startProxy(t, oneApp("", []string{m.addr}))
	c := newClient(t)

	resp, err := c.Do(newRequest(t, http.MethodGet, p.url("/stream"), webHost, nil))
	if err != nil {
		t.Fatalf("GET: %v", err)
	}
	defer resp.Body.Close()
	first := make(chan string, 1)
	go func() {
		b := make([]byte, len("first;"))
		n, _ := io.ReadFull(resp.Body, b)
		first <- string(b[:n])
	}()
	select {
	case got := <-first:
		if got != "first;" {
			t.Fatalf("first part: got %q, want \"first;\"", got)
		}
	case <-time.After(10 * time.Second):
		g.open()
		t.Fatal("first part of the stream not delivered within 10s while the machine waits, want it at once")
	}
	g.open()
	rest, err := io.ReadAll(resp.Body)
	if err != nil || string(rest) != "second" {
		t.Fatalf("rest of the stream: got %q (err %v), want \"second\"", rest, err)
	}
}

func TestResponseTrailers(t *testing.T) {
	m := startMachine(t, "m1", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Checksum")
		io.WriteString(w, "body")
		w.Header().Set("X-Checksum", "abc123")
		if r.URL.Path == "/undeclared" {
			w.Header().Set(http.TrailerPrefix+"X-Late", "late")
		}
	}, nil)
	p := startProxy(t, oneApp("", []string{m.addr}))
	c := newClient(t)
	for _, tc := range []struct {
		path string
		want map[string]string
	}{
		{"/declared", map[string]string{"X-Checksum": "abc123"}},
		{"/undeclared", map[string]string{"X-Checksum": "abc123", "X-Late": "late"}},
	} {
		t.Run(tc.path, func(t *testing.T) {
			resp, err := c.Do(newRequest(t, http.MethodGet, p.url(tc.path), webHost, nil))
			if err != nil {
				t.Fatalf("GET: %v", err)
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || string(b) != "body" {
				t.Fatalf("body: got %q (err %v), want \"body\"", b, err)
			}
			for k, v := range tc.want {
				if got := resp.Trailer.Get(k); got != v {
					t.Errorf("trailer %s: got %q, want %q (trailers %v)", k, got, v, resp.Trailer)
				}
			}
		})
	}
}

// stalledReader yields n bytes, then blocks until release is closed.
type stalledReader struct {
	r       patternReader
	release chan struct{}
}

func (s *stalledReader) Read(b []byte) (int, error) {
	if s.r.n == 0 {
		<-s.release
		return 0, io.ErrUnexpectedEOF
	}
	return s.r.Read(b)
}

// TestEarlyResponse: a machine that refuses an upload without reading it
// gets its answer to the client while the client is still sending, and the
// client's next request works.
func TestEarlyResponse(t *testing.T) {
	m := startMachine(t, "m1", func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut {
			w.Header().Set("Connection", "close")
			http.Error(w, "too large", http.StatusRequestEntityTooLarge)
			return
		}
		io.WriteString(w, "ok")
	}, nil)
	p := startProxy(t, oneApp("", []string{m.addr}))
	c := newClient(t)

	release := make(chan struct{})
	var once sync.Once
	defer once.Do(func() { close(release) })
	req := newRequest(t, http.MethodPut, p.url("/upload"), webHost, &stalledReader{r: patternReader{n: 1 << 20}, release: release})
	req.ContentLength = 64 << 20
	r := do(c, req)
	if r.err != nil || r.status != http.StatusRequestEntityTooLarge {
		t.Fatalf("PUT refused by the machine: got %d %q (err %v), want 413 while the upload is stalled", r.status, r.body, r.err)
	}
	once.Do(func() { close(release) })
	if r := p.get(t, c, webHost, "/"); r.err != nil || r.status != http.StatusOK || r.body != "ok" {
		t.Fatalf("next GET: got %d %q (err %v), want 200 \"ok\"", r.status, r.body, r.err)
	}
}

// TestFullDuplexEcho: a machine that streams its answer while still
// reading the upload (an echo) gets the whole upload, and the client gets
// the whole echo, with both directions in flight at once: over HTTP/1.1,
// HTTP/2 and HTTP/3, in large pieces and in small ones (a gRPC-like stream whose
// messages are far below the edge's write buffer, which must still reach
// the machine one by one).
func TestFullDuplexEcho(t *testing.T) {
	m := startMachine(t, "m1", duplexEchoMachine, nil)
	p, h3addr := startH3Proxy(t, oneApp("", []string{m.addr}))
	h3c, _ := newH3Client(t, 0)
	h2 := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true}
	t.Cleanup(h2.CloseIdleConnections)
	h1, h2c := newClient(t), &http.Client{Transport: h2}
	h2url := "https://" + p.httpsAddr + "/echo"
	// Go's HTTP/2 client holds the DATA that completes a declared length
	// until its body reports EOF, so the HTTP/2 streams declare none.
	for _, tc := range []struct {
		name        string
		c           *http.Client
		url         string
		size, piece int
		declared    bool // Content-Length set; otherwise chunked (HTTP/1) or open-ended
	}{
		{"HTTP/1.1, Content-Length, 64 KiB pieces", h1, p.url("/echo"), 4 << 20, 64 << 10, true},
		{"HTTP/1.1, Content-Length, 100-byte pieces", h1, p.url("/echo"), 100 * 100, 100, true},
		{"HTTP/1.1, chunked, 100-byte pieces", h1, p.url("/echo"), 100 * 100, 100, false},
		{"HTTP/2, 64 KiB pieces", h2c, h2url, 4 << 20, 64 << 10, false},
		{"HTTP/2, 100-byte pieces", h2c, h2url, 100 * 100, 100, false},
		{"HTTP/3, 64 KiB pieces", h3c, "https://" + h3addr + "/echo", 4 << 20, 64 << 10, false},
		{"HTTP/3, 100-byte pieces", h3c, "https://" + h3addr + "/echo", 100 * 100, 100, false},
	} {
		t.Run(tc.name, func(t *testing.T) { fullDuplexEcho(t, tc.c, tc.url, tc.size, tc.piece, tc.declared) })
	}
}

// TestFullDuplexEchoBackhaul is TestFullDuplexEcho's small pieces through
// two edges: each piece must cross the backhaul and the owner edge alone.
func TestFullDuplexEchoBackhaul(t *testing.T) {
	m := startMachine(t, "m-nrt", duplexEchoMachine, nil)
	owner := startEdge(t, "edge-nrt", "nrt", "", ownedMachine("m-nrt", "nrt", m.addr))
	front := startEdge(t, "edge-iad", "iad", owner.srv.GossipAddr(), "")
	routable(t, front, "m-nrt")
	c := newClient(t)
	t.Run("Content-Length", func(t *testing.T) { fullDuplexEcho(t, c, front.url("/echo"), 100*100, 100, true) })
	t.Run("chunked", func(t *testing.T) { fullDuplexEcho(t, c, front.url("/echo"), 100*100, 100, false) })
}

// duplexEchoMachine streams back what it reads, piece by piece, while reading.
func duplexEchoMachine(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	rc.EnableFullDuplex()
	w.WriteHeader(http.StatusOK)
	rc.Flush()
	buf := make([]byte, 16<<10)
	for {
		n, err := r.Body.Read(buf)
		if n > 0 {
			w.Write(buf[:n])
			rc.Flush()
		}
		if err != nil {
			return
		}
	}
}

// fullDuplexEcho sends size bytes to url in pieces, each only once the
// echo of the previous one came back: the exchange deadlocks unless both
// directions stream piece by piece.
func fullDuplexEcho(t *testing.T, c *http.Client, url string, size, pieceSize int, declared bool) {
	pr, pw := io.Pipe()
	req := newRequest(t, http.MethodPost, url, webHost, pr)
	req.ContentLength = -1
	if declared {
		req.ContentLength = int64(size)
	}
	type answer struct {
		resp *http.Response
		err  error
	}
	answers := make(chan answer, 1)
	go func() {
		resp, err := c.Do(req)
		answers <- answer{resp, err}
	}()
	src := &patternReader{n: int64(size)}
	piece := make([]byte, pieceSize)
	n, _ := src.Read(piece)
	if _, err := pw.Write(piece[:n]); err != nil {
		t.Fatalf("write first piece: %v", err)
	}
	var a answer
	select {
	case a = <-answers:
	case <-time.After(20 * time.Second):
		pw.CloseWithError(io.ErrUnexpectedEOF)
		t.Fatal("no response head within 20s while the upload is under way, want it at once")
	}
	if a.err != nil {
		pw.CloseWithError(a.err)
		t.Fatalf("POST: %v", a.err)
	}
	defer a.resp.Body.Close()
	h := crc32.New(castagnoli)
	echo := make([]byte, len(piece))
	total := int64(0)
	for {
		echoed := make(chan error, 1)
		go func() { _, err := io.ReadFull(a.resp.Body, echo[:n]); echoed <- err }()
		select {
		case err := <-echoed:
			if err != nil {
				pw.CloseWithError(err)
				t.Fatalf("echo after %d bytes: %v", total, err)
			}
		case <-time.After(10 * time.Second):
			pw.CloseWithError(io.ErrUnexpectedEOF)
			<-echoed
			t.Fatalf("no echo of the piece at %d bytes within 10s: it did not reach the machine", total)
		}
		h.Write(echo[:n])
		total += int64(n)
		if n, _ = src.Read(piece); n == 0 {
			break
		}
		if _, err := pw.Write(piece[:n]); err != nil {
			t.Fatalf("write at %d bytes: %v", total, err)
		}
	}
	pw.Close()
	if got, want := fmt.Sprintf("%d %08x", total, h.Sum32()), patternSum(int64(size)); got != want {
		t.Fatalf("echo: got %s, want %s", got, want)
	}
	if rest, err := io.ReadAll(a.resp.Body); err != nil || len(rest) != 0 {
		t.Fatalf("end of echo: got %d more bytes (err %v), want a clean end", len(rest), err)
	}
}

// TestExpectContinue: a client that waits for 100 Continue gets it from the
// proxy, and the machine gets the body without the Expect header.
func TestExpectContinue(t *testing.T) {
	m := startMachine(t, "m1", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s expect=%q", b, r.Header.Get("Expect"))
	}, nil)
	p := startProxy(t, oneApp("", []string{m.addr}))
	nc := dialProxy(t, p.httpAddr)
	br := bufio.NewReader(nc)
	io.WriteString(nc, "POST / HTTP/1.1\r\nHost: web.example.com\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
	cont, err := http.ReadResponse(br, nil)
	if err != nil || cont.StatusCode != http.StatusContinue {
		t.Fatalf("before the body: got %v (err %v), want 100 Continue", cont, err)
	}
	io.WriteString(nc, "hello")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("response: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	if want := `hello expect=""`; resp.StatusCode != http.StatusOK || string(b) != want {
		t.Fatalf("got %d %q, want 200 %q", resp.StatusCode, b, want)
	}
}

// TestClientGoneMidUpload: a client that sends part of a body and goes
// away must not leave the machine waiting for the rest (holding its
// concurrency slot until some timeout): the machine's request is cut at
// once, directly and through the owner edge over the backhaul.
func TestClientGoneMidUpload(t *testing.T) {
	got := make(chan error, 1)
	var started atomic.Int64 // requests that reached the machine
	handler := func(w http.ResponseWriter, r *http.Request) {
		started.Add(1)
		b, err := io.ReadAll(r.Body)
		if err == nil {
			err = fmt.Errorf("the whole body arrived (%q)", b)
		}
		got <- err
	}
	m := startMachine(t, "m-nrt", handler, nil)
	owner := startEdge(t, "edge-nrt", "nrt", "", ownedMachine("m-nrt", "nrt", m.addr))
	front := startEdge(t, "edge-iad", "iad", owner.srv.GossipAddr(), "")
	routable(t, front, "m-nrt")
	for _, tc := range []struct {
		name string
		p    *testProxy
		half bool // the client only shuts its sending side and reads on
	}{
		{"direct", owner, false},
		{"over the backhaul", front, false},
		{"direct, half-closed", owner, true},
		{"over the backhaul, half-closed", front, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := started.Load()
			nc := dialProxy(t, tc.p.httpAddr)
			io.WriteString(nc, "POST /upload HTTP/1.1\r\nHost: "+webHost+"\r\nContent-Length: 1000\r\n\r\nfirst part")
			eventually(t, 10*time.Second, "the machine has the request", func() bool { return started.Load() == before+1 })
			if tc.half {
				// The upload is incomplete: whatever the client reads, it
				// must not be a success (net/http writes an empty 200 for
				// a handler that returns without answering).
				nc.(*net.TCPConn).CloseWrite()
				nc.SetReadDeadline(time.Now().Add(10 * time.Second))
				if b, _ := io.ReadAll(nc); bytes.HasPrefix(b, []byte("HTTP/1.1 2")) {
					t.Errorf("a client that sent 10 of 1000 bytes read %q, want no success", b)
				}
			}
			nc.Close()
			select {
			case err := <-got:
				if !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Errorf("machine's read of the body: got %v, want unexpected EOF", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("machine still waiting for the body 10s after the client went away")
			}
			eventually(t, 10*time.Second, "the machine's slot released", func() bool { return owner.machineStatus(t, "m-nrt").Inflight == 0 })
		})
	}
}

// TestServerSpeaksFirst: a stream whose machine answers before the client
// sends any of its body (a gRPC stream where the server speaks first)
// works over HTTP/2, directly and through a second edge: the request
// head must reach the machine before any body does.
func TestServerSpeaksFirst(t *testing.T) {
	m := startMachine(t, "m-nrt", func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		rc.EnableFullDuplex()
		io.WriteString(w, "hello\n")
		rc.Flush()
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "got %s\n", b)
	}, nil)
	owner := startEdge(t, "edge-nrt", "nrt", "", ownedMachine("m-nrt", "nrt", m.addr))
	front := startEdge(t, "edge-iad", "iad", owner.srv.GossipAddr(), "")
	routable(t, front, "m-nrt")
	h2c := &http.Transport{Protocols: new(http.Protocols)} // prior knowledge, on the http listener
	h2c.Protocols.SetUnencryptedHTTP2(true)
	t.Cleanup(h2c.CloseIdleConnections)
	for _, tc := range []struct {
		name string
		c    *http.Client
		url  string
	}{
		{"HTTP/2, direct", &http.Client{Transport: h2c}, owner.url("/stream")},
		{"HTTP/2, through the backhaul", &http.Client{Transport: h2c}, front.url("/stream")},
		{"HTTP/1.1 chunked, through the backhaul", newClient(t), front.url("/stream")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pr, pw := io.Pipe()
			defer pw.Close()
			req := newRequest(t, http.MethodPost, tc.url, webHost, pr)
			req.ContentLength = -1
			answered := make(chan *http.Response, 1)
			failed := make(chan error, 1)
			go func() {
				resp, err := tc.c.Do(req)
				if err != nil {
					failed <- err
					return
				}
				answered <- resp
			}()
			var resp *http.Response
			select {
			case resp = <-answered:
			case err := <-failed:
				t.Fatalf("POST: %v", err)
			case <-time.After(10 * time.Second):
				t.Fatal("no answer within 10s to a stream whose machine speaks first")
			}
			defer resp.Body.Close()
			br := bufio.NewReader(resp.Body)
			if line, err := br.ReadString('\n'); err != nil || line != "hello\n" {
				t.Fatalf("first line: %q (err %v), want the machine's hello", line, err)
			}
			io.WriteString(pw, "ping")
			pw.Close()
			if line, err := br.ReadString('\n'); err != nil || line != "got ping\n" {
				t.Fatalf("second line: %q (err %v), want the machine's echo of the body", line, err)
			}
		})
	}
}
