package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// chromiumPath is the browser of TestChromiumHTTP3: $GODWIT_CHROMIUM, or
// Debian's chromium package ("" when neither is there).
func chromiumPath() string {
	for _, p := range []string{os.Getenv("GODWIT_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser"} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// TestChromiumHTTP3: a real browser, headless Chromium with QUIC forced
// to the test origin, loads a page through listen.http3. The machine sees
// the request as HTTP/3 from a TLS client. Skipped with a message where
// Chromium is not installed (.ci/run installs Debian's).
func TestChromiumHTTP3(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a browser")
	}
	bin := chromiumPath()
	if bin == "" {
		t.Skip("chromium not installed (apt-get install chromium, or set GODWIT_CHROMIUM): the browser HTTP/3 test did not run")
	}
	m := startMachine(t, "m1", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprint(w, "<html><body><p id=hello>hello from m1</p></body></html>")
	}, nil)
	p, h3 := startH3Proxy(t, fmt.Sprintf(`
[[app]]
name  = "web"
hosts = [%q]
[[machine]]
id      = "m1"
app     = "web"
address = %q
`, webHost, m.addr))
	port := udpPort(t, h3)
	origin := webHost + ":" + port
	url := "https://" + origin + "/"

	// Chromium ignores --ignore-certificate-errors on QUIC; it accepts a
	// certificate whose public key it was told to trust.
	leaf, err := leafFor(p.httpsAddr, webHost)
	if err != nil {
		t.Fatal(err)
	}
	spki := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin,
		"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir="+t.TempDir(),
		"--enable-quic", "--origin-to-force-quic-on="+origin,
		"--host-resolver-rules=MAP "+webHost+" 127.0.0.1",
		"--ignore-certificate-errors-spki-list="+base64.StdEncoding.EncodeToString(spki[:]), // godwit's self-signed development certificate
		"--dump-dom", url)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium --dump-dom %s: %v\n%s", url, err, lastLines(stderr.String(), 20))
	}
	if !strings.Contains(string(out), "hello from m1") {
		t.Fatalf("chromium's page for %s: %q, want the machine's answer; chromium's log:\n%s", url, out, lastLines(stderr.String(), 20))
	}
	r := m.lastRequest()
	if r == nil {
		t.Fatal("the machine got no request")
	}
	if got := r.Header.Get("Via"); got != "3 godwit" {
		t.Errorf("the machine's request: Via %q, want \"3 godwit\" (the browser's request came over HTTP/3)", got)
	}
	if got := r.Header.Get("X-Forwarded-Proto"); got != "https" {
		t.Errorf("the machine's request: X-Forwarded-Proto %q, want https", got)
	}
	t.Logf("chromium (%s) loaded %s over HTTP/3 through godwit (%s)", bin, url, p.httpsAddr)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
