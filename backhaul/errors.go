package backhaul

import (
	"errors"
	"fmt"
)

// Errors RoundTrip returns that callers branch on, matched with errors.Is.
var (
	// ErrPeerUnreachable means the request did not reach the peer: it
	// could not be dialled, refused this node's certificate, presented the
	// wrong one, or its connection was already closed or going away. The
	// caller can mark the peer down and send the same request to another
	// candidate at once.
	ErrPeerUnreachable = errors.New("backhaul: peer unreachable")

	// ErrConnectionLost means the connection to the peer failed after the
	// request was sent, so the peer may have acted on it. The caller should
	// mark the peer down, and repeat the request elsewhere only if that is
	// safe (for instance, a request that is idempotent).
	ErrConnectionLost = errors.New("backhaul: connection to peer lost")

	// ErrClosed is returned by RoundTrip after Client.Close and by Serve
	// after Server.Close.
	ErrClosed = errors.New("backhaul: closed")
)

// peerError is a failure of the connection to one peer: which peer, what
// it means for the request (kind, one of the sentinels above), and why.
type peerError struct {
	addr string
	kind error
	err  error
}

func (e *peerError) Error() string {
	if e.kind == ErrPeerUnreachable {
		return fmt.Sprintf("backhaul: peer %s unreachable: %v", e.addr, e.err)
	}
	return fmt.Sprintf("backhaul: peer %s: connection lost after the request was sent: %v", e.addr, e.err)
}

func (e *peerError) Unwrap() []error { return []error{e.kind, e.err} }

func unreachable(addr string, err error) error {
	return &peerError{addr: addr, kind: ErrPeerUnreachable, err: err}
}

func connectionLost(addr string, err error) error {
	return &peerError{addr: addr, kind: ErrConnectionLost, err: err}
}
