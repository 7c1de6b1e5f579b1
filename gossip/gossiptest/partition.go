// Package gossiptest has test helpers for fleets of gossip nodes: a
// Partition that cuts a fleet in groups and heals it, applied by wrapping
// each node's memberlist transport (Config.Transport). It is for tests
// only; nothing in production imports it.
//
// It does not start nodes nor provide a network: wrap memberlist's
// NetTransport (real loopback sockets) or an in-memory transport.
package gossiptest

import (
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Partition drops packets and refuses streams between groups of
// addresses while it is on; switchable at runtime. The zero value is not
// usable: make one with NewPartition. Safe for concurrent use.
type Partition struct {
	mu    sync.RWMutex
	on    bool
	group map[string]int // address → group
}

// NewPartition returns a partition that is off and has no address in a
// group.
func NewPartition() *Partition { return &Partition{group: make(map[string]int)} }

// Assign puts addr (host:port, as memberlist addresses a node) in group.
// An address in no group is never cut off.
func (p *Partition) Assign(addr string, group int) {
	p.mu.Lock()
	p.group[addr] = group
	p.mu.Unlock()
}

// Set turns the cut on (true) or heals it (false).
func (p *Partition) Set(on bool) {
	p.mu.Lock()
	p.on = on
	p.mu.Unlock()
}

// Blocked reports whether traffic from one address to another is cut now:
// the partition is on and both are in groups, different ones.
func (p *Partition) Blocked(from, to string) bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if !p.on {
		return false
	}
	gf, okf := p.group[from]
	gt, okt := p.group[to]
	return okf && okt && gf != gt
}

// Wrap returns tr with the partition applied to everything it sends from
// self (tr's own address): packets to the other side are lost, streams
// refused. Wrap every node's transport to make the cut symmetric. The
// wrapper's Shutdown is tr's.
func (p *Partition) Wrap(tr memberlist.NodeAwareTransport, self string) memberlist.NodeAwareTransport {
	return &faultTransport{NodeAwareTransport: tr, self: self, p: p}
}

// faultTransport is a transport wrapped by Partition.Wrap.
type faultTransport struct {
	memberlist.NodeAwareTransport
	self string
	p    *Partition
}

func (f *faultTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	return f.WriteToAddress(b, memberlist.Address{Addr: addr})
}

func (f *faultTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	if f.p.Blocked(f.self, a.Addr) {
		return time.Now(), nil
	}
	return f.NodeAwareTransport.WriteToAddress(b, a)
}

func (f *faultTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return f.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

func (f *faultTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	if f.p.Blocked(f.self, a.Addr) {
		return nil, fmt.Errorf("dial %s: partitioned", a.Addr)
	}
	return f.NodeAwareTransport.DialAddressTimeout(a, timeout)
}
