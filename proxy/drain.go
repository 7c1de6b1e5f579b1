package proxy

import (
	"context"
	"net"
	"net/http"
	"sync"
	"time"
)

// A drain closes HTTP/1.1 keep-alive connections gently. net/http's
// Shutdown closes every idle connection at once; a client that sent its
// next request on one at that moment gets a reset and cannot tell whether
// the request was received, so it may not resend it (a POST). godwit
// first stops accepting and answers each request on an existing
// connection with "Connection: close" (the client then opens its next
// connection elsewhere: the listener is closed); only connections that
// stayed idle for drainIdleGrace are closed by Shutdown after that.
// (HTTP/2 needs none of this: Shutdown's GOAWAY tells the client which
// streams were taken. HTTP/3 likewise: see edgeHTTP3.shutdown.)

// drainIdleGrace is how long a connection must have been idle, once the
// drain began, before it is closed without having been told: long enough
// for a client under load to send its next request and get the
// "Connection: close" answer, short enough not to hold a restart.
const drainIdleGrace = 500 * time.Millisecond

// connTracker follows the client connections of the node's HTTP servers
// (their ConnState hook): which are idle, and since when.
type connTracker struct {
	mu    sync.Mutex
	conns map[net.Conn]connTrack
	now   func() time.Time
}

type connTrack struct {
	idle  bool
	since time.Time // of the last state change
}

func newConnTracker() *connTracker {
	return &connTracker{conns: make(map[net.Conn]connTrack), now: time.Now}
}

// hook is an http.Server's ConnState.
func (t *connTracker) hook(c net.Conn, st http.ConnState) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch st {
	case http.StateNew, http.StateActive:
		t.conns[c] = connTrack{since: t.now()}
	case http.StateIdle:
		t.conns[c] = connTrack{idle: true, since: t.now()}
	case http.StateHijacked, http.StateClosed:
		delete(t.conns, c)
	}
}

// settled reports whether every connection still open has been idle for
// grace since after (the drain's start): none can be carrying a request
// or about to get its "Connection: close" answer.
func (t *connTracker) settled(after time.Time, grace time.Duration) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	for _, ct := range t.conns {
		if !ct.idle {
			return false
		}
		since := ct.since
		if since.Before(after) {
			since = after
		}
		if now.Sub(since) < grace {
			return false
		}
	}
	return true
}

// count is the number of connections open.
func (t *connTracker) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.conns)
}

// quiesce waits until the client connections have settled (see settled),
// polling every few milliseconds, or until ctx ends.
func (t *connTracker) quiesce(ctx context.Context, began time.Time, grace time.Duration) {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !t.settled(began, grace) {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// closeAfterDrain marks an HTTP/1 response "Connection: close" once the
// node drains, so the client's next request goes to a new connection, and
// so to another edge.
func (h *Handler) closeAfterDrain(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor == 1 && h.draining.Load() {
		w.Header().Set("Connection", "close")
	}
}
