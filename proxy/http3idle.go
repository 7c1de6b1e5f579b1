package proxy

import (
	"context"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// h3Idle closes an HTTP/3 connection on which no request has been in a
// handler for the idle timeout.
//
// quic-go's own idle timeout (http3.Server.IdleTimeout) counts open
// streams, not requests, and it has no timeout for reading a request's
// HEADERS frame: a client that opens streams and never finishes their
// HEADERS (an HTTP/3 slowloris, up to 100 streams a connection) would hold
// its connection, its streams' goroutines and its connection slot for as
// long as it keeps the connection alive with PINGs. A stalled stream never
// reaches a handler, so such a connection is idle here and is closed after
// proxy.idle_timeout, as an HTTP/2 connection with an unfinished HEADERS
// frame is by net/http.
type h3Idle struct {
	c       *quic.Conn
	timeout time.Duration

	mu     sync.Mutex
	active int // requests in a handler
	timer  *time.Timer
}

// watchH3Idle starts watching c; the watch ends with c.
func watchH3Idle(c *quic.Conn, timeout time.Duration) *h3Idle {
	w := &h3Idle{c: c, timeout: timeout}
	w.mu.Lock()
	w.timer = time.AfterFunc(timeout, w.fire)
	w.mu.Unlock()
	context.AfterFunc(c.Context(), func() {
		w.mu.Lock()
		w.timer.Stop()
		w.mu.Unlock()
	})
	return w
}

func (w *h3Idle) fire() {
	w.mu.Lock()
	idle := w.active == 0
	w.mu.Unlock()
	if idle {
		w.c.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "idle")
	}
}

// begin notes a request entering its handler; end, its leaving it.
func (w *h3Idle) begin() {
	w.mu.Lock()
	w.active++
	w.timer.Stop()
	w.mu.Unlock()
}

func (w *h3Idle) end() {
	w.mu.Lock()
	w.active--
	if w.active == 0 {
		w.timer.Reset(w.timeout)
	}
	w.mu.Unlock()
}
