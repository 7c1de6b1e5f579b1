package proxy

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// upgradeType returns the protocol an HTTP/1.1 request asks to switch to
// (Connection: upgrade plus Upgrade: websocket, say), or "".
func upgradeType(r *http.Request) string {
	if r.ProtoMajor != 1 {
		return ""
	}
	up := r.Header.Get("Upgrade")
	if up == "" || !connectionListed(r.Header["Connection"], "upgrade") {
		return ""
	}
	return up
}

// tunnels tracks the two ends of every tunnel, so that shutdown can close
// them and wait for their handlers: the HTTP server forgets a connection
// once it is hijacked, and the backhaul's drain would wait for a tunnel
// through it. The ends are the client's hijacked connection and the
// machine's, or, through the backhaul, the client's connection and the
// stream to the owner (on the accepting edge) or the stream from the
// accepting edge and the machine's connection (on the owner). Tunnels to
// this node's machines are known by machine, so that a machine about to
// stop can send its clients away first (goAway).
type tunnels struct {
	mu    sync.Mutex
	conns map[*tunnel]struct{}
	shut  bool
	wg    sync.WaitGroup // handlers between start and done
}

// tunnel is one open tunnel. Its handler registers it with tunnels.add
// and, once both directions have ended, unregisters it with
// tunnels.remove, which waits for its goAway.
type tunnel struct {
	client  io.Closer // the client's side
	machine io.Closer // the machine's side
	// id is the machine's when it is this node's (a local or owner-side
	// tunnel); "" on an accepting edge, whose machine's owner sends its
	// clients away.
	id string
	// ws relays the machine's bytes of a WebSocket tunnel to the client;
	// nil for other protocols, which goAway just closes.
	ws *wsRelay
	// clientEnd is closed once the client→machine direction has ended.
	clientEnd <-chan struct{}

	goingAway bool           // goAway has started for it; under tunnels.mu
	ended     chan struct{}  // closed by tunnels.remove
	wg        sync.WaitGroup // its goAway goroutine
}

func newTunnel(client, machine io.Closer, id string, ws *wsRelay, clientEnd <-chan struct{}) *tunnel {
	return &tunnel{client: client, machine: machine, id: id, ws: ws, clientEnd: clientEnd, ended: make(chan struct{})}
}

// close closes both ends, which ends the handler's copies.
func (tn *tunnel) close() {
	tn.client.Close()
	tn.machine.Close()
}

// start counts a handler about to hijack its connection for a tunnel;
// false means the node is shutting down. After a true start the handler
// must call done once it has finished.
func (t *tunnels) start() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.shut {
		return false
	}
	t.wg.Add(1)
	return true
}

func (t *tunnels) done() { t.wg.Done() }

// add registers a started tunnel; false means closeAll has run already
// and the caller must close its ends itself.
func (t *tunnels) add(tn *tunnel) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.shut {
		return false
	}
	if t.conns == nil {
		t.conns = make(map[*tunnel]struct{})
	}
	t.conns[tn] = struct{}{}
	return true
}

// remove unregisters tn once its copies have ended and waits for its
// goAway, if one started.
func (t *tunnels) remove(tn *tunnel) {
	t.mu.Lock()
	delete(t.conns, tn)
	t.mu.Unlock()
	close(tn.ended)
	tn.wg.Wait() // no goAway starts now: tn is not in conns
}

// closeAll closes both ends of every tunnel and refuses new ones.
func (t *tunnels) closeAll() {
	t.mu.Lock()
	t.shut = true
	conns := t.conns
	t.conns = nil
	t.mu.Unlock()
	for tn := range conns {
		tn.close()
	}
}

// wait returns once every started tunnel's handler has finished. Call it
// after closeAll.
func (t *tunnels) wait() { t.wg.Wait() }

func (t *tunnels) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.conns)
}

// goAwayGrace is how long a WebSocket client told to go away (a close
// frame) has to close its side before goAway closes the tunnel.
const goAwayGrace = time.Second

// goAway ends every tunnel to machine id, which is about to stop or
// suspend, so that its clients reconnect rather than hang: a WebSocket
// client gets a close frame (1001, going away) at the next boundary
// between the machine's frames, then goAwayGrace to close its side
// before the tunnel is closed; a tunnel of any other protocol is closed at
// once. It does not block on a tunnel's I/O: each WebSocket tunnel's close
// frame and grace run in a goroutine its handler waits for.
func (t *tunnels) goAway(id string) {
	var cut []*tunnel
	t.mu.Lock()
	for tn := range t.conns {
		if tn.id != id || tn.goingAway {
			continue
		}
		tn.goingAway = true
		if tn.ws == nil {
			cut = append(cut, tn)
			continue
		}
		tn.ws.goAway.Store(true) // the relay's next write sees it
		tn.wg.Add(1)
		go tn.goAway(goAwayGrace)
	}
	t.mu.Unlock()
	for _, tn := range cut {
		tn.close()
	}
}

// goAway sends the client of a WebSocket tunnel away: the close frame now
// if the machine's bytes are at a frame boundary (else the relay sends it
// at the next one), then the tunnel is closed once the client's side has
// ended or grace has passed, whichever is first. It returns at once if the
// tunnel ends by itself meanwhile.
func (tn *tunnel) goAway(grace time.Duration) {
	defer tn.wg.Done()
	fired := make(chan struct{})
	timer := time.AfterFunc(grace, func() {
		defer close(fired)
		tn.close() // also ends a write to a client that does not read
	})
	tn.ws.closeAtBoundary()
	select {
	case <-fired:
		return
	case <-tn.clientEnd:
		tn.close()
	case <-tn.ended:
	}
	if !timer.Stop() {
		<-fired
	}
}

// goAwayTunnels is the autostart Manager's BeforeStop: it sends away the
// clients of every tunnel to machine id (tunnels.goAway), local or from
// another edge, before the machine's requests are drained.
func (h *Handler) goAwayTunnels(id string) { h.tunnels.goAway(id) }

// wsGoingAway is a WebSocket close frame from a server (unmasked): FIN,
// opcode 0x8, a 2-byte payload with status 1001, going away (RFC 6455,
// sections 5.5.1 and 7.4.1).
const wsGoingAway = "\x88\x02\x03\xe9"

// wsRelay writes the machine's bytes of a WebSocket tunnel to the client,
// following the frames they make (wsFrames), so that a close frame can be
// put between two of them: once goAway is set, the close frame goes out
// at the next frame boundary and the machine's bytes after it are dropped
// (an endpoint sends no data after its close frame). Writes are
// serialized by mu, the relay's and closeAtBoundary's.
type wsRelay struct {
	w     io.Writer
	flush func() error // after each write; nil for none

	goAway atomic.Bool // a close frame is wanted

	mu     sync.Mutex
	frames wsFrames
	sent   bool // the close frame went out (or the machine's did): drop the rest
}

func newWSRelay(w io.Writer, flush func() error) *wsRelay {
	return &wsRelay{w: w, flush: flush}
}

// Write passes p on to the client, cut at the first frame boundary when a
// close frame is wanted. It reports len(p) for the bytes it drops.
func (r *wsRelay) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sent {
		return len(p), nil
	}
	n := len(p)
	if r.goAway.Load() {
		n = 0
		if !r.frames.boundary() {
			n = r.frames.advance(p) // to the end of the frame, or all of p
		}
	} else {
		for q := p; len(q) > 0; {
			q = q[r.frames.advance(q):]
		}
	}
	if n > 0 {
		if err := r.write(p[:n]); err != nil {
			return 0, err
		}
	}
	if r.goAway.Load() && r.frames.boundary() {
		r.sendCloseLocked()
	}
	return len(p), nil
}

func (r *wsRelay) write(p []byte) error {
	if _, err := r.w.Write(p); err != nil {
		return err
	}
	if r.flush != nil {
		return r.flush()
	}
	return nil
}

// closeAtBoundary sends the close frame if the machine's bytes so far end
// a frame; otherwise Write sends it once one does.
func (r *wsRelay) closeAtBoundary() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.sent && r.frames.boundary() {
		r.sendCloseLocked()
	}
}

func (r *wsRelay) sendCloseLocked() {
	r.sent = true
	if r.frames.closeSeen {
		return // the machine sent its close frame already
	}
	_ = r.write([]byte(wsGoingAway)) // a failure ends the relay's next write
}

// wsFrames follows the frame boundaries of one direction of a WebSocket
// connection (RFC 6455, section 5.2) from the frame headers alone: 2 to 14
// bytes (FIN, RSV and opcode; mask bit and a 7-bit length, extended to 16
// or 64 bits; a 4-byte masking key if masked), then the payload, which it
// skips. It does no I/O. The zero value is at the start of a connection.
type wsFrames struct {
	hdr       [14]byte
	n         int    // bytes of the current header in hdr
	left      uint64 // payload bytes of the current frame still to come
	closeSeen bool   // a close frame (opcode 0x8) has begun
}

// boundary reports whether the bytes so far end a frame (or none came).
func (f *wsFrames) boundary() bool { return f.n == 0 && f.left == 0 }

// advance takes the bytes of p up to the end of the current frame (from
// the start of the next one if f is at a boundary) and returns how many it
// took: len(p) if the frame does not end within p.
func (f *wsFrames) advance(p []byte) int {
	i := 0
	for i < len(p) {
		if f.left > 0 {
			k := uint64(len(p) - i)
			if f.left <= k {
				i += int(f.left)
				f.left = 0
				return i
			}
			f.left -= k
			return len(p)
		}
		f.hdr[f.n] = p[i]
		f.n++
		i++
		if f.n < f.headerLen() {
			continue
		}
		f.left = f.payloadLen()
		if f.hdr[0]&0x0f == 0x8 {
			f.closeSeen = true
		}
		f.n = 0
		if f.left == 0 {
			return i
		}
	}
	return i
}

// headerLen is the length of the current frame's header, as far as the
// bytes held tell.
func (f *wsFrames) headerLen() int {
	if f.n < 2 {
		return 2
	}
	l := 2
	switch f.hdr[1] & 0x7f {
	case 126:
		l += 2
	case 127:
		l += 8
	}
	if f.hdr[1]&0x80 != 0 {
		l += 4 // masking key
	}
	return l
}

// payloadLen is the payload length of the complete header in hdr.
func (f *wsFrames) payloadLen() uint64 {
	switch l := f.hdr[1] & 0x7f; l {
	case 126:
		return uint64(binary.BigEndian.Uint16(f.hdr[2:4]))
	case 127:
		return binary.BigEndian.Uint64(f.hdr[2:10])
	default:
		return uint64(l)
	}
}

// isWebSocket reports whether a tunnel's protocol, its Upgrade value, is
// WebSocket.
func isWebSocket(upgrade string) bool { return strings.EqualFold(upgrade, "websocket") }

// switchProtocols splices client and machine together after the machine
// answered an upgrade request with 101, until either side closes. The
// request reached this machine through forward, so an upgrade answered
// with fly-replay (and any other status) was handled like any request:
// only the final machine's 101 makes a tunnel. c is closed on return.
//
// A tunnel may cross the backhaul: c is nil when the machine is another
// edge's (remoteTunnel), and on that edge, its owner, the client's side is
// the backhaul stream (ownerTunnel).
func (h *Handler) switchProtocols(w http.ResponseWriter, r *http.Request, x *exchange, fi *forwardInfo, c *upConn, resp *http.Response, bodyDone <-chan error, unwatch func() bool) {
	if c == nil {
		h.remoteTunnel(w, r, x, fi, resp)
		return
	}
	ctx := r.Context()
	defer c.close()
	if bodyDone != nil {
		defer stopBodyWrite(w, c, bodyDone)
	}
	defer unwatch() // until then, the end of ctx fails every read and write on c
	if !h.startTunnel(w, x, fi, resp) {
		return
	}
	if x.owner {
		h.ownerTunnel(w, x, c, resp)
		return
	}
	client, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		h.fail(w, x, CodeUpgradeRejected, "this connection cannot be upgraded", err)
		return
	}
	defer client.Close()
	if sc := smuggleConnFrom(ctx); sc != nil {
		sc.stop() // no more HTTP/1 on it
	}
	done := make(chan struct{}) // the client→machine direction ended
	var ws *wsRelay
	if isWebSocket(fi.upgrade) {
		ws = newWSRelay(onlyWriter{client}, nil)
	}
	tn := newTunnel(client, c.nc, x.machine.ID, ws, done)
	if !h.tunnels.add(tn) {
		return // shutting down
	}
	defer h.tunnels.remove(tn)
	x.status = http.StatusSwitchingProtocols

	// The 101 head goes out as the machine wrote it, plus Via and our id.
	resp.Header[hdrVia] = appendVia(resp.Header[hdrVia], fi.via)
	resp.Header[hdrRequestIDResp] = x.idHeader
	resp.Body = nil
	if err := resp.Write(brw); err != nil {
		return
	}
	if err := brw.Flush(); err != nil {
		return
	}
	client.SetDeadline(time.Time{})

	// Bytes either side sent early may already sit in the bufio readers.
	fromClient := clientReader(client, brw.Reader)
	fromMachine := bufferedConn{Conn: c.nc, r: c.br}
	go func() {
		defer close(done)
		if _, err := splice(c.nc, fromClient); err != nil {
			// A side failed rather than ended: no half-close to wait on.
			client.Close()
			c.close()
		}
	}()
	var toClient io.Writer = onlyWriter{client}
	if ws != nil {
		toClient = ws // a close frame may go out between the machine's frames
	}
	n, _ := spliceVia(client, toClient, fromMachine)
	x.bytesOut = n
	// One direction ended: end the other too, and wait for it.
	client.Close()
	c.close()
	<-done
}

// startTunnel checks a machine's 101 against the client's request and
// counts the tunnel in h.tunnels; false means the client was answered with
// an error.
func (h *Handler) startTunnel(w http.ResponseWriter, x *exchange, fi *forwardInfo, resp *http.Response) bool {
	if fi.upgrade == "" {
		h.fail(w, x, CodeUpgradeRejected, "the machine switched protocols for a request that did not ask to", nil)
		return false
	}
	if !strings.EqualFold(resp.Header.Get("Upgrade"), fi.upgrade) {
		h.fail(w, x, CodeUpgradeRejected, "the machine switched to a protocol the client did not ask for", nil)
		return false
	}
	if !h.tunnels.start() {
		h.fail(w, x, CodeDraining, "the node is shutting down", nil)
		return false
	}
	x.tunnelled = true // finish tells h.tunnels when the request is done
	return true
}

// ownerTunnel is the owner's end of a tunnel between a client of another
// edge and c's machine, which answered 101 to the upgrade that edge sent
// (see BackhaulHandler). HTTP/2 and HTTP/3 have no 101: the answer is a
// 200 with the machine's headers and Godwit-Upgraded naming the protocol,
// flushed at once; then the request body (the client's bytes) goes to the
// machine and the machine's bytes to the response body, flushed as they
// come, until the machine's side ends or fails, or the stream does. The
// end of the request body half-closes the connection to the machine, as a
// client's half-close does on a local tunnel. The machine's slot is held
// until the handler returns, after both copies.
//
// The stream ends the tunnel from the other side: a reset (the client or
// its edge went away) ends the request's context, which fails every read
// and write on c (roundTrip's watch, still on), and the request body.
func (h *Handler) ownerTunnel(w http.ResponseWriter, x *exchange, c *upConn, resp *http.Response) {
	in := x.tunnelIn
	if in == nil { // serveBackhaul sets it for every upgrade
		h.fail(w, x, CodeUpgradeRejected, "the upgrade came without a stream for its tunnel", nil)
		return
	}
	hdr := w.Header()
	copyRawResponseHeader(hdr, resp.Header)
	delete(hdr, "Content-Length") // a 101 has no body; the stream's length is unknown
	if _, ok := resp.Header["Date"]; !ok {
		hdr["Date"] = nil // the machine's head, without one of the server's
	}
	hdr.Set(hdrUpgraded, resp.Header.Get("Upgrade"))
	rc := http.NewResponseController(w)
	_ = rc.EnableFullDuplex() // HTTP/2 and HTTP/3 are full duplex already
	x.status = http.StatusSwitchingProtocols
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		x.err = err
		return
	}
	end := &streamEnd{rc: in}
	done := make(chan struct{}) // the client→machine direction ended
	var ws *wsRelay
	if isWebSocket(resp.Header.Get("Upgrade")) {
		// A close frame goes through the stream like the machine's bytes.
		ws = newWSRelay(w, rc.Flush)
	}
	tn := newTunnel(end, c.nc, x.machine.ID, ws, done)
	if !h.tunnels.add(tn) {
		return // shutting down
	}
	defer h.tunnels.remove(tn)
	go func() {
		defer close(done)
		if _, err := splice(c.nc, onlyReader{in}); err != nil {
			c.close() // the stream was reset, or the machine failed
		}
	}()
	fromMachine := bufferedConn{Conn: c.nc, r: c.br}
	var n int64
	if ws != nil {
		// ws flushes each write itself, under its lock: a close frame may
		// be written and flushed by tunnels.goAway's goroutine too.
		bufp := copyBufs.Get().(*[]byte)
		n, _ = io.CopyBuffer(ws, fromMachine, *bufp)
		copyBufs.Put(bufp)
	} else {
		n, _, _ = copyBody(w, fromMachine, true)
	}
	x.bytesOut = n
	// One direction ended: end the other too, and wait for it.
	c.close()
	end.Close()
	<-done
}

// streamEnd closes the request body of a tunnel's backhaul stream, which
// ends a read of it in progress. Pointers to it are comparable, whatever
// the body's type, as h.tunnels' keys must be.
type streamEnd struct{ rc io.ReadCloser }

func (e *streamEnd) Close() error { return e.rc.Close() }

// remoteTunnel splices the client to a machine of another edge after its
// owner reported the machine's 101 (ownerTunnel; remoteExchange made resp
// that 101, with its body the stream's response). The client gets the
// 101 with the machine's headers, plus Via and our request id; then its
// bytes go to the stream's request body and the stream's response body to
// the client, until either ends. A client's half-close ends the request
// body, which the owner passes on to the machine. The end of the response
// (the machine closed, the owner went away or shut down, the backhaul
// failed) closes the client's connection; the client's going away resets
// the stream, which ends the owner's side.
func (h *Handler) remoteTunnel(w http.ResponseWriter, r *http.Request, x *exchange, fi *forwardInfo, resp *http.Response) {
	defer resp.Body.Close() // ends the backhaul stream
	body, ok := resp.Body.(*upgradeBody)
	if !ok {
		h.fail(w, x, CodeUpgradeRejected, "the machine's edge switched protocols without a stream for the tunnel", nil)
		return
	}
	if !h.startTunnel(w, x, fi, resp) {
		return
	}
	client, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		h.fail(w, x, CodeUpgradeRejected, "this connection cannot be upgraded", err)
		return
	}
	defer client.Close()
	if sc := smuggleConnFrom(r.Context()); sc != nil {
		sc.stop() // no more HTTP/1 on it
	}
	// The machine is another edge's: its owner sends the client away
	// before it stops (goAway), through the stream.
	tn := newTunnel(client, body.stream, "", nil, nil)
	if !h.tunnels.add(tn) {
		return // shutting down
	}
	defer h.tunnels.remove(tn)
	x.status = http.StatusSwitchingProtocols

	head := &http.Response{StatusCode: http.StatusSwitchingProtocols, ProtoMajor: 1, ProtoMinor: 1, Header: resp.Header, Request: r}
	head.Header[hdrVia] = appendVia(head.Header[hdrVia], fi.via)
	head.Header[hdrRequestIDResp] = x.idHeader
	if err := head.Write(brw); err != nil {
		return
	}
	if err := brw.Flush(); err != nil {
		return
	}
	client.SetDeadline(time.Time{})

	pw := body.stream.writer()
	fromClient := clientReader(client, brw.Reader)
	done := make(chan struct{})
	go func() {
		defer close(done)
		bufp := copyBufs.Get().(*[]byte)
		defer copyBufs.Put(bufp)
		_, err := io.CopyBuffer(onlyWriter{pw}, fromClient, *bufp)
		pw.CloseWithError(err) // nil: the end of the request body, a half-close
		if err != nil {
			// The client's side failed rather than ended (or the
			// stream did): no half-close to wait on.
			client.Close()
			body.stream.end()
		}
	}()
	n, _ := splice(client, onlyReader{resp.Body})
	x.bytesOut = n
	// One direction ended: end the other too, and wait for it.
	client.Close()
	body.stream.end()
	<-done
}

// clientReader reads a hijacked client connection: the bytes net/http had
// buffered, then the connection itself. Not through br, whose reader
// underneath, net/http's, cancels the request's context when the client's
// side ends: a half-close would then tear down the whole tunnel (through
// the watch on the machine's connection, or the backhaul stream's
// context) before the machine could answer it.
func clientReader(client net.Conn, br *bufio.Reader) io.Reader {
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n) // valid until br is read again, which it never is
		return onlyReader{io.MultiReader(bytes.NewReader(b), client)}
	}
	return client
}

// splice copies src to dst until either fails, then half-closes dst for
// writing where it can so the peer sees the end. The error is nil when src
// ended (EOF): a half-close, after which the other direction may go on.
func splice(dst net.Conn, src io.Reader) (int64, error) {
	return spliceVia(dst, onlyWriter{dst}, src)
}

// spliceVia is splice writing to dst through w.
func spliceVia(dst net.Conn, w io.Writer, src io.Reader) (int64, error) {
	bufp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bufp)
	n, err := io.CopyBuffer(w, src, *bufp)
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	return n, err
}
