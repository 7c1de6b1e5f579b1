package proxy

import "golang.org/x/sys/unix"

// alive reports whether an idle pooled connection can carry another request:
// the machine has not closed or reset it and has sent nothing unasked. It
// peeks at the socket without blocking (one recvfrom), so a connection the
// machine's keep-alive timeout closed is never handed a request.
func (c *upConn) alive() bool {
	if c.br.Buffered() > 0 {
		return false
	}
	if c.raw == nil {
		return true
	}
	c.peekOK = false
	if err := c.raw.Read(c.peekFn); err != nil {
		return false
	}
	return c.peekOK
}

func (c *upConn) peek(fd uintptr) bool {
	n, _, err := unix.Recvfrom(int(fd), c.peekBuf[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	c.peekOK = n < 0 && (err == unix.EAGAIN || err == unix.EWOULDBLOCK)
	return true // never wait for readiness
}
