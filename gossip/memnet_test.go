package gossip

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// memNet is an in-memory network for many nodes in one process, like
// memberlist's MockNetwork but usable with goleak and node restarts.
// MockNetwork delivers packets on unbuffered channels and its transports'
// Shutdown does nothing, so every packet sent to a node that has shut down
// blocks the sender's memberlist goroutine forever. Here each node has a
// buffered inbox that drops when full, as a UDP socket does; a node that
// is gone drops packets and refuses streams; Shutdown closes the node's
// streams.
type memNet struct {
	mu     sync.Mutex
	byAddr map[string]*memTransport
	port   int
}

func newMemNet() *memNet { return &memNet{byAddr: make(map[string]*memTransport)} }

// transport returns a transport at a new address.
func (m *memNet) transport() *memTransport {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.port++
	t := &memTransport{
		net:     m,
		addr:    "127.0.0.1:" + strconv.Itoa(m.port),
		packets: make(chan *memberlist.Packet, 1024),
		streams: make(chan net.Conn, 64),
		done:    make(chan struct{}),
		conns:   make(map[net.Conn]struct{}),
	}
	m.byAddr[t.addr] = t
	return t
}

func (m *memNet) lookup(addr string) *memTransport {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.byAddr[addr]
}

func (m *memNet) remove(t *memTransport) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.byAddr[t.addr] == t {
		delete(m.byAddr, t.addr)
	}
}

type memAddr string

func (a memAddr) Network() string { return "mem" }
func (a memAddr) String() string  { return string(a) }

// memTransport is one node's endpoint on a memNet.
type memTransport struct {
	net     *memNet
	addr    string
	packets chan *memberlist.Packet
	streams chan net.Conn
	done    chan struct{}
	once    sync.Once

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

var _ memberlist.NodeAwareTransport = (*memTransport)(nil)

func (t *memTransport) FinalAdvertiseAddr(string, int) (net.IP, int, error) {
	host, port, err := splitIPPort(t.addr)
	if err != nil {
		return nil, 0, err
	}
	return net.ParseIP(host), port, nil
}

func (t *memTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	return t.WriteToAddress(b, memberlist.Address{Addr: addr})
}

func (t *memTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	now := time.Now()
	dest := t.net.lookup(a.Addr)
	if dest == nil {
		return now, nil // lost, as UDP to a closed port
	}
	p := &memberlist.Packet{Buf: append([]byte(nil), b...), From: memAddr(t.addr), Timestamp: now}
	select {
	case dest.packets <- p:
	default: // inbox full: dropped
	}
	return now, nil
}

func (t *memTransport) PacketCh() <-chan *memberlist.Packet { return t.packets }
func (t *memTransport) StreamCh() <-chan net.Conn           { return t.streams }

func (t *memTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

func (t *memTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	dest := t.net.lookup(a.Addr)
	if dest == nil {
		return nil, fmt.Errorf("dial %s: connection refused", a.Addr)
	}
	local, remote := net.Pipe()
	rc := dest.track(remote)
	if rc == nil {
		local.Close()
		return nil, fmt.Errorf("dial %s: connection refused", a.Addr)
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case dest.streams <- rc:
	case <-dest.done:
		local.Close()
		rc.Close()
		return nil, fmt.Errorf("dial %s: connection refused", a.Addr)
	case <-timer.C:
		local.Close()
		rc.Close()
		return nil, fmt.Errorf("dial %s: timeout", a.Addr)
	}
	lc := t.track(local)
	if lc == nil {
		rc.Close()
		return nil, errors.New("transport is shut down")
	}
	return lc, nil
}

// track registers c to be closed at Shutdown; nil if already shut down.
func (t *memTransport) track(c net.Conn) net.Conn {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.conns == nil {
		c.Close()
		return nil
	}
	tc := &trackedConn{Conn: c, t: t}
	t.conns[tc] = struct{}{}
	return tc
}

func (t *memTransport) Shutdown() error {
	t.once.Do(func() {
		t.net.remove(t)
		close(t.done)
		t.mu.Lock()
		conns := t.conns
		t.conns = nil
		t.mu.Unlock()
		for c := range conns {
			c.(*trackedConn).Conn.Close()
		}
	})
	return nil
}

type trackedConn struct {
	net.Conn
	t *memTransport
}

func (c *trackedConn) Close() error {
	c.t.mu.Lock()
	if c.t.conns != nil {
		delete(c.t.conns, c)
	}
	c.t.mu.Unlock()
	return c.Conn.Close()
}
