//go:build !linux

package proxy

import (
	"errors"
	"net"
)

// udpBufferSizes is not implemented here: quic-go's advice (sysctl
// net.core.rmem_max) is for Linux; quic-go itself still logs its own.
func udpBufferSizes(*net.UDPConn) (rcv, snd int, err error) {
	return 0, 0, errors.ErrUnsupported
}
