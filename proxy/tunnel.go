package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
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
// accepting edge and the machine's connection (on the owner).
type tunnels struct {
	mu    sync.Mutex
	conns map[io.Closer]io.Closer // client side → machine side; comparable keys
	shut  bool
	wg    sync.WaitGroup // handlers between start and done
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

// add registers both ends of a started tunnel; false means closeAll has
// run already and the caller must close them itself.
func (t *tunnels) add(client, machine io.Closer) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.shut {
		return false
	}
	if t.conns == nil {
		t.conns = make(map[io.Closer]io.Closer)
	}
	t.conns[client] = machine
	return true
}

func (t *tunnels) remove(client io.Closer) {
	t.mu.Lock()
	delete(t.conns, client)
	t.mu.Unlock()
}

// closeAll closes both ends of every tunnel and refuses new ones.
func (t *tunnels) closeAll() {
	t.mu.Lock()
	t.shut = true
	conns := t.conns
	t.conns = nil
	t.mu.Unlock()
	for client, machine := range conns {
		client.Close()
		machine.Close()
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
	if !h.tunnels.add(client, c.nc) {
		return // shutting down
	}
	defer h.tunnels.remove(client)
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
	done := make(chan struct{})
	go func() {
		defer close(done)
		if _, err := splice(c.nc, fromClient); err != nil {
			// A side failed rather than ended: no half-close to wait on.
			client.Close()
			c.close()
		}
	}()
	n, _ := splice(client, fromMachine)
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
	if !h.tunnels.add(end, c.nc) {
		return // shutting down
	}
	defer h.tunnels.remove(end)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if _, err := splice(c.nc, onlyReader{in}); err != nil {
			c.close() // the stream was reset, or the machine failed
		}
	}()
	n, _, _ := copyBody(w, bufferedConn{Conn: c.nc, r: c.br}, true)
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
	if !h.tunnels.add(client, body.stream) {
		return // shutting down
	}
	defer h.tunnels.remove(client)
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
	bufp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bufp)
	n, err := io.CopyBuffer(onlyWriter{dst}, src, *bufp)
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	return n, err
}
