package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	vegeta "github.com/tsenart/vegeta/v12/lib"
)

// protocols are the client protocols measured, in report order.
var protocols = []string{"h1", "h2", "h3"}

// protoName is how the report names a protocol, and wantProto the
// response's Proto that proves it was used.
var (
	protoName = map[string]string{"h1": "HTTP/1.1", "h2": "HTTP/2", "h3": "HTTP/3"}
	wantProto = map[string]string{"h1": "HTTP/1.1", "h2": "HTTP/2.0", "h3": "HTTP/3.0"}
)

// requestTimeout bounds one request, its body included.
const requestTimeout = 10 * time.Second

// verifier is the clients' RoundTripper: it reads the whole body (so a
// request's latency is the full response's), and turns into an error any
// response that is not 200, not of the protocol asked for, or whose body
// is not size bytes long. vegeta then counts it as an error.
type verifier struct {
	rt    http.RoundTripper
	proto string // the Proto a response must have
	size  int64  // the body length it must have
}

func (v *verifier) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := v.rt.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	switch {
	case err != nil:
		return nil, fmt.Errorf("body after %d bytes: %w", n, err)
	case resp.StatusCode != http.StatusOK:
		msg := fmt.Sprintf("status %d", resp.StatusCode)
		if ge := resp.Header.Get("Godwit-Error"); ge != "" {
			msg += " (Godwit-Error " + ge + ")"
		}
		return nil, errors.New(msg)
	case resp.Proto != v.proto:
		return nil, fmt.Errorf("protocol %s, want %s", resp.Proto, v.proto)
	case n != v.size:
		return nil, fmt.Errorf("body %d bytes, want %d", n, v.size)
	}
	resp.Body = http.NoBody
	return resp, nil
}

// client is one cell's HTTP client, with a transport of its own (new
// connections for every cell) for one protocol.
type client struct {
	http  *http.Client
	close func()
}

// newClient returns a client for proto ("h1", "h2", "h3") that trusts the
// bench's certificate alone, sends SNI benchHost, and checks every
// response for size bytes.
func newClient(proto string, cert *benchCert, size int64, conc int) *client {
	tlsCfg := &tls.Config{RootCAs: cert.pool, ServerName: benchHost}
	var rt http.RoundTripper
	var closeFn func()
	switch proto {
	case "h1":
		tr := &http.Transport{
			TLSClientConfig:     tlsCfg,
			ForceAttemptHTTP2:   false,
			TLSNextProto:        map[string]func(string, *tls.Conn) http.RoundTripper{}, // no HTTP/2
			MaxIdleConnsPerHost: conc,
			DisableCompression:  true,
			IdleConnTimeout:     time.Minute,
		}
		rt, closeFn = tr, tr.CloseIdleConnections
	case "h2":
		tr := &http.Transport{
			TLSClientConfig:     tlsCfg,
			Protocols:           new(http.Protocols),
			MaxIdleConnsPerHost: conc,
			DisableCompression:  true,
			IdleConnTimeout:     time.Minute,
		}
		tr.Protocols.SetHTTP2(true) // HTTP/2 only: a server without it fails the handshake
		rt, closeFn = tr, tr.CloseIdleConnections
	case "h3":
		tr := &http3.Transport{
			TLSClientConfig: tlsCfg,
			QUICConfig: &quic.Config{
				// A proxy without HTTP/3 fails the check in seconds, not 5.
				HandshakeIdleTimeout: 2 * time.Second,
				MaxIdleTimeout:       30 * time.Second,
			},
			DisableCompression: true,
		}
		rt, closeFn = tr, func() { tr.Close() }
	default:
		panic("unknown protocol " + proto)
	}
	return &client{
		http:  &http.Client{Transport: &verifier{rt: rt, proto: wantProto[proto], size: size}, Timeout: requestTimeout},
		close: closeFn,
	}
}

// url is the request URL of a size at a target: the address in the URL,
// benchHost in Host and SNI.
func url(t *target, size string) string {
	return "https://" + t.addr + sizes[size].path
}

// check sends GET for size through t with proto until one answer passes
// the verifier or timeout passes, and returns the last error.
func check(ctx context.Context, t *target, proto, size string, cert *benchCert, timeout time.Duration) error {
	end := time.Now().Add(timeout)
	for {
		c := newClient(proto, cert, sizes[size].bytes, 1)
		err := func() error {
			defer c.close()
			req, err := http.NewRequestWithContext(ctx, "GET", url(t, size), nil)
			if err != nil {
				return err
			}
			req.Host = benchHost
			resp, err := c.http.Do(req)
			if err != nil {
				return err
			}
			resp.Body.Close()
			return nil
		}()
		if err == nil || time.Now().After(end) || ctx.Err() != nil {
			var idle *quic.IdleTimeoutError
			var hs *quic.HandshakeTimeoutError
			if errors.As(err, &idle) || errors.As(err, &hs) {
				err = fmt.Errorf("%w (no QUIC handshake with %s: is HTTP/3 served there?)", err, t.addr)
			}
			return err
		}
		if t.p.Exited() {
			return t.p.Died()
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// loadResult is one vegeta attack.
type loadResult struct {
	rps      float64 // successful responses per second (vegeta's throughput)
	rate     float64 // requests sent per second
	p50, p99 float64 // ms, every request's latency (t-digest estimates)
	requests uint64
	errors   uint64
	errs     []string // distinct error messages, at most 5
}

// attack runs vegeta against t for size with proto for dur: at most conc
// requests in flight, and at rate req/s (0: as fast as they complete).
func attack(ctx context.Context, t *target, proto, size string, cert *benchCert, conc, rate int, dur time.Duration) loadResult {
	c := newClient(proto, cert, sizes[size].bytes, conc)
	defer c.close()
	atk := vegeta.NewAttacker(
		vegeta.Client(c.http),
		vegeta.Workers(uint64(conc)),
		vegeta.MaxWorkers(uint64(conc)),
	)
	tgt := vegeta.NewStaticTargeter(vegeta.Target{
		Method: "GET",
		URL:    url(t, size),
		Header: http.Header{"Host": {benchHost}},
	})
	stop := context.AfterFunc(ctx, func() { atk.Stop() })
	defer stop()
	var m vegeta.Metrics
	var failed uint64
	for res := range atk.Attack(tgt, vegeta.Rate{Freq: rate, Per: time.Second}, dur, "") {
		m.Add(res)
		if res.Error != "" || res.Code != http.StatusOK {
			failed++
		}
	}
	m.Close()
	r := loadResult{
		rps:      m.Throughput,
		rate:     m.Rate,
		p50:      float64(m.Latencies.P50) / float64(time.Millisecond),
		p99:      float64(m.Latencies.P99) / float64(time.Millisecond),
		requests: m.Requests,
		errors:   failed,
	}
	errs := append([]string(nil), m.Errors...)
	sort.Strings(errs)
	for i, e := range errs {
		if i == 5 {
			r.errs = append(r.errs, fmt.Sprintf("… %d more distinct", len(errs)-5))
			break
		}
		r.errs = append(r.errs, shortErr(e))
	}
	return r
}

// shortErr drops the `Get "https://…": ` prefix of a client error.
func shortErr(e string) string {
	if i := strings.Index(e, `": `); i >= 0 && strings.HasPrefix(e, "Get ") {
		return e[i+3:]
	}
	return e
}
