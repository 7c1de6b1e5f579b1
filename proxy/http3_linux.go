package proxy

import (
	"net"

	"golang.org/x/sys/unix"
)

// udpBufferSizes returns the receive and send buffer sizes of c as
// getsockopt reports them (Linux reports twice what was set, its
// bookkeeping included; quic-go compares the same numbers).
func udpBufferSizes(c *net.UDPConn) (rcv, snd int, err error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	var rerr, serr error
	if err := raw.Control(func(fd uintptr) {
		rcv, rerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF)
		snd, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF)
	}); err != nil {
		return 0, 0, err
	}
	if rerr != nil {
		return 0, 0, rerr
	}
	return rcv, snd, serr
}
