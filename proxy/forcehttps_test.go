package proxy

import (
	"crypto/tls"
	"io"
	"net/http"
	"testing"
)

// TestForceHTTPS: an app with force_https answers plain HTTP with a 301 to
// the same URL on https, without reaching the machine, and serves https.
func TestForceHTTPS(t *testing.T) {
	m := startMachine(t, "m1", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "secure") }, nil)
	p := startProxy(t, oneApp("force_https = true", []string{m.addr}))

	noRedirect := &http.Client{
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Transport:     &http.Transport{DisableKeepAlives: true},
	}
	req, _ := http.NewRequest("GET", "http://"+p.httpAddr+"/a/b?c=d", nil)
	req.Host = webHost
	resp, err := noRedirect.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMovedPermanently {
		t.Errorf("plain HTTP status: got %d, want 301", resp.StatusCode)
	}
	if got, want := resp.Header.Get("Location"), "https://"+webHost+"/a/b?c=d"; got != want {
		t.Errorf("Location: got %q, want %q", got, want)
	}
	if n := m.requests.Load(); n != 0 {
		t.Errorf("machine saw %d requests for the redirect, want 0", n)
	}

	tlsClient := &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true, ServerName: webHost},
		DisableKeepAlives: true,
	}}
	req, _ = http.NewRequest("GET", "https://"+p.httpsAddr+"/a", nil)
	req.Host = webHost
	resp, err = tlsClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "secure" {
		t.Errorf("https: got %d %q, want 200 \"secure\"", resp.StatusCode, body)
	}
}
