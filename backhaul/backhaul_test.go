package backhaul

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestRoundTrip(t *testing.T) {
	forEachProtocol(t, func(t *testing.T, proto string) {
		type seen struct {
			method, path, host, hdr, body, peerFP string
		}
		got := make(chan seen, 1)
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			s := seen{method: r.Method, path: r.URL.RequestURI(), host: r.Host, hdr: r.Header.Get("X-Edge"), body: string(b)}
			if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
				s.peerFP = Fingerprint(r.TLS.PeerCertificates[0].Raw)
			}
			got <- s
			w.Header().Set("X-Owner", "iad")
			w.WriteHeader(http.StatusTeapot)
			io.WriteString(w, "short and stout")
		})
		p := newPair(t, proto, h, Options{})

		req, err := http.NewRequest(http.MethodPut, "https://ignored/path?q=1", strings.NewReader("payload"))
		if err != nil {
			t.Fatal(err)
		}
		req.Host = "web.example.com"
		req.Header.Set("X-Edge", "nrt")
		resp, err := p.cli.RoundTrip(req, p.srv.Addr(), p.srvID.Fingerprint)
		if err != nil {
			t.Fatalf("RoundTrip: %v", err)
		}
		body := readAll(t, resp)
		if resp.StatusCode != http.StatusTeapot || resp.Header.Get("X-Owner") != "iad" || body != "short and stout" {
			t.Errorf("response: got %d, X-Owner %q, body %q; want 418, \"iad\", \"short and stout\"",
				resp.StatusCode, resp.Header.Get("X-Owner"), body)
		}
		if resp.Request != req {
			t.Errorf("resp.Request is not the request sent")
		}
		want := seen{method: "PUT", path: "/path?q=1", host: "web.example.com", hdr: "nrt", body: "payload", peerFP: p.cliID.Fingerprint}
		if s := <-got; s != want {
			t.Errorf("handler saw %+v, want %+v", s, want)
		}
	})
}

// A request whose URL has no scheme or host, as a proxy builds one from an
// incoming request, still goes out.
func TestRoundTripRelativeURL(t *testing.T) {
	forEachProtocol(t, func(t *testing.T, proto string) {
		p := newPair(t, proto, &counter{}, Options{})
		req, err := http.NewRequest(http.MethodGet, "/relative", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = "app.example"
		resp, err := p.cli.RoundTrip(req, p.srv.Addr(), p.srvID.Fingerprint)
		if err != nil {
			t.Fatalf("RoundTrip: %v", err)
		}
		if body := readAll(t, resp); body != "ok" {
			t.Errorf("body %q, want %q", body, "ok")
		}
	})
}

// The handler reads the first part of a 4 MiB upload while the client has
// not yet written the rest: the request body streams.
func TestStreamingRequestBody(t *testing.T) {
	const size, chunk = 4 << 20, 64 << 10
	forEachProtocol(t, func(t *testing.T, proto string) {
		firstRead := make(chan struct{})
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			buf := make([]byte, chunk)
			if _, err := io.ReadFull(r.Body, buf); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			close(firstRead)
			sum := sha256.New()
			sum.Write(buf)
			n, err := io.Copy(sum, r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			fmt.Fprintf(w, "%d %x", n+chunk, sum.Sum(nil))
		})
		p := newPair(t, proto, h, Options{})

		payload := bytes.Repeat([]byte("godwit!!"), size/8)
		pr, pw := io.Pipe()
		writeErr := make(chan error, 1)
		go func() {
			defer pw.Close()
			if _, err := pw.Write(payload[:chunk]); err != nil {
				writeErr <- err
				return
			}
			select { // the rest only once the handler has the first chunk
			case <-firstRead:
			case <-time.After(waitLimit):
				writeErr <- errors.New("handler did not get the first chunk while the rest was unwritten")
				pw.CloseWithError(errors.New("gave up"))
				return
			}
			_, err := pw.Write(payload[chunk:])
			writeErr <- err
		}()
		resp, err := p.do(context.Background(), http.MethodPost, "/upload", pr)
		if err != nil {
			t.Fatalf("RoundTrip: %v", err)
		}
		body := readAll(t, resp)
		if err := <-writeErr; err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("%d %x", size, sha256.Sum256(payload)); body != want {
			t.Errorf("handler read %q, want %q", body, want)
		}
	})
}

// The client reads the first chunk of a response before the handler writes
// the last: the response body streams.
func TestStreamingResponse(t *testing.T) {
	forEachProtocol(t, func(t *testing.T, proto string) {
		clientGotFirst := make(chan struct{})
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "first;")
			w.(http.Flusher).Flush()
			select {
			case <-clientGotFirst:
				io.WriteString(w, "last")
			case <-r.Context().Done():
			case <-time.After(waitLimit):
				io.WriteString(w, "timeout")
			}
		})
		p := newPair(t, proto, h, Options{})
		resp, err := p.do(context.Background(), http.MethodGet, "/stream", nil)
		if err != nil {
			t.Fatalf("RoundTrip: %v", err)
		}
		defer resp.Body.Close()
		first := make([]byte, len("first;"))
		if _, err := io.ReadFull(resp.Body, first); err != nil || string(first) != "first;" {
			t.Fatalf("first chunk: %q, %v; want %q", first, err, "first;")
		}
		close(clientGotFirst)
		if rest := readAll(t, resp); rest != "last" {
			t.Errorf("rest of the body: %q, want %q", rest, "last")
		}
	})
}

// Canceling the request's context mid-response ends the handler's request
// context promptly.
func TestCancel(t *testing.T) {
	forEachProtocol(t, func(t *testing.T, proto string) {
		handlerDone := make(chan struct{})
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			defer close(handlerDone)
			io.WriteString(w, "started")
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
			case <-time.After(2 * waitLimit):
			}
		})
		p := newPair(t, proto, h, Options{})
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		resp, err := p.do(ctx, http.MethodGet, "/long", nil)
		if err != nil {
			t.Fatalf("RoundTrip: %v", err)
		}
		defer resp.Body.Close()
		buf := make([]byte, len("started"))
		if _, err := io.ReadFull(resp.Body, buf); err != nil {
			t.Fatalf("reading the first bytes: %v", err)
		}
		start := time.Now()
		cancel()
		const bound = 2 * time.Second
		select {
		case <-handlerDone:
		case <-time.After(bound):
			t.Fatalf("handler's context did not end within %v of the cancel", bound)
		}
		t.Logf("handler saw the cancel after %v", time.Since(start))
		if _, err := resp.Body.Read(buf); err == nil {
			t.Errorf("reading the body after the cancel: no error")
		}
	})
}

func TestPinning(t *testing.T) {
	forEachProtocol(t, func(t *testing.T, proto string) {
		h := &counter{}
		opts := Options{Protocol: proto}
		srvID, cliID := newIdentity(t, "server"), newIdentity(t, "client")
		srv := startServer(t, "127.0.0.1:0", srvID, pinsOf(cliID.Fingerprint), h, opts)

		t.Run("unknown client", func(t *testing.T) {
			stranger := NewClient(newIdentity(t, "stranger"), opts)
			defer stranger.Close()
			req, _ := http.NewRequest(http.MethodGet, "https://backhaul/", nil)
			_, err := stranger.RoundTrip(req, srv.Addr(), srvID.Fingerprint)
			wantErr(t, err, []error{ErrPeerUnreachable}, srv.Addr(), "refused this node's certificate")
			t.Logf("error: %v", err)
		})
		t.Run("wrong server fingerprint", func(t *testing.T) {
			cli := NewClient(cliID, opts)
			defer cli.Close()
			other := newIdentity(t, "other")
			req, _ := http.NewRequest(http.MethodGet, "https://backhaul/", nil)
			_, err := cli.RoundTrip(req, srv.Addr(), other.Fingerprint)
			wantErr(t, err, []error{ErrPeerUnreachable}, srv.Addr(),
				fmt.Sprintf("certificate fingerprint %s is not the expected %s", short(srvID.Fingerprint), short(other.Fingerprint)))
			t.Logf("error: %v", err)
		})
		t.Run("no fingerprint", func(t *testing.T) {
			cli := NewClient(cliID, opts)
			defer cli.Close()
			req, _ := http.NewRequest(http.MethodGet, "https://backhaul/", nil)
			_, err := cli.RoundTrip(req, srv.Addr(), "")
			wantErr(t, err, nil, "no fingerprint to pin")
		})
		if n := h.n.Load(); n != 0 {
			t.Errorf("handler ran %d times, want 0", n)
		}
		// The pinned client still gets through.
		cli := NewClient(cliID, opts)
		defer cli.Close()
		req, _ := http.NewRequest(http.MethodGet, "https://backhaul/", nil)
		resp, err := cli.RoundTrip(req, srv.Addr(), srvID.Fingerprint)
		if err != nil {
			t.Fatalf("pinned client: %v", err)
		}
		readAll(t, resp)
	})
}

// Fifty concurrent requests to one peer share one connection.
func TestOneConnectionPerPeer(t *testing.T) {
	const n = 50
	forEachProtocol(t, func(t *testing.T, proto string) {
		p := newPair(t, proto, &counter{}, Options{})
		start := make(chan struct{})
		errs := make(chan error, n)
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				<-start
				resp, err := p.do(context.Background(), http.MethodGet, "/", nil)
				if err != nil {
					errs <- err
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			})
		}
		close(start)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("request: %v", err)
		}
		if got := p.srv.accepted.Load(); got != 1 {
			t.Errorf("server accepted %d connections for %d concurrent requests, want 1", got, n)
		}
	})
}

// While a peer is down, RoundTrip fails fast with ErrPeerUnreachable; once
// it is back on the same address, the next request redials and succeeds.
func TestPeerRestart(t *testing.T) {
	forEachProtocol(t, func(t *testing.T, proto string) {
		// Dials to a QUIC peer that is down get no answer (no ICMP
		// reaches quic-go), so they take the whole handshake timeout.
		opts := Options{Protocol: proto, HandshakeTimeout: time.Second}
		srvID, cliID := newIdentity(t, "server"), newIdentity(t, "client")
		pins := pinsOf(cliID.Fingerprint)
		first, second := &counter{}, &counter{}
		srv, err := Listen("127.0.0.1:0", srvID, pins, first, opts)
		if err != nil {
			t.Fatal(err)
		}
		serveDone := make(chan error, 1)
		go func() { serveDone <- srv.Serve(context.Background()) }()
		cli := NewClient(cliID, opts)
		defer cli.Close()
		addr := srv.Addr()
		get := func() error {
			req, _ := http.NewRequest(http.MethodGet, "https://backhaul/", nil)
			resp, err := cli.RoundTrip(req, addr, srvID.Fingerprint)
			if err != nil {
				return err
			}
			readAll(t, resp)
			return nil
		}
		if err := get(); err != nil {
			t.Fatalf("before the restart: %v", err)
		}

		srv.Close()
		if err := <-serveDone; err != nil {
			t.Fatalf("Serve: %v", err)
		}
		for i := range 2 {
			start := time.Now()
			err := get()
			took := time.Since(start)
			wantErr(t, err, []error{ErrPeerUnreachable}, addr)
			if bound := opts.HandshakeTimeout + 500*time.Millisecond; took > bound {
				t.Errorf("request %d while down took %v, want under %v", i, took, bound)
			}
			t.Logf("request %d while down: %v after %v", i, err, took)
		}

		startServer(t, addr, srvID, pins, second, opts)
		if err := get(); err != nil {
			t.Fatalf("after the restart: %v", err)
		}
		if first.n.Load() != 1 || second.n.Load() != 1 {
			t.Errorf("requests served: %d before and %d after the restart, want 1 and 1", first.n.Load(), second.n.Load())
		}
	})
}

// A connection that fails after the request was sent is ErrConnectionLost,
// not ErrPeerUnreachable: the peer may have acted on the request.
func TestConnectionLostMidRequest(t *testing.T) {
	forEachProtocol(t, func(t *testing.T, proto string) {
		inHandler := make(chan struct{})
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			close(inHandler)
			<-r.Context().Done()
		})
		opts := Options{Protocol: proto, DrainTimeout: 50 * time.Millisecond}
		srvID, cliID := newIdentity(t, "server"), newIdentity(t, "client")
		srv, err := Listen("127.0.0.1:0", srvID, pinsOf(cliID.Fingerprint), h, opts)
		if err != nil {
			t.Fatal(err)
		}
		serveDone := make(chan error, 1)
		go func() { serveDone <- srv.Serve(context.Background()) }()
		cli := NewClient(cliID, opts)
		defer cli.Close()

		rtErr := make(chan error, 1)
		go func() {
			req, _ := http.NewRequest(http.MethodPost, "https://backhaul/", strings.NewReader("charge the card"))
			resp, err := cli.RoundTrip(req, srv.Addr(), srvID.Fingerprint)
			if err == nil {
				resp.Body.Close()
			}
			rtErr <- err
		}()
		waitFor(t, inHandler, "the request to reach the handler")
		srv.Close() // drains for 50ms, then cuts the connection
		if err := <-serveDone; err != nil {
			t.Errorf("Serve: %v", err)
		}
		var err2 error
		select {
		case err2 = <-rtErr:
		case <-time.After(waitLimit):
			t.Fatal("RoundTrip did not return after the server closed")
		}
		wantErr(t, err2, []error{ErrConnectionLost}, srv.Addr())
		if errors.Is(err2, ErrPeerUnreachable) {
			t.Errorf("error %q matches ErrPeerUnreachable; the request had reached the peer", err2)
		}
		t.Logf("error: %v", err2)
	})
}

func TestDelay(t *testing.T) {
	const delay = 150 * time.Millisecond
	forEachProtocol(t, func(t *testing.T, proto string) {
		var mu sync.Mutex
		var asked []string
		opts := Options{Delay: func(addr string) time.Duration {
			mu.Lock()
			asked = append(asked, addr)
			mu.Unlock()
			return delay
		}}
		p := newPair(t, proto, &counter{}, opts)
		for i := range 2 { // the first dials, the second reuses
			start := time.Now()
			resp, err := p.do(context.Background(), http.MethodGet, "/", nil)
			if err != nil {
				t.Fatalf("RoundTrip: %v", err)
			}
			readAll(t, resp)
			if took := time.Since(start); took < delay {
				t.Errorf("request %d took %v, want at least the delay %v", i, took, delay)
			}
		}
		mu.Lock()
		defer mu.Unlock()
		if len(asked) != 2 || asked[0] != p.srv.Addr() {
			t.Errorf("Delay asked for %q, want the peer address %q once per request", asked, p.srv.Addr())
		}
	})
}

// Canceling a request while it waits out the simulated delay ends it at
// once.
func TestDelayCanceled(t *testing.T) {
	p := newPair(t, ProtocolQUIC, &counter{}, Options{Delay: func(string) time.Duration { return time.Hour }})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := p.do(ctx, http.MethodGet, "/", nil)
	wantErr(t, err, []error{context.DeadlineExceeded})
}

func TestClientClosed(t *testing.T) {
	forEachProtocol(t, func(t *testing.T, proto string) {
		p := newPair(t, proto, &counter{}, Options{})
		resp, err := p.do(context.Background(), http.MethodGet, "/", nil)
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp)
		p.cli.Close()
		p.cli.Close() // idempotent
		_, err = p.do(context.Background(), http.MethodGet, "/", nil)
		wantErr(t, err, []error{ErrClosed})
	})
}

func TestServerLifecycle(t *testing.T) {
	forEachProtocol(t, func(t *testing.T, proto string) {
		id := newIdentity(t, "server")
		opts := Options{Protocol: proto}

		// Closed without ever serving: the port is released.
		s, err := Listen("127.0.0.1:0", id, pinsOf(), &counter{}, opts)
		if err != nil {
			t.Fatal(err)
		}
		addr := s.Addr()
		if strings.HasSuffix(addr, ":0") {
			t.Errorf("Addr() = %q, want the bound port", addr)
		}
		s.Close()
		s.Close()
		if err := s.Serve(context.Background()); !errors.Is(err, ErrClosed) {
			t.Errorf("Serve after Close: %v, want ErrClosed", err)
		}
		s2, err := Listen(addr, id, pinsOf(), &counter{}, opts)
		if err != nil {
			t.Fatalf("listening again on %s after Close: %v", addr, err)
		}

		// Serve ends with its context.
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s2.Serve(ctx) }()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve after its context ended: %v, want nil", err)
			}
		case <-time.After(waitLimit):
			t.Fatal("Serve did not return after its context ended")
		}
		s2.Close()
	})
}

func TestOptionsErrors(t *testing.T) {
	id := newIdentity(t, "node")
	if _, err := Listen("127.0.0.1:0", id, pinsOf(), &counter{}, Options{Protocol: "tcp"}); err == nil || !strings.Contains(err.Error(), `unknown protocol "tcp"`) {
		t.Errorf("Listen with protocol tcp: %v, want an unknown protocol error", err)
	}
	if _, err := Listen("127.0.0.1:0", id, nil, &counter{}, Options{}); err == nil {
		t.Errorf("Listen without pins or CA: no error")
	}
	c := NewClient(id, Options{Protocol: "tcp"})
	defer c.Close()
	req, _ := http.NewRequest(http.MethodGet, "https://backhaul/", nil)
	if _, err := c.RoundTrip(req, "127.0.0.1:1", id.Fingerprint); err == nil || !strings.Contains(err.Error(), `unknown protocol "tcp"`) {
		t.Errorf("RoundTrip with protocol tcp: %v, want an unknown protocol error", err)
	}
	req.Header.Set("Bad\nName", "x")
	c2 := NewClient(id, Options{})
	defer c2.Close()
	_, err := c2.RoundTrip(req, "127.0.0.1:1", id.Fingerprint)
	wantErr(t, err, nil, "invalid header name")
	if errors.Is(err, ErrPeerUnreachable) {
		t.Errorf("an invalid request is reported as ErrPeerUnreachable: %v", err)
	}
}

// While a server drains, the request in flight finishes, and new requests
// are not delivered: ErrPeerUnreachable, so they can go to another peer.
func TestDrain(t *testing.T) {
	forEachProtocol(t, func(t *testing.T, proto string) {
		inHandler, release := make(chan struct{}), make(chan struct{})
		var fresh counter
		mux := http.NewServeMux()
		mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
			close(inHandler)
			select {
			case <-release:
				io.WriteString(w, "finished")
			case <-r.Context().Done():
			}
		})
		mux.Handle("/", &fresh)
		opts := Options{Protocol: proto, HandshakeTimeout: 300 * time.Millisecond, DrainTimeout: waitLimit}
		srvID, cliID := newIdentity(t, "server"), newIdentity(t, "client")
		srv, err := Listen("127.0.0.1:0", srvID, pinsOf(cliID.Fingerprint), mux, opts)
		if err != nil {
			t.Fatal(err)
		}
		serveDone := make(chan error, 1)
		go func() { serveDone <- srv.Serve(context.Background()) }()
		cli := NewClient(cliID, opts)
		defer cli.Close()
		get := func(path string) (string, error) {
			req, _ := http.NewRequest(http.MethodGet, "https://backhaul"+path, nil)
			resp, err := cli.RoundTrip(req, srv.Addr(), srvID.Fingerprint)
			if err != nil {
				return "", err
			}
			return readAll(t, resp), nil
		}

		slow := make(chan string, 1)
		go func() {
			body, err := get("/slow")
			if err != nil {
				body = "error: " + err.Error()
			}
			slow <- body
		}()
		select {
		case <-inHandler:
		case body := <-slow:
			t.Fatalf("the slow request ended before the drain: %s", body)
		case <-time.After(waitLimit):
			t.Fatal("the slow request did not reach the handler")
		}
		closed := make(chan struct{})
		go func() {
			srv.Close()
			close(closed)
		}()

		// Until the client hears of the drain, requests may still get
		// through; after, every one fails without reaching the handler.
		served := fresh.n.Load()
		deadline := time.Now().Add(waitLimit)
		for {
			before := fresh.n.Load()
			_, err := get("/")
			if err != nil {
				wantErr(t, err, []error{ErrPeerUnreachable})
				if after := fresh.n.Load(); after != before {
					t.Errorf("a request that failed with %v reached the handler", err)
				}
				t.Logf("after %d requests served during the drain: %v", fresh.n.Load()-served, err)
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("requests still succeed while the server drains")
			}
		}

		close(release)
		if body := <-slow; body != "finished" {
			t.Errorf("the request in flight during the drain got %q, want %q", body, "finished")
		}
		waitFor(t, closed, "Close to return")
		if err := <-serveDone; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
}
