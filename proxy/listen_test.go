package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/godwit/godwit/config"
)

// startTLSListener serves, on a tlsListener behind a smuggleListener, a
// handler that describes each request. stop shuts the server down and
// checks that Serve ended; it runs when the test ends if not before.
func startTLSListener(t *testing.T, timeout time.Duration) (addr string, stop func()) {
	t.Helper()
	certs, _, err := newCertStore(config.TLS{}, nil, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatalf("newCertStore: %v", err)
	}
	conf := tlsConfig(certs)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%s tls=%v guarded=%v", r.Proto, r.TLS != nil, smuggleConnFrom(r.Context()) != nil)
		}),
		ConnContext: withSmuggleConn,
		TLSConfig:   conf.Clone(),
		ErrorLog:    slog.NewLogLogger(slog.DiscardHandler, slog.LevelError),
	}
	tln := newTLSListener(ln, conf, timeout, slog.New(slog.DiscardHandler))
	done := make(chan error, 1)
	go func() { done <- srv.Serve(smuggleListener{tln, 0}) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := srv.Shutdown(ctx); err != nil {
				t.Errorf("Shutdown: %v", err)
			}
			if err := <-done; !errors.Is(err, http.ErrServerClosed) {
				t.Errorf("Serve: got %v, want http.ErrServerClosed", err)
			}
		})
	}
	t.Cleanup(stop)
	return ln.Addr().String(), stop
}

func TestTLSListener(t *testing.T) {
	addr, _ := startTLSListener(t, 10*time.Second)
	for _, tc := range []struct {
		name  string
		proto func(*http.Protocols)
		want  string
	}{
		{"HTTP/2", func(p *http.Protocols) { p.SetHTTP2(true) }, "HTTP/2.0 tls=true guarded=false"},
		{"HTTP/1.1", func(p *http.Protocols) { p.SetHTTP1(true) }, "HTTP/1.1 tls=true guarded=true"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := &http.Transport{Protocols: new(http.Protocols), TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
			tc.proto(tr.Protocols)
			defer tr.CloseIdleConnections()
			r := do(&http.Client{Transport: tr}, newRequest(t, http.MethodGet, "https://"+addr+"/", "localhost", nil))
			if r.err != nil || r.status != http.StatusOK || r.body != tc.want {
				t.Fatalf("got %d %q (err %v), want 200 %q", r.status, r.body, r.err, tc.want)
			}
		})
	}
	t.Run("plain HTTP", func(t *testing.T) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("got %v (err %v), want 400", resp, err)
		}
	})
}

// TestTLSListenerSlowHandshake: a client that never completes its
// handshake holds up no other and is cut at the timeout; one still
// handshaking when the server shuts down does not delay it.
func TestTLSListenerSlowHandshake(t *testing.T) {
	for _, tc := range []struct {
		name    string
		timeout time.Duration
	}{
		{"cut at the timeout", 300 * time.Millisecond},
		{"cut at shutdown", time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, stop := startTLSListener(t, tc.timeout)
			// Before the dial: the server's handshake timer starts at its
			// accept, which may come before Dial returns here.
			start := time.Now()
			silent, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			defer silent.Close()
			// Accepted after the silent client, so its handshake runs
			// beside that one's.
			tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
			r := do(&http.Client{Transport: tr}, newRequest(t, http.MethodGet, "https://"+addr+"/", "localhost", nil))
			tr.CloseIdleConnections()
			if r.err != nil || r.status != http.StatusOK {
				t.Fatalf("request beside a silent client: got %d %q (err %v), want 200", r.status, r.body, r.err)
			}
			if tc.timeout == time.Hour {
				stop()
			}
			silent.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err = silent.Read(make([]byte, 1))
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("silent client still connected after 10s, want it cut")
			}
			if took := time.Since(start); tc.timeout < time.Hour && took < tc.timeout {
				t.Errorf("silent client cut after %v, want at least the %v handshake timeout", took, tc.timeout)
			}
		})
	}
}
