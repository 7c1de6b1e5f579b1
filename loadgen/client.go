package loadgen

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// Protocols a Client speaks, as --http names them.
const (
	HTTP1 = "1.1" // HTTP/1.1, over TCP or TLS
	HTTP2 = "2"   // HTTP/2: over TLS with ALPN h2 for https://, h2c with prior knowledge for http://
	HTTP3 = "3"   // HTTP/3 over QUIC (https:// only)
)

// ClientOptions configure a Client.
type ClientOptions struct {
	Protocol string // HTTP1 (the zero value too), HTTP2 or HTTP3
	// Insecure accepts any server certificate (self-signed ones).
	Insecure bool
	// Timeout bounds one request, from its start to the end of the
	// response body; 0: none.
	Timeout time.Duration
	// ConnectTimeout bounds a new connection: the TCP connect and the TLS
	// handshake, or the QUIC handshake; 0: 10 s.
	ConnectTimeout time.Duration
}

// Client is the HTTP client of a load run: one protocol only, redirects
// not followed (a 3xx is measured as it is), no compression, no proxy
// from the environment, and counts of the requests sent and of the
// responses by protocol.
type Client struct {
	HTTP  *http.Client
	sent  atomic.Uint64
	mu    sync.Mutex
	proto map[string]int
	close func()
}

// NewClient returns a Client for o.
func NewClient(o ClientOptions) (*Client, error) {
	connect := o.ConnectTimeout
	if connect <= 0 {
		connect = 10 * time.Second
	}
	tlsConf := &tls.Config{InsecureSkipVerify: o.Insecure}
	c := &Client{proto: map[string]int{}}
	var rt http.RoundTripper
	switch o.Protocol {
	case HTTP1, "", HTTP2:
		dialer := &net.Dialer{Timeout: connect, KeepAlive: 30 * time.Second}
		tr := &http.Transport{
			DialContext:         dialer.DialContext,
			TLSClientConfig:     tlsConf,
			TLSHandshakeTimeout: connect,
			MaxIdleConns:        0, // no limit
			MaxIdleConnsPerHost: 10000,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
			Protocols:           new(http.Protocols),
		}
		if o.Protocol == HTTP2 {
			// HTTP/2 only: a TLS server without h2 fails the handshake
			// rather than quietly answering in HTTP/1.1.
			tr.Protocols.SetHTTP2(true)
			tr.Protocols.SetUnencryptedHTTP2(true)
		} else {
			tr.Protocols.SetHTTP1(true)
		}
		rt, c.close = tr, tr.CloseIdleConnections
	case HTTP3:
		tr := &http3.Transport{
			TLSClientConfig: tlsConf,
			QUICConfig: &quic.Config{
				HandshakeIdleTimeout: connect,
				MaxIdleTimeout:       30 * time.Second,
			},
			DisableCompression: true,
		}
		rt, c.close = tr, func() { tr.Close() }
	default:
		return nil, fmt.Errorf("protocol %q: want %s, %s or %s", o.Protocol, HTTP1, HTTP2, HTTP3)
	}
	c.HTTP = &http.Client{
		Transport:     &countingTransport{rt: rt, c: c},
		Timeout:       o.Timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return c, nil
}

// CheckURL reports whether the protocol can reach u: HTTP/3 needs https.
func CheckURL(protocol, u string) error {
	p, err := url.Parse(u)
	if err != nil {
		return err
	}
	switch {
	case p.Scheme != "http" && p.Scheme != "https":
		return fmt.Errorf("%s: want an http:// or https:// URL", u)
	case p.Host == "":
		return fmt.Errorf("%s: no host", u)
	case protocol == HTTP3 && p.Scheme != "https":
		return fmt.Errorf("%s: HTTP/3 needs an https:// URL", u)
	}
	return nil
}

// Sent is the number of requests handed to the transport so far.
func (c *Client) Sent() uint64 { return c.sent.Load() }

// Protocols counts the responses by protocol ("HTTP/2.0").
func (c *Client) Protocols() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int, len(c.proto))
	for k, v := range c.proto {
		out[k] = v
	}
	return out
}

// Close closes the client's idle connections (HTTP/3: all of them).
func (c *Client) Close() { c.close() }

// countingTransport counts requests and the protocols of responses.
type countingTransport struct {
	rt http.RoundTripper
	c  *Client
}

func (t *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	t.c.sent.Add(1)
	resp, err := t.rt.RoundTrip(req)
	if err == nil {
		t.c.mu.Lock()
		t.c.proto[resp.Proto]++
		t.c.mu.Unlock()
	}
	return resp, err
}
