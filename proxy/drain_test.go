package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// TestDrainKeepAlive: once a drain begins, the listener refuses new
// connections, but a request sent on a client's open keep-alive
// connection is still answered, with "Connection: close", and the
// connection then closes: no request sent on a connection the node had
// open is reset.
func TestDrainKeepAlive(t *testing.T) {
	m1 := startMachine(t, "m1", nil, nil)
	p := startProxy(t, reloadBody(20, [2]string{"m1", m1.addr}))
	waitRunning(t, p)
	conn, err := net.Dial("tcp", p.httpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	post := func() (*http.Response, string, error) {
		fmt.Fprintf(conn, "POST / HTTP/1.1\r\nHost: %s\r\nContent-Length: 1\r\n\r\nx", webHost)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return nil, "", err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(b), nil
	}
	if resp, body, err := post(); err != nil || resp.StatusCode != 200 || body != "m1" {
		t.Fatalf("before the drain: %v %v %q", resp, err, body)
	}
	p.cancel() // the drain begins; the connection is idle
	eventually(t, 5*time.Second, "the listener refusing new connections", func() bool {
		c, err := net.Dial("tcp", p.httpAddr)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	resp, body, err := post()
	if err != nil {
		t.Fatalf("request on the open connection during the drain: %v, want an answer", err)
	}
	// ReadResponse takes "Connection: close" out of the header into Close.
	if resp.StatusCode != 200 || body != "m1" || !resp.Close {
		t.Errorf("during the drain: %d %q, close %v; want 200 from m1 with Connection: close", resp.StatusCode, body, resp.Close)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("after the Connection: close answer: read %v, want EOF (closed)", err)
	}
	if err := p.stop(t); err != nil {
		t.Errorf("Run: %v", err)
	}
}

// TestDrainDelay: with proxy.drain_delay, a node shutting down answers
// /healthz 503 at once but keeps accepting new connections for the delay
// (a load balancer in front is still sending), and only then refuses them.
func TestDrainDelay(t *testing.T) {
	m1 := startMachine(t, "m1", nil, nil)
	p := startProxy(t, "[proxy]\ndrain_delay = \"400ms\"\n"+reloadBody(20, [2]string{"m1", m1.addr}))
	waitRunning(t, p)
	p.cancel()
	eventually(t, 5*time.Second, "/healthz answering 503 draining", func() bool {
		resp, err := adminClient.Get("http://" + p.adminAddr + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	})
	began := time.Now()
	c := newClient(t)
	if r := p.get(t, c, webHost, "/"); r.err != nil || r.status != 200 {
		t.Errorf("new connection during the drain delay: %d %v, want it served", r.status, r.err)
	}
	eventually(t, 5*time.Second, "the listener refusing new connections after the delay", func() bool {
		conn, err := net.Dial("tcp", p.httpAddr)
		if err == nil {
			conn.Close()
		}
		return err != nil
	})
	if d := time.Since(began); d < 200*time.Millisecond {
		t.Errorf("listener closed %v after /healthz said draining, want about the 400ms drain_delay", d)
	}
	if err := p.stop(t); err != nil {
		t.Errorf("Run: %v", err)
	}
}
