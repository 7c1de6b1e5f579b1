package health

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/godwit/godwit/config"
)

// Fallbacks for a check whose durations are not positive. config.Load fills
// in Fly's defaults, so these only keep a hand-built config.Check from
// spinning or hanging.
const (
	fallbackInterval = 15 * time.Second
	fallbackTimeout  = 2 * time.Second
)

// Passive probing of a machine without checks (see MarkFailing).
const (
	passiveProbeInterval = time.Second // between attempts
	passiveProbeTimeout  = time.Second // each attempt
)

const (
	userAgent              = "godwit-health-check"
	maxResponseHeaderBytes = 64 << 10
)

// dialFunc opens a connection to a machine; every check connects through it.
type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// A probe is one check of one machine, ready to run.
type probe struct {
	kind     string        // typeHTTP or typeTCP: the metric's type label
	name     string        // for logs and reasons, e.g. "http GET http://10.0.0.1:8080/"
	grace    time.Duration // first attempt at Target.Started + grace
	interval time.Duration // between the starts of two attempts
	timeout  time.Duration // bound on each attempt

	do    func(ctx context.Context) error // one attempt; nil error means pass
	close func()                          // releases idle connections; may be nil
}

// attempt runs one attempt of p bounded by its timeout. A timeout is named
// in the error.
func (p *probe) attempt(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	err := p.do(ctx)
	if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		err = fmt.Errorf("%w (timeout %v)", err, p.timeout)
	}
	return err
}

// newHTTPProbe builds the probe of HTTP check chk against addr. It has its
// own Transport: keep-alives off (a check never reuses a connection), no
// proxy from the environment, TLS as the check says.
func newHTTPProbe(dial dialFunc, addr string, chk config.Check) *probe {
	method := strings.ToUpper(chk.Method)
	if method == "" {
		method = http.MethodGet
	}
	scheme := "http"
	if strings.EqualFold(chk.Protocol, "https") {
		scheme = "https"
	}
	path := chk.Path
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	target := scheme + "://" + addr + path
	name := typeHTTP + " " + method + " " + target

	tr := &http.Transport{
		DialContext: dial,
		TLSClientConfig: &tls.Config{
			ServerName:         chk.TLSServerName,
			InsecureSkipVerify: chk.TLSSkipVerify, //nolint:gosec // the app's own tls_skip_verify
		},
		DisableKeepAlives:      true,
		MaxResponseHeaderBytes: maxResponseHeaderBytes,
	}
	client := &http.Client{
		Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse // a redirect is an answer, and not a 2xx one
		},
	}
	return &probe{
		kind:     typeHTTP,
		name:     name,
		grace:    chk.GracePeriod,
		interval: positive(chk.Interval, fallbackInterval),
		timeout:  positive(chk.Timeout, fallbackTimeout),
		close:    tr.CloseIdleConnections,
		do: func(ctx context.Context) error {
			req, err := http.NewRequestWithContext(ctx, method, target, nil)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			req.Header.Set("User-Agent", userAgent)
			for k, v := range chk.Headers {
				if strings.EqualFold(k, "Host") {
					req.Host = v
					continue
				}
				req.Header.Set(k, v)
			}
			resp, err := client.Do(req)
			if err != nil {
				var ue *url.Error
				if errors.As(err, &ue) {
					err = ue.Err // its Op and URL repeat name
				}
				return fmt.Errorf("%s: %w", name, err)
			}
			resp.Body.Close() // the status decides; keep-alives are off, so no need to drain
			if resp.StatusCode < 200 || resp.StatusCode > 299 {
				return fmt.Errorf("%s: %w", name, statusError(resp.StatusCode))
			}
			return nil
		},
	}
}

// newTCPProbe builds the probe of TCP check chk against addr.
func newTCPProbe(dial dialFunc, addr string, chk config.Check) *probe {
	name := typeTCP + " " + addr
	return &probe{
		kind:     typeTCP,
		name:     name,
		grace:    chk.GracePeriod,
		interval: positive(chk.Interval, fallbackInterval),
		timeout:  positive(chk.Timeout, fallbackTimeout),
		do: func(ctx context.Context) error {
			conn, err := dial(ctx, "tcp", addr)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			conn.Close()
			return nil
		},
	}
}

// statusError is the failure of an HTTP check answered with a status other
// than 2xx.
type statusError int

func (e statusError) Error() string {
	s := fmt.Sprintf("status %d %s, want 2xx", int(e), http.StatusText(int(e)))
	if e >= 300 && e < 400 {
		s += " (redirects are not followed)"
	}
	return s
}

func positive(d, fallback time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return fallback
}
