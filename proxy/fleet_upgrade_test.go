package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/websocket"
)

// tunnelMachine is the handler of a machine that takes protocol upgrades:
//
//   - /ws: a WebSocket echo, message by message;
//   - /deny: 403, no upgrade;
//   - /replay on m-cdg: fly-replay to region nrt;
//   - /close: 101 to x-echo, a greeting, then it closes;
//   - anything else: 101 to x-echo (Upgrade: x-echo wanted), a greeting
//     ("hello from <id>\n", sent with the 101), then an echo of every byte
//     until the client's side ends; eofs counts the echoes that ended so.
func tunnelMachine(id string, eofs *atomic.Int64) http.HandlerFunc {
	ws := websocket.Handler(func(c *websocket.Conn) {
		for { // message by message: io.Copy would split large ones into frames
			var msg string
			if websocket.Message.Receive(c, &msg) != nil || websocket.Message.Send(c, msg) != nil {
				return
			}
		}
	})
	return func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/ws":
			ws.ServeHTTP(w, r)
			return
		case r.URL.Path == "/deny":
			http.Error(w, "no tunnel for you", http.StatusForbidden)
			return
		case r.URL.Path == "/replay" && id == "m-cdg":
			w.Header().Set("Fly-Replay", "region=nrt")
			return
		case r.Header.Get("Upgrade") != "x-echo":
			http.Error(w, "want Upgrade: x-echo", http.StatusUpgradeRequired)
			return
		}
		nc, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer nc.Close()
		fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: x-echo\r\nX-Echo-Machine: %s\r\n\r\nhello from %s\n", id, id)
		if brw.Flush() != nil || r.URL.Path == "/close" {
			return
		}
		_, err = io.Copy(nc, brw.Reader)
		if err == nil {
			eofs.Add(1)
		}
	}
}

// upgradeThrough asks edge p for an upgrade to x-echo of path and returns
// the client's connection (20 s deadline, closed when the test ends), its
// reader and the response head, whose body is read to its end unless it
// is a 101.
func upgradeThrough(t *testing.T, p *testProxy, path string) (net.Conn, *bufio.Reader, *http.Response, string) {
	t.Helper()
	nc := dialProxy(t, p.httpAddr)
	fmt.Fprintf(nc, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: x-echo\r\nX-Client: c1\r\n\r\n", path, webHost)
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("upgrade %s through %s: got error %v, want a response", path, p.cfg.Node.Name, err)
	}
	body := ""
	if resp.StatusCode != http.StatusSwitchingProtocols {
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
	}
	return nc, br, resp, body
}

// readLine reads one line of a tunnel, failing the test on an error.
func readLine(t *testing.T, br *bufio.Reader, what string) string {
	t.Helper()
	line, err := br.ReadString('\n')
	if err != nil {
		t.Fatalf("%s: got %q and error %v, want a line", what, line, err)
	}
	return line
}

// wantEOF checks that the client's side of a tunnel ends cleanly (EOF)
// within the connection's deadline, with nothing more on it.
func wantEOF(t *testing.T, nc net.Conn, br *bufio.Reader, within time.Duration, what string) {
	t.Helper()
	nc.SetReadDeadline(time.Now().Add(within))
	rest, err := io.ReadAll(br)
	if err != nil || len(rest) > 0 {
		t.Fatalf("%s: client read %q and error %v; want the end of the stream (EOF) within %v", what, rest, err, within)
	}
}

// noTunnels waits until no edge has a tunnel open and the machine's owner
// (and the accepting edge's view of it) has its slot back.
func noTunnels(t *testing.T, owner *testProxy, id string, edges ...*testProxy) {
	t.Helper()
	eventually(t, 10*time.Second, "machine "+id+"'s slot back on its owner and no tunnel open", func() bool {
		if owner.srv.handler.tunnels.count() != 0 || owner.srv.Table().Machine(id).Inflight() != 0 {
			return false
		}
		for _, e := range edges {
			if e.srv.handler.tunnels.count() != 0 {
				return false
			}
			if m := e.srv.Table().Machine(id); m != nil && m.Inflight() != 0 {
				return false
			}
		}
		return true
	})
	if st := owner.machineStatus(t, id); st.Inflight != 0 {
		t.Errorf("owner's /v1/machines: %s inflight %d, want 0", id, st.Inflight)
	}
}

// TestFleetUpgrade: a protocol upgrade accepted by one edge for a machine
// of another becomes a tunnel through the backhaul, which ends cleanly
// from either side.
func TestFleetUpgrade(t *testing.T) {
	var cdgEOFs, nrtEOFs atomic.Int64
	cdg := startMachine(t, "m-cdg", tunnelMachine("m-cdg", &cdgEOFs), nil)
	nrt := startMachine(t, "m-nrt", tunnelMachine("m-nrt", &nrtEOFs), nil)
	owner := startEdge(t, "edge-cdg", "cdg", "", ownedMachine("m-cdg", "cdg", cdg.addr))
	other := startEdge(t, "edge-nrt", "nrt", owner.srv.GossipAddr(), ownedMachine("m-nrt", "nrt", nrt.addr))
	// edge-iad owns no machine; nrt is kept farther than cdg (simulated
	// RTT), so its requests go to m-cdg unless a replay says otherwise.
	a := startEdge(t, "edge-iad", "iad", owner.srv.GossipAddr(), "[backhaul.simulated_rtt]\n\"iad-nrt\" = \"30ms\"\n")
	routable(t, a, "m-cdg")
	routable(t, a, "m-nrt")
	eventually(t, 20*time.Second, "edge-iad ordering cdg before nrt", func() bool {
		app := a.srv.Table().App("web")
		return app != nil && len(app.Regions()) == 2 && app.Regions()[0] == "cdg"
	})

	t.Run("raw tunnel", func(t *testing.T) {
		nc, br, resp, body := upgradeThrough(t, a, "/echo?x=1")
		if resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade through edge-iad to edge-cdg's machine: got %d %q (%s %q), want 101", resp.StatusCode, body, HeaderError, resp.Header.Get(HeaderError))
		}
		id := resp.Header.Get("Fly-Request-Id")
		for k, want := range map[string]string{
			"Upgrade": "x-echo", "Connection": "Upgrade", "X-Echo-Machine": "m-cdg", "Via": "1.1 godwit",
		} {
			if got := resp.Header.Get(k); got != want {
				t.Errorf("101 to the client: %s %q, want %q", k, got, want)
			}
		}
		if !strings.HasSuffix(id, "-iad") {
			t.Errorf("101 to the client: Fly-Request-Id %q, want the accepting edge's (…-iad)", id)
		}
		for k := range resp.Header {
			if strings.HasPrefix(k, "Godwit-") || k == "Date" || k == "Content-Length" {
				t.Errorf("101 to the client: has %s %q, which the machine did not send", k, resp.Header.Get(k))
			}
		}
		if got := readLine(t, br, "greeting sent with the 101"); got != "hello from m-cdg\n" {
			t.Fatalf("first line through the tunnel: got %q, want the machine's greeting", got)
		}
		seen := cdg.lastRequest()
		for k, want := range map[string]string{
			"Fly-Region": "iad", "Fly-Client-Ip": "127.0.0.1", "Fly-Request-Id": id,
			"Upgrade": "x-echo", "Connection": "Upgrade", "X-Client": "c1", "Via": "1.1 godwit",
		} {
			if got := seen.Header.Get(k); got != want {
				t.Errorf("machine saw %s %q, want %q", k, got, want)
			}
		}
		if seen.RequestURI != "/echo?x=1" || seen.Header.Get(hdrBackhaul) != "" || seen.Header.Get("Godwit-Host") != "" {
			t.Errorf("machine saw target %q and backhaul headers %q %q; want /echo?x=1 and none", seen.RequestURI, seen.Header.Get(hdrBackhaul), seen.Header.Get("Godwit-Host"))
		}
		for i := range 5 {
			msg := fmt.Sprintf("message %d %s\n", i, strings.Repeat("x", i*20000))
			if _, err := io.WriteString(nc, msg); err != nil {
				t.Fatalf("send %d: %v", i, err)
			}
			if got := readLine(t, br, fmt.Sprintf("echo %d", i)); got != msg {
				t.Fatalf("echo %d: got %d bytes, want %d", i, len(got), len(msg))
			}
		}
		if n := a.srv.handler.tunnels.count(); n != 1 {
			t.Errorf("edge-iad tunnels: got %d, want 1", n)
		}
		if n := owner.srv.handler.tunnels.count(); n != 1 {
			t.Errorf("edge-cdg tunnels: got %d, want 1", n)
		}
		if st := owner.machineStatus(t, "m-cdg"); st.Inflight != 1 {
			t.Errorf("owner's /v1/machines during the tunnel: m-cdg inflight %d, want 1", st.Inflight)
		}

		// The client half-closes: the machine sees the end, finishes, and
		// the client sees the end of the tunnel.
		before := cdgEOFs.Load()
		if err := nc.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatalf("client half-close: %v", err)
		}
		wantEOF(t, nc, br, 10*time.Second, "after the client's half-close")
		if n := cdgEOFs.Load() - before; n != 1 {
			t.Errorf("machine echoes that ended with the client's EOF: got %d, want 1", n)
		}
		noTunnels(t, owner, "m-cdg", a)
	})

	t.Run("websocket", func(t *testing.T) {
		cfg, err := websocket.NewConfig("ws://"+webHost+"/ws", "http://"+webHost)
		if err != nil {
			t.Fatal(err)
		}
		ws, err := websocket.NewClient(cfg, dialProxy(t, a.httpAddr))
		if err != nil {
			t.Fatalf("websocket handshake through edge-iad to edge-cdg's machine: got %v, want 101", err)
		}
		for i := range 6 {
			msg := fmt.Sprintf("message %d %s", i, strings.Repeat("w", i*40000))
			if err := websocket.Message.Send(ws, msg); err != nil {
				t.Fatalf("send %d: %v", i, err)
			}
			var got string
			if err := websocket.Message.Receive(ws, &got); err != nil {
				t.Fatalf("receive %d: %v", i, err)
			}
			if got != msg {
				t.Fatalf("echo %d: got %d bytes, want %d", i, len(got), len(msg))
			}
		}
		if got := cdg.lastRequest().Header.Get("Fly-Region"); got != "iad" {
			t.Errorf("machine saw Fly-Region %q, want the accepting edge's iad", got)
		}
		// The client closes: the machine's handler ends, the owner gives
		// the slot back.
		ws.Close()
		eventually(t, 10*time.Second, "m-cdg's websocket handler ended", func() bool { return cdg.inflight.Load() == 0 })
		noTunnels(t, owner, "m-cdg", a)
	})

	t.Run("client closes", func(t *testing.T) {
		nc, br, resp, _ := upgradeThrough(t, a, "/echo")
		if resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade: got %d, want 101", resp.StatusCode)
		}
		readLine(t, br, "greeting")
		io.WriteString(nc, "one\n")
		readLine(t, br, "echo")
		before := cdgEOFs.Load()
		nc.Close()
		eventually(t, 10*time.Second, "machine saw the client's end (EOF)", func() bool { return cdgEOFs.Load() == before+1 })
		noTunnels(t, owner, "m-cdg", a)
	})

	t.Run("machine closes", func(t *testing.T) {
		nc, br, resp, _ := upgradeThrough(t, a, "/close")
		if resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade: got %d, want 101", resp.StatusCode)
		}
		if got := readLine(t, br, "greeting"); got != "hello from m-cdg\n" {
			t.Fatalf("greeting: got %q", got)
		}
		wantEOF(t, nc, br, 10*time.Second, "after the machine closed")
		noTunnels(t, owner, "m-cdg", a)
	})

	t.Run("refused with 4xx", func(t *testing.T) {
		_, _, resp, body := upgradeThrough(t, a, "/deny")
		if resp.StatusCode != http.StatusForbidden || body != "no tunnel for you\n" || resp.Header.Get("X-Machine") != "m-cdg" {
			t.Fatalf("upgrade the machine refuses: got %d %q (X-Machine %q), want the machine's 403", resp.StatusCode, body, resp.Header.Get("X-Machine"))
		}
		if resp.Header.Get(HeaderError) != "" || resp.Header.Get(hdrUpgraded) != "" {
			t.Errorf("403 carries %s %q, %s %q; want neither", HeaderError, resp.Header.Get(HeaderError), hdrUpgraded, resp.Header.Get(hdrUpgraded))
		}
		noTunnels(t, owner, "m-cdg", a)
	})

	t.Run("replayed", func(t *testing.T) {
		before := cdg.requests.Load()
		nc, br, resp, body := upgradeThrough(t, a, "/replay")
		if resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade m-cdg replays to nrt: got %d %q, want 101 from m-nrt", resp.StatusCode, body)
		}
		if got := readLine(t, br, "greeting"); got != "hello from m-nrt\n" {
			t.Fatalf("greeting: got %q, want m-nrt's", got)
		}
		if n := cdg.requests.Load() - before; n != 1 {
			t.Errorf("replaying machine saw %d requests, want 1", n)
		}
		if src := nrt.lastRequest().Header.Get("Fly-Replay-Src"); !strings.HasPrefix(src, "instance=m-cdg;region=cdg;t=") {
			t.Errorf("m-nrt saw Fly-Replay-Src %q, want instance=m-cdg;region=cdg;t=…", src)
		}
		io.WriteString(nc, "through the replay\n")
		if got := readLine(t, br, "echo"); got != "through the replay\n" {
			t.Fatalf("echo: got %q", got)
		}
		nc.(*net.TCPConn).CloseWrite()
		wantEOF(t, nc, br, 10*time.Second, "after the client's half-close")
		noTunnels(t, other, "m-nrt", a, owner)
	})

	t.Run("accepting edge stops", func(t *testing.T) {
		nc, br, resp, _ := upgradeThrough(t, a, "/echo")
		if resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade: got %d, want 101", resp.StatusCode)
		}
		readLine(t, br, "greeting")
		before := cdgEOFs.Load()
		start := time.Now()
		if err := a.stop(t); err != nil {
			t.Fatalf("stop edge-iad: %v", err)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("edge-iad took %v to stop with a tunnel open, want well under 10s", d)
		}
		nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadAll(br); err != nil {
			t.Errorf("client after edge-iad stopped: read error %v, want the connection closed", err)
		}
		noTunnels(t, owner, "m-cdg")
		if n := cdgEOFs.Load() - before; n > 1 {
			t.Errorf("machine echoes ended: %d", n)
		}
	})
}

// TestFleetUpgradeOwnerStops: an owner edge that stops while a tunnel runs
// through it ends the tunnel: the client's connection closes promptly and
// nothing hangs on either edge.
func TestFleetUpgradeOwnerStops(t *testing.T) {
	var eofs atomic.Int64
	m := startMachine(t, "m-nrt", tunnelMachine("m-nrt", &eofs), nil)
	owner := startEdge(t, "edge-nrt", "nrt", "", ownedMachine("m-nrt", "nrt", m.addr))
	a := startEdge(t, "edge-iad", "iad", owner.srv.GossipAddr(), "")
	routable(t, a, "m-nrt")

	nc, br, resp, body := upgradeThrough(t, a, "/echo")
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: got %d %q, want 101", resp.StatusCode, body)
	}
	readLine(t, br, "greeting")
	io.WriteString(nc, "before\n")
	readLine(t, br, "echo")

	stopped := make(chan error, 1)
	start := time.Now()
	go func() { stopped <- owner.stop(t) }()
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	rest, err := io.ReadAll(br)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("client's connection still open 10s after its owner edge began stopping (read %q)", rest)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("client's connection closed %v after the owner began stopping, want under 5s", d)
	}
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatalf("owner's Run: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("owner edge still stopping 20s later, with a tunnel through it")
	}
	eventually(t, 10*time.Second, "no tunnel left on edge-iad", func() bool { return a.srv.handler.tunnels.count() == 0 })
	eventually(t, 10*time.Second, "machine's handler ended", func() bool { return m.inflight.Load() == 0 })
	eventually(t, 10*time.Second, "edge-iad's count on m-nrt back to 0", func() bool {
		mm := a.srv.Table().Machine("m-nrt")
		return mm == nil || mm.Inflight() == 0
	})
}

// TestUpgradeBackhaulHeader: the upgrade an accepting edge asks for
// survives Godwit-Backhaul, with the rest of what it adds.
func TestUpgradeBackhaulHeader(t *testing.T) {
	for _, tc := range []struct {
		name string
		fi   forwardInfo
	}{
		{"websocket", forwardInfo{clientIP: "203.0.113.9", region: "iad", requestID: "01-iad", via: "1.1 godwit", upgrade: "websocket"}},
		{"odd token", forwardInfo{region: "cdg", upgrade: "x-echo/1.0, h2c"}},
		{"no upgrade", forwardInfo{region: "nrt", chunked: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, length, fi, err := decodeBackhaul(encodeBackhaul("m1", 0, &tc.fi))
			if err != nil || id != "m1" || length != 0 || fi != tc.fi {
				t.Fatalf("decode(encode): got %q %d %+v, %v; want m1 0 %+v, nil", id, length, fi, err, tc.fi)
			}
		})
	}
}

// TestUpgradeStream: each attempt of an upgrade's backhaul request reads a
// pipe of its own, so a superseded attempt's reader never takes the
// tunnel's bytes; end fails every side of it.
func TestUpgradeStream(t *testing.T) {
	s := newUpgradeStream(t.Context())
	first, err := s.body()
	if err != nil {
		t.Fatalf("first body: %v", err)
	}
	second, err := s.body() // a resend (GetBody)
	if err != nil {
		t.Fatalf("second body: %v", err)
	}
	if n, err := first.Read(make([]byte, 1)); err != errAttemptOver {
		t.Errorf("superseded attempt's read: got %d, %v; want %v", n, err, errAttemptOver)
	}
	pw := s.writer()
	got := make(chan string, 1)
	go func() {
		b := make([]byte, 16)
		n, _ := second.Read(b)
		got <- string(b[:n])
	}()
	if _, err := pw.Write([]byte("tunnel")); err != nil {
		t.Fatalf("write to the answered attempt: %v", err)
	}
	if g := <-got; g != "tunnel" {
		t.Errorf("answered attempt read %q, want %q", g, "tunnel")
	}
	s.end()
	s.end() // idempotent
	if s.ctx.Err() == nil {
		t.Error("stream context alive after end, want canceled")
	}
	if _, err := pw.Write([]byte("late")); err == nil {
		t.Error("write after end: got nil error, want one")
	}
	if _, err := second.Read(make([]byte, 1)); err == nil {
		t.Error("read after end: got nil error, want one")
	}
	if _, err := s.body(); err != errStreamEnded {
		t.Errorf("body after end: got %v, want %v", err, errStreamEnded)
	}
}
