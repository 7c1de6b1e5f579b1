//go:build !linux

package proxy

// alive on systems without a non-blocking peek trusts the idle timeout.
func (c *upConn) alive() bool { return c.br.Buffered() == 0 }

func (c *upConn) peek(fd uintptr) bool { return true }
