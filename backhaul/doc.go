// Package backhaul is the transport between edge nodes: an edge that
// accepted a request for a machine another edge owns sends it to that
// owner here, and the owner's Server hands it to a local http.Handler and
// streams the response back.
//
// The default protocol is HTTP/3 over QUIC; HTTP/2 over TLS over TCP is
// kept for comparison ("h2"). Both are mutually authenticated: every node
// has a self-signed Identity, and a peer is admitted by the fingerprint of
// its certificate, which gossip publishes (Pins on the server side, the
// expected fingerprint on the client side), or by an operator CA.
//
// It owns connections: one multiplexed connection per peer, dialled on
// first use and redialled after it fails, keep-alives that notice a dead
// peer within seconds, and errors that say whether a request can be tried
// on another peer (ErrPeerUnreachable). It does not route, pick owners or
// rewrite requests (package proxy), nor learn fingerprints (gossip).
package backhaul
