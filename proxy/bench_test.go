package proxy

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

// BenchmarkReplay measures one request through the proxy, in process, on
// one keep-alive client connection: sent straight to the target app
// (direct), answered with fly-replay by a source machine and replayed to the
// target (replayed), and sent by the replay cache straight to the target
// (cached). The machines run in the same process, so compare the
// sub-benchmarks with each other, not with bench/replay.sh's figures.
func BenchmarkReplay(b *testing.B) {
	body := []byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
	src := startMachine(b, "s1", func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h["Fly-Replay"] = []string{"app=target"}
		if r.URL.Path == "/cached" {
			h["Fly-Replay-Cache"] = []string{"/cached"}
			h["Fly-Replay-Cache-Ttl-Secs"] = []string{"3600"}
		}
		w.WriteHeader(http.StatusNoContent)
	}, nil)
	dst := startMachine(b, "t1", func(w http.ResponseWriter, r *http.Request) { w.Write(body) }, nil)
	p := startProxy(b, fmt.Sprintf(`
[[app]]
name  = "src"
hosts = ["src.test"]
[app.http_service.concurrency]
type = "requests"
soft_limit = 1000
[[app]]
name  = "target"
hosts = ["target.test"]
[app.http_service.concurrency]
type = "requests"
soft_limit = 1000
[[machine]]
id      = "s1"
app     = "src"
address = %q
[[machine]]
id      = "t1"
app     = "target"
address = %q
`, src.addr, dst.addr))

	for _, bc := range []struct{ name, host, path string }{
		{"direct", "target.test", "/"},
		{"replayed", "src.test", "/"},
		{"cached", "src.test", "/cached"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			nc, err := net.Dial("tcp", p.httpAddr)
			if err != nil {
				b.Fatal(err)
			}
			defer nc.Close()
			req := []byte("GET " + bc.path + " HTTP/1.1\r\nHost: " + bc.host + "\r\n\r\n")
			br := bufio.NewReader(nc)
			roundTrip := func() {
				if _, err := nc.Write(req); err != nil {
					b.Fatal(err)
				}
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					b.Fatal(err)
				}
				n, _ := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || n != int64(len(body)) {
					b.Fatalf("got %d with %d bytes, want 200 with the target's %d", resp.StatusCode, n, len(body))
				}
			}
			roundTrip() // fills the cache for "cached"
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				roundTrip()
			}
		})
	}
}

// BenchmarkBackhaul measures one GET on one keep-alive client connection
// sent to the machine's owner edge (direct-P) and sent to another edge that
// forwards it over backhaul protocol P to the owner (via-P). As a floor for
// what a hop can cost, chain-http1 sends it to a standalone edge whose
// "machine" is the owner's plain HTTP/1.1 listener: a second full proxy
// pass, without TLS or multiplexing. Edges and the machine run in this
// process: compare the sub-benchmarks with each other; bench/fleet
// measures edges as separate processes.
func BenchmarkBackhaul(b *testing.B) {
	body := []byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
	m := startMachine(b, "m-b", func(w http.ResponseWriter, r *http.Request) { w.Write(body) }, nil)
	type target struct {
		name string
		p    *testProxy
	}
	var targets []target
	for _, proto := range []string{"mux", "h2", "quic"} {
		owner := startEdgeProto(b, proto, "edge-b-"+proto, "cdg", "", ownedMachine("m-b-"+proto, "cdg", m.addr))
		edge := startEdgeProto(b, proto, "edge-a-"+proto, "iad", owner.srv.GossipAddr(), "")
		routable(b, edge, "m-b-"+proto)
		targets = append(targets, target{"direct-" + proto, owner}, target{"via-" + proto, edge})
	}
	chained := startProxy(b, fmt.Sprintf(`
[[app]]
name  = "web"
hosts = [%q]
[app.http_service.concurrency]
type = "requests"
soft_limit = 1000
[[machine]]
id      = "edge-b"
app     = "web"
address = %q
`, webHost, targets[0].p.httpAddr))
	targets = append(targets, target{"chain-http1", chained})

	for _, bc := range targets {
		b.Run(bc.name, func(b *testing.B) {
			nc, err := net.Dial("tcp", bc.p.httpAddr)
			if err != nil {
				b.Fatal(err)
			}
			defer nc.Close()
			req := []byte("GET / HTTP/1.1\r\nHost: " + webHost + "\r\n\r\n")
			br := bufio.NewReader(nc)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := nc.Write(req); err != nil {
					b.Fatal(err)
				}
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					b.Fatal(err)
				}
				n, _ := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || n != int64(len(body)) {
					b.Fatalf("got %d with %d bytes, want 200 with the machine's %d", resp.StatusCode, n, len(body))
				}
			}
		})
	}
}

// BenchmarkPost measures one POST with a 64-byte body through the proxy,
// in process, on one kept-alive client connection: HTTP/1.1 with
// Content-Length, HTTP/1.1 chunked, and HTTP/2 over TLS. It prices how
// request bodies are written to the machine (the head, then each piece as
// it arrives); compare the sub-benchmarks across commits.
func BenchmarkPost(b *testing.B) {
	body := "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	m := startMachine(b, "m1", func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprint(w, n)
	}, nil)
	p := startProxy(b, oneApp(`
    [app.http_service.concurrency]
    type       = "requests"
    soft_limit = 1000
`, []string{m.addr}))
	raw := func(req string) func(b *testing.B) {
		return func(b *testing.B) {
			nc, err := net.Dial("tcp", p.httpAddr)
			if err != nil {
				b.Fatal(err)
			}
			defer nc.Close()
			br := bufio.NewReader(nc)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := io.WriteString(nc, req); err != nil {
					b.Fatal(err)
				}
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					b.Fatal(err)
				}
				got, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || string(got) != "64" {
					b.Fatalf("got %d %q, want 200 \"64\"", resp.StatusCode, got)
				}
			}
		}
	}
	head := "POST / HTTP/1.1\r\nHost: " + webHost + "\r\n"
	b.Run("http1-length", raw(head+"Content-Length: 64\r\n\r\n"+body))
	b.Run("http1-chunked", raw(head+"Transfer-Encoding: chunked\r\n\r\n40\r\n"+body+"\r\n0\r\n\r\n"))
	b.Run("h2", func(b *testing.B) {
		tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true}
		defer tr.CloseIdleConnections()
		c := &http.Client{Transport: tr}
		url := "https://" + p.httpsAddr + "/"
		b.ReportAllocs()
		for b.Loop() {
			req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
			req.Host = webHost
			resp, err := c.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || resp.ProtoMajor != 2 || string(got) != "64" {
				b.Fatalf("got %d %s %q, want 200 over HTTP/2 \"64\"", resp.StatusCode, resp.Proto, got)
			}
		}
	})
}
