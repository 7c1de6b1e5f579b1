// Package routing owns the routing table: which machines each app has, in
// which region, how loaded and whether they can take traffic, and the pick
// that chooses one of them for a request.
//
// The pick follows Fly's documented rule: the nearest region that has a usable
// machine (started, passing its checks, below its hard limit) wins, so traffic
// leaves a region only when every machine there is unhealthy or at its hard
// limit. Within that region machines fall into Fly's three load bands (below
// soft limit, between soft and hard, at hard); the best non-empty band is
// chosen from, and inside it two random machines are compared on in-flight
// count (power of two choices) instead of Fly's random tie-break.
//
// A pick acquires a concurrency slot on the chosen machine atomically, so a
// machine's hard limit is never exceeded; Release returns the slot and hands
// it straight to the oldest request waiting in the app's FIFO queue.
//
// Each machine has a lifecycle State (started, starting, stopping,
// stopped, suspended, failed) that the autostart manager sets; only a
// started machine is picked. A stopping machine is cordoned: the pick skips
// it and TryAcquire fails on it while the requests it holds finish. State
// changes of this node's machines are signalled on LocalChanges, like
// health changes, so gossip publishes them.
//
// routing knows nothing of HTTP, sockets or gossip: the proxy asks it for a
// machine, the health checker and (later) gossip tell it about machines.
package routing
