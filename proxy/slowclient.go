package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"
)

// Slow and abusive clients.
//
// Each way a client can hold the node's resources without using them has a
// bound of its own, in configuration:
//
//   - a request head sent slowly (slowloris): proxy.read_header_timeout,
//     over HTTP/1 by net/http and for the TLS handshake by tlsListener;
//     an HTTP/2 connection with no complete stream is idle, closed after
//     proxy.idle_timeout;
//   - a request body sent slowly: proxy.body_read_timeout, the time
//     allowed between two reads of the body (idleBody); a long upload that
//     keeps moving is never cut;
//   - a response read slowly, or not at all: proxy.body_write_timeout,
//     the time one write to the client may take (countedConn.Write for
//     TCP connections, writeDeadline for HTTP/2 and HTTP/3 streams); the
//     machine's connection is released when it passes;
//   - idle connections: proxy.idle_timeout; connections in all, and new
//     ones in a flood: proxy.max_connections (connlimit.go).
//
// The two body timeouts are counted in godwit_client_timeouts_total and
// logged with the request.

// errBodyReadTimeout and errBodyWriteTimeout wrap the error of a client
// read or write that proxy.body_read_timeout or proxy.body_write_timeout
// ended.
var (
	errBodyReadTimeout  = errors.New("the client sent no request body for proxy.body_read_timeout")
	errBodyWriteTimeout = errors.New("the client read none of the response for proxy.body_write_timeout")
)

// Kinds of godwit_client_timeouts_total.
const (
	timeoutBodyRead  = "body_read"
	timeoutBodyWrite = "body_write"
)

// idleBody is a request body whose reads must each return within timeout:
// the read deadline of the client connection (or HTTP/2 or HTTP/3 stream)
// moves on with every read that returns bytes, and is cleared at the end
// of the body, so that it cannot hit net/http's background read of an
// HTTP/1 connection, which follows. Reads run on one goroutine at a time;
// timedOut may be called from any.
type idleBody struct {
	io.ReadCloser
	rc       *http.ResponseController
	timeout  time.Duration
	deadline time.Time // the one set last; zero: none
	expired  atomic.Bool
	due      atomic.Int64 // deadline in UnixNano, for other goroutines; 0: none
}

// newIdleBody wraps body, the request body of w's request; timeout must
// be positive.
func newIdleBody(w http.ResponseWriter, body io.ReadCloser, timeout time.Duration) *idleBody {
	b := &idleBody{ReadCloser: body, rc: http.NewResponseController(w), timeout: timeout}
	b.renew()
	return b
}

func (b *idleBody) renew() {
	b.deadline = time.Now().Add(b.timeout)
	if b.rc.SetReadDeadline(b.deadline) != nil {
		b.deadline = time.Time{} // not supported: no bound here
	}
	b.due.Store(unixNanoOrZero(b.deadline))
}

func unixNanoOrZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func (b *idleBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	switch {
	case err == io.EOF:
		if !b.deadline.IsZero() {
			_ = b.rc.SetReadDeadline(time.Time{})
			b.deadline = time.Time{}
			b.due.Store(0)
		}
	case err != nil:
		// Another deadline (unblockBodyRead's, one in the past) is not
		// the client's fault: only ours, once passed, is.
		if !b.deadline.IsZero() && errors.Is(err, os.ErrDeadlineExceeded) && !time.Now().Before(b.deadline) {
			b.expired.Store(true)
			err = fmt.Errorf("%w: %w", errBodyReadTimeout, err)
		}
	case n > 0 && !b.deadline.IsZero():
		b.renew()
	}
	return n, err
}

// timedOut reports whether proxy.body_read_timeout ended the body.
func (b *idleBody) timedOut() bool { return b != nil && b.expired.Load() }

// stalled reports whether the body timed out or its deadline has passed:
// for a goroutine other than the reader, which may learn that the request
// ended (its context, over HTTP/1, ends with the stalled read) before the
// reader has seen the timeout.
func (b *idleBody) stalled() bool {
	if b == nil {
		return false
	}
	d := b.due.Load()
	return b.expired.Load() || d != 0 && time.Now().UnixNano() >= d
}

// endOnBodyTimeout ends the exchange on c, the machine's connection, when
// err, the request body writer's, says the client's body stalled: the
// machine would otherwise wait for the rest of it, and the handler with
// it. (Over HTTP/1 the stalled read also cancels the request's context,
// which does the same; HTTP/2 and HTTP/3 fail only the stream's body.)
func endOnBodyTimeout(c *upConn, err error) error {
	if errors.Is(err, errBodyReadTimeout) {
		c.nc.SetDeadline(aLongTimeAgo)
	}
	return err
}

// bodyTimedOut records, once the request is over, which body timeout
// ended it, if any: the metric, and the error and code of its log line.
// A read timeout before the response started was answered 408 PL07
// already (fail).
func (h *Handler) bodyTimedOut(x *exchange, body *idleBody) {
	switch {
	case body.stalled():
		h.metrics.clientTimeouts.WithLabelValues(timeoutBodyRead).Inc()
		if !errors.Is(x.err, errBodyReadTimeout) {
			x.err = errBodyReadTimeout
		}
		if x.code == "" && (x.status == 0 || x.status == 499) {
			// The head never went out (HTTP/1: the stalled read ended
			// the connection's context first).
			x.code, x.status = CodeBodyReadTimeout, CodeBodyReadTimeout.Status()
		}
	case errors.Is(x.err, errBodyWriteTimeout):
		h.metrics.clientTimeouts.WithLabelValues(timeoutBodyWrite).Inc()
	}
}

// writeDeadline bounds each write of a response body to the client by
// proxy.body_write_timeout. Over HTTP/1 the client connection does
// (countedConn.Write: it covers whatever net/http writes, the final flush
// included); HTTP/2 and HTTP/3 streams, whose writes wait for flow
// control rather than the socket, get a stream write deadline before each
// write.
type writeDeadline struct {
	rc       *http.ResponseController // nil: HTTP/1, or none
	timeout  time.Duration
	deadline time.Time
}

func newWriteDeadline(w http.ResponseWriter, r *http.Request, timeout time.Duration) writeDeadline {
	if timeout <= 0 {
		return writeDeadline{}
	}
	wd := writeDeadline{timeout: timeout}
	if r.ProtoMajor >= 2 {
		wd.rc = http.NewResponseController(w)
	}
	return wd
}

// write writes p to w within the timeout. An error the timeout caused
// wraps errBodyWriteTimeout.
func (wd *writeDeadline) write(w http.ResponseWriter, p []byte) (int, error) {
	if wd.rc != nil {
		wd.deadline = time.Now().Add(wd.timeout)
		if wd.rc.SetWriteDeadline(wd.deadline) != nil {
			wd.rc, wd.deadline = nil, time.Time{}
		}
	}
	n, err := w.Write(p)
	if err != nil && wd.timeout > 0 {
		// HTTP/1: the connection's deadline, which only
		// countedConn.Write sets. HTTP/2 and HTTP/3: the stream's, whose
		// error says "stream closed" rather than its cause.
		if errors.Is(err, os.ErrDeadlineExceeded) || !wd.deadline.IsZero() && !time.Now().Before(wd.deadline) {
			err = fmt.Errorf("%w: %w", errBodyWriteTimeout, err)
		}
	}
	return n, err
}

// flush flushes w (streams of unknown length) within the timeout.
func (wd *writeDeadline) flush(rc *http.ResponseController) error {
	err := rc.Flush()
	if err != nil && wd.timeout > 0 && (errors.Is(err, os.ErrDeadlineExceeded) || !wd.deadline.IsZero() && !time.Now().Before(wd.deadline)) {
		err = fmt.Errorf("%w: %w", errBodyWriteTimeout, err)
	}
	return err
}

// Write writes p within the connection's write timeout (see
// proxy.body_write_timeout): a client that reads nothing for that long
// fails the write, and the connection with it.
func (c *countedConn) Write(p []byte) (int, error) {
	if c.writeTimeout > 0 {
		if err := c.Conn.SetWriteDeadline(time.Now().Add(c.writeTimeout)); err != nil {
			return 0, err
		}
	}
	return c.Conn.Write(p)
}

var _ net.Conn = (*countedConn)(nil)
