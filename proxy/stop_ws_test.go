package proxy

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// wsFrame encodes one WebSocket frame with FIN set: a server's (unmasked)
// or, masked, a client's with a fixed key.
func wsFrame(opcode byte, payload []byte, masked bool) []byte {
	b := []byte{0x80 | opcode}
	mask := byte(0)
	if masked {
		mask = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		b = append(b, mask|byte(n))
	case n <= 0xffff:
		b = append(b, mask|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, mask|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	if !masked {
		return append(b, payload...)
	}
	key := [4]byte{1, 2, 3, 4}
	b = append(b, key[:]...)
	for i, c := range payload {
		b = append(b, c^key[i%4])
	}
	return b
}

// cat concatenates byte slices.
func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// TestWSRelayGoAway: the close frame goes out at the first frame boundary
// at or after the goAway, whatever the writes' split, and the machine's
// bytes after it are dropped.
func TestWSRelayGoAway(t *testing.T) {
	text := wsFrame(0x1, []byte("hello"), false)
	mid := wsFrame(0x2, bytes.Repeat([]byte("m"), 300), false)    // 16-bit length
	big := wsFrame(0x2, bytes.Repeat([]byte("b"), 70000), false)  // 64-bit length
	masked := wsFrame(0x1, bytes.Repeat([]byte("k"), 130), true)  // a client's, with a key
	empty := wsFrame(0x9, nil, false)                             // a ping, no payload
	machineClose := wsFrame(0x8, []byte{0x03, 0xe8}, false)       // the machine's own close
	after := wsFrame(0x1, []byte("after the close frame"), false) // dropped
	tests := []struct {
		name   string
		writes [][]byte // the machine's writes
		at     int      // goAway after this many writes
		want   []byte   // what the client gets
	}{
		{"before any frame", [][]byte{after}, 0, []byte(wsGoingAway)},
		{"at a boundary", [][]byte{text, after}, 1, cat(text, []byte(wsGoingAway))},
		{"inside a header", [][]byte{text, mid[:1], mid[1:3], cat(mid[3:], after)}, 2, cat(text, mid, []byte(wsGoingAway))},
		{"inside a 16-bit payload", [][]byte{mid[:100], mid[100:]}, 1, cat(mid, []byte(wsGoingAway))},
		{"inside a 64-bit payload", [][]byte{big[:5], big[5:40000], cat(big[40000:], after)}, 2, cat(big, []byte(wsGoingAway))},
		{"inside a masked frame", [][]byte{masked[:7], cat(masked[7:], after)}, 1, cat(masked, []byte(wsGoingAway))},
		{"after a frame without payload", [][]byte{cat(text, empty[:1]), cat(empty[1:], after)}, 1, cat(text, empty, []byte(wsGoingAway))},
		{"frames in one write", [][]byte{cat(text[:2]), cat(text[2:], mid, empty, after)}, 1, cat(text, []byte(wsGoingAway))},
		{"the machine closed first", [][]byte{machineClose, after}, 1, machineClose},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			r := newWSRelay(&out, nil)
			for i, w := range tt.writes {
				if i == tt.at {
					r.goAway.Store(true)
					r.closeAtBoundary()
				}
				if n, err := r.Write(w); n != len(w) || err != nil {
					t.Fatalf("write %d: got %d, %v; want %d, nil", i, n, err, len(w))
				}
			}
			if tt.at == len(tt.writes) {
				r.goAway.Store(true)
				r.closeAtBoundary()
			}
			if got := out.Bytes(); !bytes.Equal(got, tt.want) {
				t.Errorf("client got %d bytes ending %q, want %d bytes ending %q", len(got), tail(got), len(tt.want), tail(tt.want))
			}
		})
	}
}

func tail(b []byte) []byte { return b[max(0, len(b)-24):] }

// FuzzWSFrames: wsFrames finds the same boundaries whatever the split of
// the bytes into writes.
func FuzzWSFrames(f *testing.F) {
	f.Add(cat(wsFrame(0x1, []byte("hi"), false), wsFrame(0x2, make([]byte, 300), true)), uint16(3))
	f.Add(wsFrame(0x2, make([]byte, 70000), false), uint16(9))
	f.Add([]byte{0x81, 0x7f, 0, 0, 0, 0, 0, 0, 0, 1, 'x'}, uint16(1))
	f.Fuzz(func(t *testing.T, data []byte, step uint16) {
		whole := boundaries(data, len(data)+1)
		split := boundaries(data, int(step)%17+1)
		if fmt.Sprint(whole) != fmt.Sprint(split) {
			t.Errorf("boundaries of %x: in one write %v, in writes of %d bytes %v", data, whole, int(step)%17+1, split)
		}
	})
}

// boundaries returns the offsets in data at which frames end, fed to
// wsFrames in writes of at most step bytes.
func boundaries(data []byte, step int) []int {
	var f wsFrames
	var got []int
	for off := 0; off < len(data); {
		chunk := data[off:min(len(data), off+step)]
		for len(chunk) > 0 {
			n := f.advance(chunk)
			off += n
			chunk = chunk[n:]
			if f.boundary() {
				got = append(got, off)
			}
		}
	}
	return got
}

// wsMachine is a raw machine that answers one upgrade with 101 (Upgrade as
// asked), writes first, waits for the test's go-ahead (more), writes then,
// and reports when the proxy closed its side (closed).
type wsMachine struct {
	*rawMachine
	first, then []byte
	more        chan struct{}
	closed      chan struct{}
}

func startWSMachine(t *testing.T, first, then []byte) *wsMachine {
	m := &wsMachine{first: first, then: then, more: make(chan struct{}), closed: make(chan struct{})}
	quit := make(chan struct{})
	m.rawMachine = startRawMachine(t, func(_ int64, c net.Conn) {
		br := bufio.NewReader(c)
		req, err := readRequest(br)
		if err != nil {
			return
		}
		fmt.Fprintf(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\n\r\n", req.Header.Get("Upgrade"))
		c.Write(m.first)
		select {
		case <-m.more:
		case <-quit:
			return
		}
		c.Write(m.then)
		io.Copy(io.Discard, br) // until the proxy closes its side
		close(m.closed)
	})
	t.Cleanup(func() { close(quit) }) // before the machine's cleanup waits for serve
	return m
}

// upgradeTo asks p for an upgrade to protocol and returns the client's
// connection and reader after the 101.
func upgradeTo(t *testing.T, addr, protocol string) (net.Conn, *bufio.Reader) {
	t.Helper()
	nc := dialProxy(t, addr)
	fmt.Fprintf(nc, "GET /ws HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: %s\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", webHost, protocol)
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade to %s: got %v, error %v; want 101", protocol, resp, err)
	}
	return nc, br
}

// readExactly reads len(want) bytes and checks them.
func readExactly(t *testing.T, br *bufio.Reader, want []byte, what string) {
	t.Helper()
	got := make([]byte, len(want))
	if n, err := io.ReadFull(br, got); err != nil {
		t.Fatalf("%s: read %d of %d bytes (%q), error %v", what, n, len(want), tail(got[:n]), err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: got %q, want %q", what, tail(got), tail(want))
	}
}

// TestGoAwayLocal: a machine about to stop sends the WebSocket clients of
// its tunnels a close frame (1001) after its last complete frame, then the
// tunnel closes; other upgrades are just closed.
func TestGoAwayLocal(t *testing.T) {
	frame := wsFrame(0x2, bytes.Repeat([]byte("p"), 1000), false)
	after := wsFrame(0x1, []byte("never seen"), false)
	tests := []struct {
		name        string
		protocol    string
		first, then []byte // the machine's writes, before and after the goAway
		want        []byte // what the client reads after first, before EOF
		clientClose bool   // the client half-closes once it has the close frame
	}{
		{"websocket, machine idle", "websocket", frame, after, []byte(wsGoingAway), false},
		{"websocket, inside a frame", "websocket", frame[:500], cat(frame[500:], after), cat(frame[500:], []byte(wsGoingAway)), false},
		{"websocket, the client closes", "websocket", frame[:3], cat(frame[3:], after), cat(frame[3:], []byte(wsGoingAway)), true},
		{"other protocol", "x-echo", []byte("hello\n"), []byte("never seen\n"), nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := startWSMachine(t, tt.first, tt.then)
			p := startProxy(t, oneApp("", []string{m.addr}))
			nc, br := upgradeTo(t, p.httpAddr, tt.protocol)
			readExactly(t, br, tt.first, "the machine's bytes before the stop")

			p.srv.handler.goAwayTunnels("m1")
			close(m.more)
			start := time.Now()
			readExactly(t, br, tt.want, "the rest of the frame, then the close frame")
			if tt.clientClose {
				nc.(*net.TCPConn).CloseWrite()
			}
			wantEOF(t, nc, br, 5*time.Second, "after the close frame")
			if tt.clientClose && time.Since(start) >= goAwayGrace {
				t.Errorf("tunnel closed %v after the goAway, want less than the grace (%v): the client had closed", time.Since(start), goAwayGrace)
			}
			select {
			case <-m.closed:
			case <-time.After(10 * time.Second):
				t.Fatal("the machine's side of the tunnel is still open 10 s after the goAway")
			}
			eventually(t, 10*time.Second, "no tunnel left", func() bool { return p.srv.handler.tunnels.count() == 0 })
		})
	}
}

// TestGoAwayAdminStop: an admin stop sends the clients of the machine's
// WebSocket tunnels away before its drain, which does not wait for the
// drain timeout then. The none driver cannot stop the machine: the stop
// fails after the drain, which is enough here.
func TestGoAwayAdminStop(t *testing.T) {
	frame := wsFrame(0x1, []byte("last words"), false)
	m := startWSMachine(t, frame[:4], frame[4:])
	p := startProxy(t, oneApp("", []string{m.addr})+"[autostart]\ndrain_timeout = \"30s\"\n")
	nc, br := upgradeTo(t, p.httpAddr, "websocket")
	readExactly(t, br, frame[:4], "the start of the machine's frame")

	stopped := make(chan error, 1)
	start := time.Now()
	go func() {
		resp, err := adminClient.Post("http://"+p.adminAddr+"/v1/apps/web/machines/m1/stop", "", nil)
		if err == nil {
			resp.Body.Close()
		}
		stopped <- err
	}()
	eventually(t, 10*time.Second, "m1 stopping", func() bool {
		return p.machineStatus(t, "m1").State == "stopping"
	})
	close(m.more)
	readExactly(t, br, cat(frame[4:], []byte(wsGoingAway)), "the rest of the frame, then the close frame")
	wantEOF(t, nc, br, 5*time.Second, "after the close frame")
	if err := <-stopped; err != nil {
		t.Fatalf("admin stop: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("admin stop took %v, want well under the drain timeout (30 s): the tunnel held the drain", d)
	}
}

// TestGoAwayFleet: a machine's owner sends away the WebSocket clients of
// tunnels accepted by another edge; the close frame travels through the
// backhaul like the machine's bytes.
func TestGoAwayFleet(t *testing.T) {
	frame := wsFrame(0x2, bytes.Repeat([]byte("f"), 5000), false)
	after := wsFrame(0x1, []byte("never seen"), false)
	m := startWSMachine(t, frame[:2000], cat(frame[2000:], after))
	owner := startEdge(t, "edge-cdg", "cdg", "", ownedMachine("m-cdg", "cdg", m.addr))
	a := startEdge(t, "edge-iad", "iad", owner.srv.GossipAddr(), "")
	routable(t, a, "m-cdg")

	nc, br := upgradeTo(t, a.httpAddr, "websocket")
	readExactly(t, br, frame[:2000], "the machine's bytes before the stop")
	if n := owner.srv.handler.tunnels.count(); n != 1 {
		t.Fatalf("owner's tunnels: got %d, want 1", n)
	}
	a.srv.handler.goAwayTunnels("m-cdg") // not the accepting edge's to stop: nothing happens
	owner.srv.handler.goAwayTunnels("m-cdg")
	close(m.more)
	readExactly(t, br, cat(frame[2000:], []byte(wsGoingAway)), "the rest of the frame, then the close frame")
	wantEOF(t, nc, br, 5*time.Second, "after the close frame")
	noTunnels(t, owner, "m-cdg", a)
}
