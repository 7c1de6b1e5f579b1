package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"sync"
	"syscall"
	"time"
)

// upstream is the keep-alive connection pool of one machine. It speaks
// HTTP/1.1 itself instead of going through http.Transport: a request is
// written and its response read on the handler's own goroutine, with no
// per-connection reader and writer goroutines to hand off to, which is most
// of the CPU a proxied request costs in http.Transport.
type upstream struct {
	addr        string
	dialer      *net.Dialer
	maxIdle     int
	idleTimeout time.Duration

	mu     sync.Mutex
	idle   []*upConn // LIFO: the most recently used connection is warmest
	closed bool
}

// upConn is one connection to a machine.
type upConn struct {
	up    *upstream
	nc    net.Conn
	raw   syscall.RawConn  // for the liveness peek; nil if unavailable
	lim   io.LimitedReader // nc, read through br; bounds a response head
	br    *bufio.Reader
	bw    *bufio.Writer
	since time.Time // when it went idle
	// bodyErr: reading the client's request body being written failed,
	// and badBody: because it was malformed (badBodyReader). Set by the
	// body writer, read once it has ended.
	bodyErr error
	badBody bool

	peekFn  func(fd uintptr) bool // c.peek, bound once so a check allocates nothing
	peekBuf [1]byte
	peekOK  bool
}

const upstreamBufSize = 8 << 10

// maxResponseHeadBytes bounds what the proxy reads of a machine's response
// head, 1xx responses included, so a machine cannot make it buffer without
// end.
const maxResponseHeadBytes = 1 << 20

func newUpstream(addr string, dialer *net.Dialer, maxIdle int, idleTimeout time.Duration) *upstream {
	return &upstream{addr: addr, dialer: dialer, maxIdle: maxIdle, idleTimeout: idleTimeout}
}

// freshIdle is how long a pooled connection may sit idle and still be
// handed to a retryable request without the liveness peek: a machine's
// keep-alive timeout is seconds, and the rare connection it closes sooner
// fails such a request before the machine read it, so the handler resends
// it on a new connection. Skipping the peek saves a syscall per request.
const freshIdle = time.Second

// get returns an idle connection that is still open, or nil. retryable
// says the caller can resend the request on a fresh connection if the
// machine closed this one before reading it.
func (u *upstream) get(now time.Time, retryable bool) *upConn {
	for {
		u.mu.Lock()
		n := len(u.idle)
		if n == 0 {
			u.mu.Unlock()
			return nil
		}
		c := u.idle[n-1]
		u.idle[n-1] = nil
		u.idle = u.idle[:n-1]
		u.mu.Unlock()
		idle := now.Sub(c.since)
		if idle < u.idleTimeout && ((retryable && idle < freshIdle && c.br.Buffered() == 0) || c.alive()) {
			return c
		}
		c.nc.Close()
	}
}

// dial opens a new connection to the machine.
func (u *upstream) dial(ctx context.Context) (*upConn, error) {
	nc, err := u.dialer.DialContext(ctx, "tcp", u.addr)
	if err != nil {
		return nil, err
	}
	c := &upConn{
		up:  u,
		nc:  nc,
		lim: io.LimitedReader{R: nc, N: math.MaxInt64},
		bw:  bufio.NewWriterSize(nc, upstreamBufSize),
	}
	c.br = bufio.NewReaderSize(&c.lim, upstreamBufSize)
	if sc, ok := nc.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			c.raw = raw
			c.peekFn = c.peek
		}
	}
	return c, nil
}

// put returns a connection whose last exchange completed cleanly to the pool.
func (u *upstream) put(c *upConn, now time.Time) {
	c.since = now
	u.mu.Lock()
	if u.closed || len(u.idle) >= u.maxIdle {
		u.mu.Unlock()
		c.nc.Close()
		return
	}
	u.idle = append(u.idle, c)
	u.mu.Unlock()
}

// closeIdle closes idle connections older than the idle timeout (all of
// them when all is set, which also stops the pool from keeping new ones).
func (u *upstream) closeIdle(now time.Time, all bool) {
	u.mu.Lock()
	if all {
		u.closed = true
	}
	drop := u.takeIdleLocked(now, all)
	u.mu.Unlock()
	closeAll(drop)
}

// dropIdle closes every idle connection; the pool keeps new ones.
func (u *upstream) dropIdle() {
	u.mu.Lock()
	drop := u.takeIdleLocked(time.Time{}, true)
	u.mu.Unlock()
	closeAll(drop)
}

// takeIdleLocked removes from the pool and returns the idle connections
// older than the idle timeout, or all of them. u.mu is held.
func (u *upstream) takeIdleLocked(now time.Time, all bool) []*upConn {
	keep := u.idle[:0]
	var drop []*upConn
	for _, c := range u.idle {
		if all || now.Sub(c.since) >= u.idleTimeout {
			drop = append(drop, c)
		} else {
			keep = append(keep, c)
		}
	}
	for i := len(keep); i < len(u.idle); i++ {
		u.idle[i] = nil
	}
	u.idle = keep
	return drop
}

func closeAll(cs []*upConn) {
	for _, c := range cs {
		c.nc.Close()
	}
}

func (u *upstream) idleCount() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.idle)
}

func (c *upConn) close() { c.nc.Close() }

func (c *upConn) String() string { return fmt.Sprintf("conn to %s", c.up.addr) }
