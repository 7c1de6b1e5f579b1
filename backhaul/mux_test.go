package backhaul

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Trailers go both ways: the handler reads the request's after its body,
// the client the response's after its body, announced or with
// http.TrailerPrefix; announced keys never show up as headers.
func TestTrailers(t *testing.T) {
	tests := []struct {
		name  string
		flush bool // the head and body go out before the trailers are set
	}{
		{name: "small answer"},
		{name: "flushed answer", flush: true},
	}
	forEachProtocol(t, func(t *testing.T, proto string) {
		type seen struct {
			announced bool // the request announced X-Checksum before its body
			checksum  string
			body      string
		}
		got := make(chan seen, 1)
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, announced := r.Trailer["X-Checksum"]
			b, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			got <- seen{announced: announced, checksum: r.Trailer.Get("X-Checksum"), body: string(b)}
			w.Header().Set("Trailer", "X-Sum")
			w.Header().Set("X-Early", "header")
			w.Write(b)
			if r.URL.Query().Has("flush") {
				w.(http.Flusher).Flush()
			}
			w.Header().Set("X-Sum", fmt.Sprintf("%x", sha256.Sum256(b)))
			w.Header().Set(http.TrailerPrefix+"X-Late", "unannounced")
		})
		p := newPair(t, proto, h, Options{})
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				const payload = "a body whose trailer follows it"
				path := "/trailers"
				if tt.flush {
					path += "?flush=1"
				}
				req, err := http.NewRequest(http.MethodPost, "https://backhaul"+path, nil)
				if err != nil {
					t.Fatal(err)
				}
				req.Trailer = http.Header{"X-Checksum": nil}
				// The value is set when the body ends, as a streaming
				// sender computes it.
				req.Body = io.NopCloser(&eofHook{r: strings.NewReader(payload), onEOF: func() {
					req.Trailer.Set("X-Checksum", "sum-of-"+strconv.Itoa(len(payload)))
				}})
				req.ContentLength = -1
				resp, err := p.cli.RoundTrip(req, p.srv.Addr(), p.srvID.Fingerprint)
				if err != nil {
					t.Fatalf("RoundTrip: %v", err)
				}
				s := <-got
				want := seen{announced: true, checksum: "sum-of-" + strconv.Itoa(len(payload)), body: payload}
				if s != want {
					t.Errorf("handler saw %+v, want %+v", s, want)
				}
				for _, k := range []string{"X-Sum", "X-Late", http.TrailerPrefix + "X-Late"} {
					if v, ok := resp.Header[k]; ok {
						t.Errorf("response header %s = %q, want it only as a trailer", k, v)
					}
				}
				if v := resp.Header.Get("X-Early"); v != "header" {
					t.Errorf("response header X-Early = %q, want %q", v, "header")
				}
				body := readAll(t, resp)
				if body != payload {
					t.Errorf("body %q, want %q", body, payload)
				}
				wantSum := fmt.Sprintf("%x", sha256.Sum256([]byte(payload)))
				if v := resp.Trailer.Get("X-Sum"); v != wantSum {
					t.Errorf("trailer X-Sum = %q, want %q (trailers %v)", v, wantSum, resp.Trailer)
				}
				if v := resp.Trailer.Get("X-Late"); v != "unannounced" {
					t.Errorf("trailer X-Late = %q, want %q (trailers %v)", v, "unannounced", resp.Trailer)
				}
			})
		}
	})
}

// eofHook calls onEOF once, when r first reports io.EOF.
type eofHook struct {
	r     io.Reader
	onEOF func()
	done  bool
}

func (e *eofHook) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err == io.EOF && !e.done {
		e.done = true
		e.onEOF()
	}
	return n, err
}

// Header names that are not in canonical form reach the other side under
// their canonical form, both ways, as they do over HTTP/1.1, HTTP/2 and
// HTTP/3: a handler's r.Header.Get finds them.
func TestHeaderNamesCanonical(t *testing.T) {
	forEachProtocol(t, func(t *testing.T, proto string) {
		got := make(chan string, 1)
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			got <- r.Header.Get("X-Request-Id")
			w.Header()["x-served-by"] = []string{"iad"}
		})
		p := newPair(t, proto, h, Options{})
		req, err := http.NewRequest(http.MethodGet, "https://backhaul/", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header["x-request-id"] = []string{"r-1"}
		resp, err := p.cli.RoundTrip(req, p.srv.Addr(), p.srvID.Fingerprint)
		if err != nil {
			t.Fatalf("RoundTrip: %v", err)
		}
		readAll(t, resp)
		if v := <-got; v != "r-1" {
			t.Errorf("handler's r.Header.Get(%q) = %q, want %q", "X-Request-Id", v, "r-1")
		}
		if v := resp.Header.Get("X-Served-By"); v != "iad" {
			t.Errorf("resp.Header.Get(%q) = %q, want %q (header %v)", "X-Served-By", v, "iad", resp.Header)
		}
	})
}

// streamBound is how far a sender may get ahead of a receiver that reads
// nothing: the stream's window, plus what the sending side buffers before
// it waits for the window (the response writer's buffer, a frame's worth
// of the request body).
const streamBound = streamWindow + writeBuffer + maxFrame

// A client that does not read a response holds the handler at about the
// stream's window: the receiver buffers no more than that. Once read, the
// body is intact.
func TestMuxResponseFlowControl(t *testing.T) {
	const total, chunk = 8 << 20, 16 << 10
	var written atomic.Int64
	sums := make(chan [sha256.Size]byte, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		src, sum := newPattern(1), sha256.New()
		buf := make([]byte, chunk)
		for written.Load() < total {
			src.Read(buf)
			if _, err := w.Write(buf); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			sum.Write(buf)
			written.Add(chunk)
		}
		sums <- [sha256.Size]byte(sum.Sum(nil))
	})
	p := newPair(t, ProtocolMux, h, Options{})
	resp, err := p.do(context.Background(), http.MethodGet, "/big", nil)
	if err != nil {
		t.Fatalf("RoundTrip: %v", err)
	}
	defer resp.Body.Close()

	stalled := settle(t, "the handler's progress", written.Load)
	t.Logf("the handler stalled after %d bytes while the client read none", stalled)
	if stalled > streamBound {
		t.Errorf("handler wrote %d bytes to a client that read none, want at most %d (the stream's window and buffers)", stalled, streamBound)
	}
	if stalled < streamWindow/2 {
		t.Errorf("handler stalled after %d bytes, want about the stream's window (%d)", stalled, streamWindow)
	}

	sum := sha256.New()
	n, err := io.Copy(sum, resp.Body)
	if err != nil {
		t.Fatalf("reading the body: %v", err)
	}
	if want := <-sums; n != total || [sha256.Size]byte(sum.Sum(nil)) != want {
		t.Errorf("body: %d bytes, sha256 %x; want %d bytes, %x", n, sum.Sum(nil), total, want)
	}
}

// A handler that does not read the request body holds the client's
// reading of it at about the stream's window.
func TestMuxRequestFlowControl(t *testing.T) {
	const total = 8 << 20
	inHandler, release := make(chan struct{}), make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(inHandler)
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		sum := sha256.New()
		n, err := io.Copy(sum, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%d %x", n, sum.Sum(nil))
	})
	p := newPair(t, ProtocolMux, h, Options{})
	body := &countingReader{r: io.LimitReader(newPattern(2), total)}
	req, err := http.NewRequest(http.MethodPut, "https://backhaul/upload", io.NopCloser(body))
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = total
	type result struct {
		body string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := p.cli.RoundTrip(req, p.srv.Addr(), p.srvID.Fingerprint)
		if err != nil {
			done <- result{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- result{string(b), err}
	}()
	waitFor(t, inHandler, "the request to reach the handler")

	stalled := settle(t, "the client's reading of the request body", body.n.Load)
	t.Logf("the client stopped reading the request body after %d bytes", stalled)
	if stalled > streamBound {
		t.Errorf("client read %d bytes of a body the handler did not read, want at most %d", stalled, streamBound)
	}
	if stalled < streamWindow/2 {
		t.Errorf("client read %d bytes of the body, want about the stream's window (%d)", stalled, streamWindow)
	}

	close(release)
	var r result
	select {
	case r = <-done:
	case <-time.After(waitLimit):
		t.Fatal("the upload did not complete after the handler began reading")
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	want := sha256.New()
	io.Copy(want, io.LimitReader(newPattern(2), total))
	if w := fmt.Sprintf("%d %x", total, want.Sum(nil)); r.body != w {
		t.Errorf("handler read %q, want %q", r.body, w)
	}
}

// Many large streams at once, both ways, on one connection, arrive
// intact.
func TestMuxManyLargeStreams(t *testing.T) {
	const streams, size = 20, 2 << 20
	echo := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(w, r.Body)
	})
	p := newPair(t, ProtocolMux, echo, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 4*waitLimit)
	defer cancel()
	errs := make(chan error, streams)
	var wg sync.WaitGroup
	for i := range streams {
		wg.Go(func() {
			seed := uint64(100 + i)
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://backhaul/echo", io.LimitReader(newPattern(seed), size))
			if err != nil {
				errs <- err
				return
			}
			req.ContentLength = size
			resp, err := p.cli.RoundTrip(req, p.srv.Addr(), p.srvID.Fingerprint)
			if err != nil {
				errs <- fmt.Errorf("stream %d: %w", i, err)
				return
			}
			defer resp.Body.Close()
			got := sha256.New()
			n, err := io.Copy(got, resp.Body)
			if err != nil {
				errs <- fmt.Errorf("stream %d: reading the echo after %d bytes: %w", i, n, err)
				return
			}
			want := sha256.New()
			io.Copy(want, io.LimitReader(newPattern(seed), size))
			if n != size || !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
				errs <- fmt.Errorf("stream %d: echo of %d bytes, sha256 %x; want %d bytes, %x", i, n, got.Sum(nil), size, want.Sum(nil))
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := p.srv.accepted.Load(); n != 1 {
		t.Errorf("server accepted %d connections, want 1", n)
	}
}

// More concurrent requests than a connection admits wait for a free
// stream: the server never runs more than maxStreams of them at once, and
// none fails or moves to another connection.
//
// Each of the maxStreams requests that wait takes the stream of one that
// just ended. More Ps than cores make it likelier that the server's
// goroutine loses its P right after writing a stream's end, which is when
// a server that still counted that stream would refuse the next.
func TestMuxMaxStreams(t *testing.T) {
	const n = 2 * maxStreams
	defer runtime.GOMAXPROCS(max(8, runtime.GOMAXPROCS(0)))
	var running, peak, served atomic.Int64
	full := make(chan struct{})
	var fullOnce sync.Once
	release := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		now := running.Add(1)
		for {
			old := peak.Load()
			if now <= old || peak.CompareAndSwap(old, now) {
				break
			}
		}
		if now >= maxStreams {
			fullOnce.Do(func() { close(full) })
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
		running.Add(-1)
		served.Add(1)
		io.WriteString(w, "ok")
	})
	p := newPair(t, ProtocolMux, h, Options{})
	start := time.Now()
	var returned atomic.Int64
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			defer returned.Add(1)
			resp, err := p.do(context.Background(), http.MethodGet, "/", nil)
			if err != nil {
				errs <- err
				return
			}
			if body, err := bodyOf(resp); body != "ok" || err != nil {
				errs <- fmt.Errorf("body %q, %v; want %q", body, err, "ok")
			}
		})
	}
	select {
	case <-full:
	case <-time.After(4 * waitLimit):
		t.Fatalf("only %d handlers running after %v, want %d", running.Load(), 4*waitLimit, maxStreams)
	}
	if r := returned.Load(); r != 0 {
		t.Errorf("%d requests returned while the server was full, want them waiting for a free stream", r)
	}
	close(release)
	wg.Wait()
	t.Logf("%d requests in %v", n, time.Since(start))
	close(errs)
	for err := range errs {
		t.Errorf("request: %v", err)
	}
	if got := peak.Load(); got > maxStreams {
		t.Errorf("server ran %d handlers at once, want at most %d", got, maxStreams)
	}
	if got := served.Load(); got != n {
		t.Errorf("handlers served %d requests, want %d", got, n)
	}
	if got := p.srv.accepted.Load(); got != 1 {
		t.Errorf("server accepted %d connections, want 1 (requests over the limit wait, they do not move)", got)
	}
}

// Requests canceled while a connection is full free their streams for the
// requests waiting for one, on the same connection.
func TestMuxMaxStreamsCanceled(t *testing.T) {
	const extra = 200
	defer runtime.GOMAXPROCS(max(8, runtime.GOMAXPROCS(0))) // see TestMuxMaxStreams
	var running, extras atomic.Int64
	full, release := make(chan struct{}), make(chan struct{})
	var fullOnce sync.Once
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/extra" {
			extras.Add(1)
		} else if running.Add(1) == maxStreams {
			fullOnce.Do(func() { close(full) })
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
		io.WriteString(w, "ok")
	})
	p := newPair(t, ProtocolMux, h, Options{})
	get := func(ctx context.Context, path string) error {
		resp, err := p.do(ctx, http.MethodGet, path, nil)
		if err != nil {
			return err
		}
		_, err = bodyOf(resp)
		return err
	}
	var wg sync.WaitGroup
	errs := make(chan error, maxStreams+extra)
	cancels := make([]context.CancelFunc, maxStreams)
	defer func() {
		for _, cancel := range cancels {
			cancel()
		}
	}()
	for i := range maxStreams {
		ctx, cancel := context.WithCancel(context.Background())
		cancels[i] = cancel
		wg.Go(func() {
			err := get(ctx, "/")
			if i < extra && errors.Is(err, context.Canceled) {
				return
			}
			if err != nil {
				errs <- fmt.Errorf("request %d: %w", i, err)
			}
		})
	}
	waitFor(t, full, "the connection to be full")
	for i := range extra {
		wg.Go(func() {
			if err := get(context.Background(), "/extra"); err != nil {
				errs <- fmt.Errorf("extra request %d: %w", i, err)
			}
		})
	}
	for _, cancel := range cancels[:extra] {
		cancel()
	}
	eventually(t, "the waiting requests to take the canceled ones' streams", func() bool {
		return extras.Load() == extra
	})
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := p.srv.accepted.Load(); n != 1 {
		t.Errorf("server accepted %d connections, want 1 (the waiting requests take the freed streams)", n)
	}
}

// A peer that breaks the protocol loses its connection, and the server
// says why in its log; other connections are served as before.
func TestMuxBrokenClient(t *testing.T) {
	validHead := func(id uint32, end bool) []byte {
		req, _ := http.NewRequest(http.MethodPost, "https://backhaul/", nil)
		var flags uint8
		if end {
			flags = flagEnd
		}
		head, _ := encodeRequestHead(req, -1)
		return rawFrame(frameHeaders, flags, id, head)
	}
	overWindow := validHead(1, false)
	for sent := 0; sent <= streamWindow; sent += maxFrame {
		overWindow = append(overWindow, rawFrame(frameData, 0, 1, make([]byte, maxFrame))...)
	}
	tests := []struct {
		name  string
		send  []byte
		error string // in the log line
	}{
		{name: "HTTP/1.1 instead of frames", send: []byte("GET / HTTP/1.1\r\nHost: backhaul\r\n\r\n"), error: "frame of 4670804 bytes"},
		{name: "oversized head", send: frameHeader(frameHeaders, flagEnd, 1, maxHead+1), error: "frame of 1048577 bytes"},
		{name: "oversized data frame", send: append(validHead(1, false), frameHeader(frameData, 0, 1, maxFrame+1)...), error: "data frame of"},
		{name: "malformed head", send: rawFrame(frameHeaders, flagEnd, 1, []byte{0x80}), error: "malformed head"},
		{name: "even stream id", send: validHead(2, true), error: "even stream id"},
		{name: "window frame of 3 bytes", send: rawFrame(frameWindow, 0, 1, []byte{0, 0, 1}), error: "window frame"},
		{name: "data beyond the window", send: overWindow, error: "flow-control window"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var log syncBuffer
			opts := Options{Log: slog.New(slog.NewTextHandler(&log, nil))}
			var running atomic.Int64 // handlers of the broken connection
			testDone := make(chan struct{})
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/ok" {
					io.WriteString(w, "ok")
					return
				}
				running.Add(1)
				defer running.Add(-1)
				select { // reads nothing: the window fills
				case <-r.Context().Done():
				case <-testDone: // the test failed: let the server close
				}
			})
			p := newPair(t, ProtocolMux, h, opts)
			t.Cleanup(func() { close(testDone) }) // before the server closes
			// A client that behaves, connected before.
			resp, err := p.do(context.Background(), http.MethodGet, "/ok", nil)
			if err != nil {
				t.Fatalf("RoundTrip: %v", err)
			}
			readAll(t, resp)

			tc := dialRawMux(t, p)
			if _, err := tc.Write(tt.send); err != nil {
				t.Fatalf("sending: %v", err)
			}
			tc.SetReadDeadline(time.Now().Add(waitLimit))
			if _, err := io.Copy(io.Discard, tc); err != nil {
				t.Fatalf("reading until the server closes: %v, want EOF", err)
			}
			eventually(t, "the server to log the broken peer", func() bool {
				return strings.Contains(log.String(), "peer broke the protocol")
			})
			eventually(t, "the broken connection's handlers to see their requests end", func() bool {
				return running.Load() == 0
			})
			if l := log.String(); !strings.Contains(l, "level=WARN") || !strings.Contains(l, tt.error) {
				t.Errorf("log %q: want a warning that mentions %q", l, tt.error)
			}

			resp, err = p.do(context.Background(), http.MethodGet, "/ok", nil)
			if err != nil {
				t.Fatalf("RoundTrip on the other connection after the broken peer: %v", err)
			}
			if body := readAll(t, resp); body != "ok" {
				t.Errorf("body %q, want %q", body, "ok")
			}
			if n := p.srv.accepted.Load(); n != 2 {
				t.Errorf("server accepted %d connections, want 2 (the good client's survived)", n)
			}
		})
	}
}

// A handler whose stream the client resets as soon as it opened it sees
// its request's context end, however early the reset came.
func TestMuxEarlyReset(t *testing.T) {
	const n = 50
	var entered, ended atomic.Int64
	testDone := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered.Add(1)
		select {
		case <-r.Context().Done():
			ended.Add(1)
		case <-testDone: // the test failed: let the server close
		}
	})
	p := newPair(t, ProtocolMux, h, Options{})
	t.Cleanup(func() { close(testDone) }) // before the server closes
	tc := dialRawMux(t, p)
	req, _ := http.NewRequest(http.MethodPost, "https://backhaul/", nil)
	head, err := encodeRequestHead(req, -1)
	if err != nil {
		t.Fatal(err)
	}
	var b []byte
	for i := range uint32(n) {
		id := 2*i + 1
		b = append(b, rawFrame(frameHeaders, 0, id, head)...)
		b = append(b, rawFrame(frameReset, 0, id, []byte{0, 0, 0, codeCancel})...)
	}
	if _, err := tc.Write(b); err != nil {
		t.Fatal(err)
	}
	if !waitUntil(func() bool { return ended.Load() == n }) {
		e, d := entered.Load(), ended.Load()
		t.Errorf("%d of %d handlers (of %d requests reset at once) saw their request end, want all", d, e, n)
	}
}

// A server that goes silent after its settings fails the request within
// about the idle timeout, as a lost connection; the next request dials
// again.
func TestMuxSilentServer(t *testing.T) {
	const idle = 300 * time.Millisecond
	srvID, cliID := newIdentity(t, "server"), newIdentity(t, "client")
	opts := Options{Protocol: ProtocolMux, IdleTimeout: idle}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", serverTLS(srvID, pinsOf(cliID.Fingerprint), &opts, func(error) {}))
	if err != nil {
		t.Fatal(err)
	}
	var conns atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var open []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			open = append(open, nc)
			mu.Unlock()
			silent := conns.Add(1) == 1
			wg.Go(func() { fakeMuxServer(nc, silent) })
		}
	})

	cli := NewClient(cliID, opts)
	defer cli.Close()
	get := func() (*http.Response, error) {
		ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
		t.Cleanup(cancel)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://backhaul/", nil)
		return cli.RoundTrip(req, ln.Addr().String(), srvID.Fingerprint)
	}
	start := time.Now()
	_, err = get()
	took := time.Since(start)
	wantErr(t, err, []error{ErrConnectionLost}, ln.Addr().String())
	t.Logf("request to the silent server: %v after %v", err, took)
	if bound := idle + idle/3 + 200*time.Millisecond; took > bound {
		t.Errorf("request to the silent server failed after %v, want within about the idle timeout %v (at most %v)", took, idle, bound)
	}

	resp, err := get()
	if err != nil {
		t.Fatalf("request after the silent connection failed: %v", err)
	}
	if body := readAll(t, resp); body != "ok" {
		t.Errorf("body %q, want %q", body, "ok")
	}
	if n := conns.Load(); n != 2 {
		t.Errorf("the client dialled %d times, want 2", n)
	}
}

// fakeMuxServer speaks just enough mux on nc: its settings, then, unless
// silent, an "ok" answer to every request head. It returns when nc fails.
func fakeMuxServer(nc net.Conn, silent bool) {
	defer nc.Close()
	var settings [8]byte
	binary.BigEndian.PutUint32(settings[:], muxVersion)
	binary.BigEndian.PutUint32(settings[4:], maxStreams)
	if _, err := nc.Write(rawFrame(frameSettings, 0, 0, settings[:])); err != nil {
		return
	}
	var hdr [frameHeaderLen]byte
	for {
		if _, err := io.ReadFull(nc, hdr[:]); err != nil {
			return
		}
		n := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
		if _, err := io.CopyN(io.Discard, nc, int64(n)); err != nil {
			return
		}
		typ, id := frameType(hdr[3]), binary.BigEndian.Uint32(hdr[5:])
		if silent || typ != frameHeaders {
			continue // pings go unanswered too
		}
		head := binary.AppendUvarint(nil, http.StatusOK)
		head = binary.AppendUvarint(head, 2+1)
		head = binary.AppendUvarint(head, 0)
		out := append(rawFrame(frameHeaders, 0, id, head), rawFrame(frameData, flagEnd, id, []byte("ok"))...)
		if _, err := nc.Write(out); err != nil {
			return
		}
	}
}

// While a server drains, a request already streaming its body completes on
// the old connection, and requests sent after the GOAWAY go, without an
// error, on a new connection to the server that took the address over.
func TestMuxDrainToNewServer(t *testing.T) {
	const chunk = 64 << 10
	firstChunk := make(chan struct{})
	upload := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sum := sha256.New()
		n, err := io.CopyN(sum, r.Body, chunk)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		close(firstChunk)
		m, err := io.Copy(sum, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%d %x", n+m, sum.Sum(nil))
	})
	var old, fresh counter
	oldMux := http.NewServeMux()
	oldMux.Handle("/upload", upload)
	oldMux.Handle("/", &old)
	opts := Options{Protocol: ProtocolMux, DrainTimeout: waitLimit}
	srvID, cliID := newIdentity(t, "server"), newIdentity(t, "client")
	pins := pinsOf(cliID.Fingerprint)
	srv, err := Listen("127.0.0.1:0", srvID, pins, oldMux, opts)
	if err != nil {
		t.Fatal(err)
	}
	addr := srv.Addr()
	serveDone := make(chan error, 1)
	go func() { serveDone <- srv.Serve(context.Background()) }()
	cli := NewClient(cliID, opts)
	defer cli.Close()

	payload := bytes.Repeat([]byte("drain..."), 4*chunk/8)
	pr, pw := io.Pipe()
	defer pw.Close()
	uploaded := make(chan string, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, "https://backhaul/upload", pr)
		resp, err := cli.RoundTrip(req, addr, srvID.Fingerprint)
		if err == nil {
			var body string
			if body, err = bodyOf(resp); err == nil {
				uploaded <- body
				return
			}
		}
		uploaded <- "error: " + err.Error()
	}()
	if _, err := pw.Write(payload[:chunk]); err != nil {
		t.Fatal(err)
	}
	waitFor(t, firstChunk, "the handler to read the upload's first chunk")

	closed := make(chan struct{})
	go func() {
		srv.Close()
		close(closed)
	}()
	// The old server stops listening as it starts to drain; a new one
	// takes its address.
	var next *Server
	eventually(t, "the address to be free for a new server", func() bool {
		next, err = Listen(addr, srvID, pins, &fresh, opts)
		return err == nil
	})
	nextDone := make(chan error, 1)
	go func() { nextDone <- next.Serve(context.Background()) }()
	defer func() {
		next.Close()
		if err := <-nextDone; err != nil {
			t.Errorf("Serve of the new server: %v", err)
		}
	}()

	for fresh.n.Load() == 0 {
		req, _ := http.NewRequest(http.MethodGet, "https://backhaul/", nil)
		resp, err := cli.RoundTrip(req, addr, srvID.Fingerprint)
		if err != nil {
			t.Fatalf("request during the drain (after %d to the old server, %d to the new): %v", old.n.Load(), fresh.n.Load(), err)
		}
		readAll(t, resp)
	}
	t.Logf("requests served by the draining server: %d", old.n.Load())
	select {
	case body := <-uploaded:
		t.Fatalf("the upload ended before its body did: %s", body)
	default:
	}

	if _, err := pw.Write(payload[chunk:]); err != nil {
		t.Fatalf("writing the rest of the upload after the GOAWAY: %v", err)
	}
	pw.Close()
	var body string
	select {
	case body = <-uploaded:
	case <-time.After(waitLimit):
		t.Fatal("the upload did not complete during the drain")
	}
	if want := fmt.Sprintf("%d %x", len(payload), sha256.Sum256(payload)); body != want {
		t.Errorf("upload in flight during the drain: got %q, want %q", body, want)
	}
	waitFor(t, closed, "the old server's Close to return")
	if err := <-serveDone; err != nil {
		t.Errorf("Serve of the old server: %v", err)
	}
	if n := next.accepted.Load(); n != 1 {
		t.Errorf("new server accepted %d connections, want 1", n)
	}
}

// A request the server could not take (a head larger than it accepts, a
// URL whose RequestURI does not parse), or an answer the client could not,
// fails on its own, not with the connection and the other requests on it.
func TestMuxUnsendableHeads(t *testing.T) {
	inSlow, release := make(chan struct{}), make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/slow":
			close(inSlow)
			<-release
			io.WriteString(w, "slow")
		case "/huge-answer":
			w.Header().Set("X-Huge", strings.Repeat("a", maxHead))
			io.WriteString(w, "huge")
		default:
			io.WriteString(w, "ok")
		}
	})
	p := newPair(t, ProtocolMux, h, Options{})
	slow := make(chan string, 1)
	go func() {
		resp, err := p.do(context.Background(), http.MethodGet, "/slow", nil)
		if err == nil {
			var body string
			if body, err = bodyOf(resp); err == nil {
				slow <- body
				return
			}
		}
		slow <- "error: " + err.Error()
	}()
	waitFor(t, inSlow, "the slow request to reach the handler")

	get := func(u *url.URL, hdr string) error {
		req := &http.Request{Method: http.MethodGet, URL: u, Host: "backhaul", Header: http.Header{}}
		if hdr != "" {
			req.Header.Set("X-Huge", hdr)
		}
		resp, err := p.cli.RoundTrip(req, p.srv.Addr(), p.srvID.Fingerprint)
		if err == nil {
			_, err = bodyOf(resp)
		}
		return err
	}
	for _, u := range []*url.URL{
		{Scheme: "a", Opaque: "0"}, // RequestURI "0"
		{Path: "relative"},
	} {
		err := get(u, "")
		wantErr(t, err, []error{errStreamMalformed})
		if errors.Is(err, ErrConnectionLost) || errors.Is(err, ErrPeerUnreachable) {
			t.Errorf("URL %q: %v, want a failure of its own stream", u, err)
		}
		t.Logf("URL %q: %v", u, err)
	}
	if n := p.srv.accepted.Load(); n != 1 {
		t.Errorf("server accepted %d connections after the malformed requests, want 1", n)
	}

	err := get(&url.URL{Scheme: "https", Host: "backhaul", Path: "/huge"}, strings.Repeat("a", maxHead))
	wantErr(t, err, nil, "head of", "over the limit")
	if errors.Is(err, ErrConnectionLost) {
		t.Errorf("a request head too large to send: %v, want the request not sent", err)
	}
	// Client.classify reports it as ErrPeerUnreachable, as it does any
	// request a connection did not send, and dials anew.
	t.Logf("huge request: %v", err)

	err = get(&url.URL{Path: "/huge-answer"}, "")
	if err == nil || errors.Is(err, ErrConnectionLost) {
		t.Errorf("a response too large to send: %v, want a failure of its own stream", err)
	}
	t.Logf("huge answer: %v", err)

	if err := get(&url.URL{Path: "/"}, ""); err != nil {
		t.Fatalf("request after the huge heads: %v", err)
	}
	close(release)
	if body := <-slow; body != "slow" {
		t.Errorf("request in flight during the huge heads got %q, want %q", body, "slow")
	}
}

// FuzzMuxHeads checks that the head decoders never panic on what a peer
// sends, that what they accept is well-formed, and that a head
// encodeRequestHead made decodes to the request it came from.
func FuzzMuxHeads(f *testing.F) {
	type seed struct {
		method, host, uri, key, value string
		cl                            int64
	}
	for _, s := range []seed{
		{"GET", "app.example", "/", "X-Edge", "nrt", 0},
		{"POST", "web.example.com", "/upload?q=1&r=%20", "Content-Type", "text/plain", 1 << 20},
		{"PUT", "", "/unknown-length", "Trailer", "X-Sum", -1},
		{"OPTIONS", "[::1]:8080", "*", "x-lower", "", 7},
	} {
		req := seedRequest(s.method, s.host, s.uri, s.key, s.value)
		head, err := encodeRequestHead(req, s.cl)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(head, s.method, s.host, s.uri, s.key, s.value, s.cl)
	}
	// An opaque URL, whose RequestURI ("0") the server would not parse.
	f.Add([]byte{1, 3, 'G', 'E', 'T', 0, 1, '0', 0}, "GET", "", "a:0", "", "", int64(0))
	resp := binary.AppendUvarint(nil, http.StatusOK)
	resp = binary.AppendUvarint(resp, 3)
	resp = appendFields(resp, http.Header{"Trailer": {"X-Sum"}, "X-Owner": {"iad", "ord"}}, nil)
	f.Add(resp, "", "", "/", "", "", int64(-1))
	f.Add(appendFields(nil, http.Header{"X-Sum": {"abc"}}, nil), "", "", "/", "", "", int64(-1))

	f.Fuzz(func(t *testing.T, raw []byte, method, host, uri, key, value string, cl int64) {
		// Whatever a peer sends.
		if req, err := decodeRequestHead(raw); err == nil {
			if req.ContentLength < -1 {
				t.Errorf("decodeRequestHead: ContentLength %d", req.ContentLength)
			}
			checkFields(t, "request", req.Header)
		}
		if resp, err := decodeResponseHead(raw); err == nil {
			if resp.StatusCode < 200 || resp.StatusCode > 999 || resp.ContentLength < -1 {
				t.Errorf("decodeResponseHead: status %d, ContentLength %d", resp.StatusCode, resp.ContentLength)
			}
			checkFields(t, "response", resp.Header)
		}
		r := headReader{s: string(raw)}
		if h := r.fields(); r.done() == nil {
			checkFields(t, "trailer", h)
		}

		// What encodeRequestHead makes of a request RoundTrip would send.
		if cl < -1 {
			return
		}
		req := seedRequest(method, host, uri, key, value)
		if req == nil || validRequest(req) != nil {
			return
		}
		head, err := encodeRequestHead(req, cl)
		if err != nil {
			return // RoundTrip fails such a request without sending it
		}
		got, err := decodeRequestHead(head)
		wantURI := req.URL.RequestURI()
		if _, perr := url.ParseRequestURI(wantURI); perr != nil {
			// Not every RequestURI parses ("a:0" gives "0"): such a
			// request fails alone, not the connection.
			if _, ok := err.(*requestURIError); !ok {
				t.Fatalf("decoding a head with request URI %q: %v, want a requestURIError", wantURI, err)
			}
			return
		}
		if err != nil {
			t.Fatalf("decoding an encoded head (%q %q %q %q: %q): %v", method, host, uri, key, value, err)
		}
		wantMethod := cmp.Or(method, http.MethodGet)
		if got.Method != wantMethod || got.Host != host || got.RequestURI != wantURI || got.ContentLength != cl {
			t.Errorf("decoded %q %q %q, length %d; want %q %q %q, length %d",
				got.Method, got.Host, got.RequestURI, got.ContentLength, wantMethod, host, wantURI, cl)
		}
		// A path (what the proxy sends) comes back as the same URL; an
		// absolute URI may not ("a:" has no path, and its URL gives "/").
		if strings.HasPrefix(wantURI, "/") && got.URL.RequestURI() != wantURI {
			t.Errorf("decoded URL %q for request URI %q", got.URL.RequestURI(), wantURI)
		}
		want := http.Header{}
		for k, vv := range req.Header {
			want[http.CanonicalHeaderKey(k)] = vv
		}
		if _, ok := want["Trailer"]; ok { // announced trailers leave the header
			delete(want, "Trailer")
		}
		if fmt.Sprint(got.Header) != fmt.Sprint(want) {
			t.Errorf("decoded header %q, want %q", got.Header, want)
		}
	})
}

// seedRequest is a request as RoundTrip gets one, or nil if uri is not a
// request URI.
func seedRequest(method, host, uri, key, value string) *http.Request {
	u, err := url.ParseRequestURI(uri)
	if err != nil {
		return nil
	}
	req := &http.Request{Method: method, URL: u, Host: host, Header: http.Header{}}
	if key != "" {
		req.Header[key] = []string{value}
	}
	return req
}

// checkFields fails unless every field of h is valid and canonical.
func checkFields(t *testing.T, what string, h http.Header) {
	t.Helper()
	for k, vv := range h {
		if k != http.CanonicalHeaderKey(k) {
			t.Errorf("%s field name %q is not canonical", what, k)
		}
		for _, v := range vv {
			if !validField(k, v) {
				t.Errorf("%s field %q: %q is invalid", what, k, v)
			}
		}
	}
}

func validField(k, v string) bool {
	req := &http.Request{URL: &url.URL{Path: "/"}, Header: http.Header{k: {v}}}
	return validRequest(req) == nil
}

// dialRawMux connects to p's server as p's client would, reads the
// server's settings and returns the connection, for writing broken frames.
func dialRawMux(t *testing.T, p *pair) *tls.Conn {
	t.Helper()
	opts := Options{Protocol: ProtocolMux}
	tc, err := tls.Dial("tcp", p.srv.Addr(), clientTLS(p.cliID, &opts, p.srvID.Fingerprint))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close() })
	tc.SetReadDeadline(time.Now().Add(waitLimit))
	var settings [frameHeaderLen + 8]byte
	if _, err := io.ReadFull(tc, settings[:]); err != nil {
		t.Fatalf("reading the server's settings: %v", err)
	}
	if frameType(settings[3]) != frameSettings {
		t.Fatalf("server's first frame has type %d, want settings", settings[3])
	}
	return tc
}

// frameHeader is a frame's header alone, announcing n payload bytes.
func frameHeader(typ frameType, flags uint8, id uint32, n int) []byte {
	b := []byte{byte(n >> 16), byte(n >> 8), byte(n), byte(typ), flags, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[5:], id)
	return b
}

// rawFrame is a whole frame.
func rawFrame(typ frameType, flags uint8, id uint32, payload []byte) []byte {
	return append(frameHeader(typ, flags, id, len(payload)), payload...)
}

// newPattern returns an endless deterministic stream of bytes for seed.
func newPattern(seed uint64) io.Reader {
	var s [32]byte
	binary.BigEndian.PutUint64(s[:], seed)
	return rand.NewChaCha8(s)
}

// bodyOf reads and closes resp's body. Unlike readAll it does not end the
// test, so goroutines other than the test's may call it.
func bodyOf(resp *http.Response) (string, error) {
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// syncBuffer is a bytes.Buffer for concurrent writers, such as a logger.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// eventually polls cond until it holds, failing the test after waitLimit.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	if !waitUntil(cond) {
		t.Fatalf("timed out after %v waiting for %s", waitLimit, what)
	}
}

// waitUntil polls cond until it holds, for at most waitLimit, and reports
// whether it did.
func waitUntil(cond func() bool) bool {
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		<-tick.C
	}
	return true
}

// settleQuiet is how long a counter must stay still to count as stalled.
const settleQuiet = 250 * time.Millisecond

// settle waits until v has stopped growing (no change for settleQuiet)
// and returns its value; it fails the test if v is still moving after
// waitLimit. A stall can only be seen as the absence of progress, so this
// waits out settleQuiet once v is still.
func settle(t testing.TB, what string, v func() int64) int64 {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	deadline := time.Now().Add(waitLimit)
	last, since := v(), time.Now()
	for {
		<-tick.C
		now := time.Now()
		if cur := v(); cur != last {
			last, since = cur, now
		} else if cur > 0 && now.Sub(since) >= settleQuiet {
			return cur
		}
		if now.After(deadline) {
			t.Fatalf("%s still moving after %v (at %d)", what, waitLimit, last)
		}
	}
}

// TestMuxRetiredConnectionCloses: a connection replaced by a new one (a
// request found it unusable) finishes the requests on it and then closes,
// instead of answering pings until the client closes.
func TestMuxRetiredConnectionCloses(t *testing.T) {
	release := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			<-release
		}
		io.WriteString(w, "done")
	})
	p := newPair(t, ProtocolMux, h, Options{})
	held := make(chan string, 1)
	go func() {
		resp, err := p.do(context.Background(), http.MethodGet, "/hold", nil)
		if err != nil {
			held <- "error: " + err.Error()
			return
		}
		held <- readAll(t, resp)
	}()
	var old *peer
	streams := func(q *peer) int {
		m := q.conn.(*muxClient)
		m.mu.Lock()
		defer m.mu.Unlock()
		return len(m.streams)
	}
	eventually(t, "the held request on the connection", func() bool {
		for _, q := range *p.cli.peers.Load() {
			select {
			case <-q.ready: // dialled: conn is set
			default:
				continue
			}
			if q.err == nil && streams(q) > 0 {
				old = q
			}
		}
		return old != nil
	})
	old.broken.Store(true) // as after a refused stream: the next request redials
	resp, err := p.do(context.Background(), http.MethodGet, "/", nil)
	if err != nil || readAll(t, resp) != "done" {
		t.Fatalf("request on the new connection: %v", err)
	}
	if old.conn.(*muxClient).ended() != nil {
		t.Fatal("the retired connection closed with a request still on it")
	}
	close(release)
	if got := <-held; got != "done" {
		t.Fatalf("the request on the retired connection: %q, want done", got)
	}
	eventually(t, "the retired connection closed after its last request", func() bool {
		return old.conn.(*muxClient).ended() != nil
	})
	if got := p.srv.accepted.Load(); got != 2 {
		t.Errorf("server accepted %d connections, want 2 (the retired one and its replacement)", got)
	}
}
