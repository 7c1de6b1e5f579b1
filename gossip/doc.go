// Package gossip owns fleet membership and the dissemination of machine
// state between edge nodes, over hashicorp/memberlist.
//
// A [Node] is one edge's member of the fleet. It publishes the machines
// this edge owns ([Node.SetLocal]), learns every other owner's
// ([Node.Remote]), knows the members with their region, backhaul address
// and certificate fingerprint ([Node.Members]), and estimates round-trip
// times to them with Vivaldi network coordinates ([Node.RegionRTTs]).
// [Node.Changes] tells consumers when to read again.
//
// The package deals in plain data and imports nothing of godwit: routing
// and proxy consume it through this API. It does not route, dial the
// backhaul or verify certificates; it carries what those need.
//
// # Dissemination
//
// Each change of a machine is one small message (well under a packet)
// queued in a memberlist TransmitLimitedQueue, sent to GossipNodes random
// peers every GossipInterval and piggybacked on probes. memberlist does not
// relay user messages, so, as Serf does, every node re-queues each record
// version it had not seen: without that an update reaches only ~8–12
// nodes. For each (Owner, ID) the highest Version wins; versions come from
// the owner's hybrid clock, max(previous+1, UnixNano), so a restarted
// owner supersedes its previous run.
//
// Changes of a record's load Band alone are published at most every
// LoadInterval, coalesced (the first at once); any other change goes out
// at once, carrying the current Band.
//
// # Anti-entropy
//
// Every PushPullInterval (5s, scaled up by memberlist above 32 nodes) a
// node exchanges every record it knows, tombstones included, with a random
// peer; that repairs what gossip missed (a lost packet, a burst of joins,
// a partition), and a joining node gets the whole state in its join.
// Newer records learned from a periodic exchange are relayed as updates.
//
// # Owners that leave, die or restart
//
// When memberlist reports a member left or dead, its records turn
// unreachable at once (Record.Reachable), and Changes fires; they come
// back when it rejoins. After DeadOwnerTTL they are dropped, and copies at
// or below the highest version seen are refused until the owner is a live
// member again, so a stale copy cannot resurrect a dead owner's machines.
// Tombstones live DeadOwnerTTL from their owner's timestamp. The owner is
// the authority on its own records: a stray copy newer than what it
// published (from its previous run, or one that outlived its tombstone)
// is answered with a newer version of what the owner wants. A restarted
// node adopts the records its previous run published until its first
// SetLocal, which withdraws those no longer present.
//
// A background loop joins the configured peers, retrying with backoff (a
// node may start before its peers); afterwards, every ReconnectInterval,
// it tries a member believed dead, so that the two sides of a healed
// partition find each other again.
//
// # Security
//
// With a SecretKey, memberlist encrypts and authenticates every packet and
// stream (AES-GCM); nodes with another key cannot join. Without one, Start
// logs a warning: anyone who can reach the port can join and inject
// records. Every message from a peer is versioned and decoded
// defensively: a malformed one is logged at Debug, counted and dropped.
// Versions come from the owners' clocks, so a record claiming a version
// (or time) more than MaxClockSkew ahead of the receiver's clock is
// refused, counted (result future) and logged at most once a minute: a
// forged or corrupt copy at a version near 2^64 would otherwise pin the
// record, and an owner whose clock runs minutes ahead is told to fix it
// rather than silently winning every conflict.
//
// # Metrics
//
// With a Registerer, a Node registers
//
//	godwit_gossip_members{state}                  gauge, read at scrape time: alive, dead, left
//	godwit_gossip_state_propagation_seconds       histogram (native and classic buckets): age of each newer remote record version on arrival, by the owner's clock
//	godwit_gossip_messages_total{kind,result}     counter: kind update, state or leave; result published, relayed (sent), applied, stale, malformed, future (received)
//
// # Logs
//
// Membership changes at Info; memberlist's own lines with
// component=memberlist, its warnings and errors at Warn (rate-limited:
// peers can trigger them) and the rest at Debug.
package gossip
