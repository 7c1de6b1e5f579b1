package gossip

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/hashicorp/serf/coordinate"
)

// coords estimates round-trip times with Vivaldi network coordinates, as
// Serf does: each ping ack carries the acking node's coordinate, and each
// completed ping moves this node's coordinate to fit the measured RTT. The
// distance between two coordinates then estimates the RTT between any two
// nodes, including pairs that never pinged each other.
type coords struct {
	client *coordinate.Client
	dims   int

	mu    sync.Mutex
	peers map[string]*coordinate.Coordinate // latest coordinate of each peer
}

func newCoords() *coords {
	cfg := coordinate.DefaultConfig()
	client, err := coordinate.NewClient(cfg)
	if err != nil {
		panic(fmt.Sprintf("gossip: coordinate client with default config: %v", err)) // cannot happen
	}
	return &coords{client: client, dims: int(cfg.Dimensionality), peers: make(map[string]*coordinate.Coordinate)}
}

// payload encodes this node's coordinate for an ack.
func (c *coords) payload() []byte {
	return encodeCoord(c.client.GetCoordinate())
}

// observe feeds one completed ping of peer: its coordinate (from the ack
// payload) and the measured rtt.
func (c *coords) observe(peer string, payload []byte, rtt time.Duration) error {
	other, err := decodeCoord(payload, c.dims)
	if err != nil {
		return err
	}
	if _, err := c.client.Update(peer, other, rtt); err != nil {
		return err
	}
	c.set(peer, other)
	return nil
}

// set caches peer's coordinate, which must be valid and of c's dimension.
func (c *coords) set(peer string, co *coordinate.Coordinate) {
	c.mu.Lock()
	c.peers[peer] = co
	c.mu.Unlock()
}

// rtt estimates the RTT to peer; false when no coordinate of peer is known.
func (c *coords) rtt(peer string) (time.Duration, bool) {
	c.mu.Lock()
	co := c.peers[peer]
	c.mu.Unlock()
	if co == nil {
		return 0, false
	}
	return c.client.DistanceTo(co), true
}

// forget drops what is known of a departed peer.
func (c *coords) forget(peer string) {
	c.mu.Lock()
	delete(c.peers, peer)
	c.mu.Unlock()
	c.client.ForgetNode(peer)
}

// maxCoordSeconds bounds every component of a peer's coordinate: no
// real RTT is near it, and absurd values would skew this node's own.
const maxCoordSeconds = 1000

// encodeCoord encodes co: 1+1+8*(dims+3) bytes, 90 for Serf's 8 dimensions.
func encodeCoord(co *coordinate.Coordinate) []byte {
	b := make([]byte, 0, 2+8*(len(co.Vec)+3))
	b = append(b, wireVersion, byte(len(co.Vec)))
	for _, f := range append(co.Vec[:len(co.Vec):len(co.Vec)], co.Error, co.Adjustment, co.Height) {
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(f))
	}
	return b
}

// decodeCoord decodes a coordinate of dims dimensions; a coordinate of
// another dimension, with NaN or infinite components, or followed by
// extra bytes is an error (the coordinate library would panic on the
// first and be poisoned by the second).
func decodeCoord(buf []byte, dims int) (*coordinate.Coordinate, error) {
	if len(buf) < 2 {
		return nil, errTruncated
	}
	if buf[0] != wireVersion {
		return nil, fmt.Errorf("%w %d", errBadVersion, buf[0])
	}
	if int(buf[1]) != dims {
		return nil, fmt.Errorf("coordinate of %d dimensions, want %d", buf[1], dims)
	}
	d := decoder{buf: buf[2:]}
	co := &coordinate.Coordinate{Vec: make([]float64, dims)}
	for i := range co.Vec {
		co.Vec[i] = d.float()
	}
	co.Error, co.Adjustment, co.Height = d.float(), d.float(), d.float()
	if d.err != nil {
		return nil, d.err
	}
	if len(d.buf) != 0 {
		return nil, fmt.Errorf("%d bytes after the coordinate", len(d.buf))
	}
	if !co.IsValid() {
		return nil, errors.New("coordinate has NaN or infinite components")
	}
	for _, f := range append(co.Vec, co.Error, co.Adjustment, co.Height) {
		if math.Abs(f) > maxCoordSeconds {
			return nil, errors.New("coordinate component out of range")
		}
	}
	if co.Error < 0 || co.Height < 0 {
		return nil, errors.New("coordinate with negative error or height")
	}
	return co, nil
}
