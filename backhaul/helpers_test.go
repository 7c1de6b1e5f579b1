package backhaul

import (
	"context"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// protocols are the protocols every behaviour is tested with.
var protocols = []string{ProtocolQUIC, ProtocolH2, ProtocolMux}

// waitLimit bounds every wait for something that should happen promptly.
const waitLimit = 5 * time.Second

// forEachProtocol runs f as a subtest per protocol.
func forEachProtocol(t *testing.T, f func(t *testing.T, proto string)) {
	for _, proto := range protocols {
		t.Run(proto, func(t *testing.T) { f(t, proto) })
	}
}

func newIdentity(t testing.TB, name string) *Identity {
	t.Helper()
	id, err := NewIdentity(name)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// pinsOf admits exactly the given fingerprints.
func pinsOf(fps ...string) Pins {
	return func(fp string) bool { return slices.Contains(fps, fp) }
}

// pair is a server and a client that pin each other, on loopback.
type pair struct {
	srvID, cliID *Identity
	srv          *Server
	cli          *Client
}

// newPair starts a server serving h and a client for it; both are closed
// when the test ends (the client first, as a peer would go).
func newPair(t testing.TB, proto string, h http.Handler, opts Options) *pair {
	t.Helper()
	p := &pair{srvID: newIdentity(t, "server"), cliID: newIdentity(t, "client")}
	opts.Protocol = proto
	p.srv = startServer(t, "127.0.0.1:0", p.srvID, pinsOf(p.cliID.Fingerprint), h, opts)
	p.cli = NewClient(p.cliID, opts)
	t.Cleanup(func() { p.cli.Close() })
	return p
}

// startServer listens on addr and serves until the test ends.
func startServer(t testing.TB, addr string, id *Identity, pins Pins, h http.Handler, opts Options) *Server {
	t.Helper()
	s, err := Listen(addr, id, pins, h, opts)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(context.Background()) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-errc; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s
}

// do sends a request to the pair's server.
func (p *pair) do(ctx context.Context, method, path string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, "https://backhaul"+path, body)
	if err != nil {
		return nil, err
	}
	return p.cli.RoundTrip(req, p.srv.Addr(), p.srvID.Fingerprint)
}

// readAll reads and closes a response body.
func readAll(t testing.TB, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading response body: %v", err)
	}
	return string(b)
}

// counter is a handler that counts its calls and answers "ok".
type counter struct{ n atomic.Int64 }

func (c *counter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.n.Add(1)
	io.Copy(io.Discard, r.Body)
	io.WriteString(w, "ok")
}

// wantErr fails unless err is non-nil, matches every target and mentions
// every substring.
func wantErr(t testing.TB, err error, targets []error, substrs ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want one matching %v", targets)
	}
	for _, target := range targets {
		if !errors.Is(err, target) {
			t.Errorf("error %q: errors.Is(%v) = false, want true", err, target)
		}
	}
	for _, s := range substrs {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not mention %q", err, s)
		}
	}
}

// waitFor waits for ch to close, failing the test after waitLimit.
func waitFor(t testing.TB, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(waitLimit):
		t.Fatalf("timed out after %v waiting for %s", waitLimit, what)
	}
}
