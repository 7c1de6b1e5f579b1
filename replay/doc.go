// Package replay owns the wire forms of Fly's dynamic request routing: the
// fly-replay instruction an application returns (the header form
// "key=value;key=value" and the application/vnd.fly.replay+json body form),
// the fly-replay-src and fly-replay-failed headers the proxy adds to the
// requests it replays, the region aliases ("us", "eu", "any", ...) a replay
// may name, and the buffered request body (Body) that makes a replay
// possible, and the replay cache (Cache): instructions an edge remembers per
// host and path (fly-replay-cache) or per session (replay_cache rules), so
// later requests skip the source machine.
//
// ParseHeader and ParseJSON turn a response's instruction into a validated
// Instruction; every refusal is an *Error that matches ErrInvalid, which the
// proxy maps to Fly's code PA03. ExpandRegions turns a region list with
// aliases into region codes. Src and Failed format the headers for the
// replayed request.
//
// replay never routes or sends a request: it does not pick machines, follow
// the loop limit, apply fallbacks or decide what to cache; the proxy does,
// with the routing table. It knows nothing of gossip or sockets.
package replay
