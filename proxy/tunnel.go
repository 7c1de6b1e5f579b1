package proxy

import (
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

// tunnels tracks hijacked connections, each client's with its machine's,
// so that shutdown can close them and wait for their handlers: the HTTP
// server forgets a connection once it is hijacked.
type tunnels struct {
	mu    sync.Mutex
	conns map[net.Conn]net.Conn // client → machine
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
func (t *tunnels) add(client, machine net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.shut {
		return false
	}
	if t.conns == nil {
		t.conns = make(map[net.Conn]net.Conn)
	}
	t.conns[client] = machine
	return true
}

func (t *tunnels) remove(client net.Conn) {
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
func (h *Handler) switchProtocols(w http.ResponseWriter, r *http.Request, x *exchange, fi *forwardInfo, c *upConn, resp *http.Response, bodyDone <-chan error, unwatch func() bool) {
	ctx := r.Context()
	defer c.close()
	if bodyDone != nil {
		defer stopBodyWrite(w, c, bodyDone)
	}
	defer unwatch()
	if fi.upgrade == "" {
		h.fail(w, x, CodeUpgradeRejected, "the machine switched protocols for a request that did not ask to", nil)
		return
	}
	if !strings.EqualFold(resp.Header.Get("Upgrade"), fi.upgrade) {
		h.fail(w, x, CodeUpgradeRejected, "the machine switched to a protocol the client did not ask for", nil)
		return
	}
	if !h.tunnels.start() {
		h.fail(w, x, CodeDraining, "the node is shutting down", nil)
		return
	}
	x.tunnelled = true // finish tells h.tunnels when the request is done
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
	fromClient := bufferedConn{Conn: client, r: brw.Reader}
	fromMachine := bufferedConn{Conn: c.nc, r: c.br}
	done := make(chan struct{})
	go func() {
		defer close(done)
		splice(c.nc, fromClient)
	}()
	n := splice(client, fromMachine)
	x.bytesOut = n
	// One direction ended: end the other too, and wait for it.
	client.Close()
	c.close()
	<-done
}

// splice copies src to dst until either fails, then half-closes dst for
// writing where it can so the peer sees the end.
func splice(dst net.Conn, src io.Reader) int64 {
	bufp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bufp)
	n, _ := io.CopyBuffer(onlyWriter{dst}, src, *bufp)
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	return n
}
