package backhaul

import (
	"crypto/x509"
	"fmt"
	"log/slog"
	"time"
)

// Protocols a Server and Client speak; both ends must use the same one.
const (
	ProtocolQUIC = "quic" // HTTP/3 over QUIC (UDP): the default
	ProtocolH2   = "h2"   // HTTP/2 over TLS over TCP: for comparison
	ProtocolMux  = "mux"  // godwit's own streams over TLS over TCP (mux.go)
)

// Options tune a Server or a Client. The zero value is ready to use: QUIC,
// pinned fingerprints, the default timeouts, no logging.
type Options struct {
	// Protocol is ProtocolQUIC (also when empty) or ProtocolH2.
	Protocol string

	// CAPool, if set, admits peers whose certificate chains to it (with
	// the server or client auth usage), instead of by fingerprint: Pins
	// and the peerFP of RoundTrip are then ignored.
	CAPool *x509.CertPool

	// Delay, if set, simulates distance for tests and the demo: the client
	// waits Delay(peerAddr) before sending each request, as if it were one
	// round trip. Nil or a non-positive result: no delay.
	Delay func(peerAddr string) time.Duration

	// IdleTimeout is how long a connection may go without hearing from the
	// peer before it is considered dead and closed. Keep-alives are sent
	// every third of it, so a live idle connection stays open and a dead
	// peer is noticed within IdleTimeout. Zero: 5s.
	IdleTimeout time.Duration

	// HandshakeTimeout bounds dialling a peer, TLS handshake included,
	// and so how long RoundTrip takes to report an unreachable peer. Zero:
	// 3s.
	HandshakeTimeout time.Duration

	// DrainTimeout is how long a Server whose Serve context ended (or that
	// was closed) lets requests in flight finish before it cuts them off.
	// Zero: 2s.
	DrainTimeout time.Duration

	// Log receives connection-level events (refused peers, failed
	// connections); never one line per request. Nil: discard.
	Log *slog.Logger
}

// Defaults of Options.
const (
	DefaultIdleTimeout      = 5 * time.Second
	DefaultHandshakeTimeout = 3 * time.Second
	DefaultDrainTimeout     = 2 * time.Second
)

// maxStreams bounds the concurrent requests one peer may have open on a
// connection. An edge forwards all its traffic for a peer's machines over
// one connection, so this is far above the library defaults (100 for
// QUIC, 250 for HTTP/2); a request over it waits for a free stream.
const maxStreams = 1000

// withDefaults returns o with every zero field set to its default, or an
// error if the protocol is unknown.
func (o Options) withDefaults() (Options, error) {
	switch o.Protocol {
	case "":
		o.Protocol = ProtocolQUIC
	case ProtocolQUIC, ProtocolH2, ProtocolMux:
	default:
		return o, fmt.Errorf("backhaul: unknown protocol %q (want %q, %q or %q)", o.Protocol, ProtocolMux, ProtocolH2, ProtocolQUIC)
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if o.DrainTimeout <= 0 {
		o.DrainTimeout = DefaultDrainTimeout
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return o, nil
}

// keepAlive is the interval of keep-alive pings: three chances to hear
// from a live peer before IdleTimeout declares it dead.
func (o *Options) keepAlive() time.Duration { return o.IdleTimeout / 3 }
