package proxy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/godwit/godwit/config"
)

// certFiles are the PEM files of a test certificate.
type certFiles struct{ cert, key string }

// writeCert writes a new self-signed ECDSA certificate with common name cn
// and the given DNS names to dir/name.pem and dir/name.key, each replaced
// by a rename as renewal tools do. The common name tells certificates apart
// in the tests.
func writeCert(t testing.TB, dir, name, cn string, notAfter time.Time, dnsNames ...string) certFiles {
	t.Helper()
	certPEM, keyPEM := makeCert(t, cn, notAfter, dnsNames...)
	f := certFiles{filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")}
	replaceFile(t, f.cert, certPEM)
	replaceFile(t, f.key, keyPEM)
	return f
}

func makeCert(t testing.TB, cn string, notAfter time.Time, dnsNames ...string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return makeCertWithKey(t, key, cn, notAfter, dnsNames...)
}

// makeCertWithKey is makeCert for a given key, as a renewal that keeps
// its key.
func makeCertWithKey(t testing.TB, key *ecdsa.PrivateKey, cn string, notAfter time.Time, dnsNames ...string) (certPEM, keyPEM []byte) {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     dnsNames,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
}

// replaceFile writes data to path through a temporary file and a rename.
func replaceFile(t testing.TB, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// certEntry is a [[tls.certificate]] of a test config.
type certEntry struct {
	files certFiles
	hosts []string // nil: leave hosts out
}

// tlsTOML returns a [tls] table with the default certificate def (nil:
// none), reload_interval and a [[tls.certificate]] per entry.
func tlsTOML(def *certFiles, interval string, entries ...certEntry) string {
	var b strings.Builder
	b.WriteString("[tls]\n")
	if def != nil {
		fmt.Fprintf(&b, "cert_file = %q\nkey_file = %q\n", def.cert, def.key)
	}
	fmt.Fprintf(&b, "reload_interval = %q\n", interval)
	for _, e := range entries {
		fmt.Fprintf(&b, "[[tls.certificate]]\ncert_file = %q\nkey_file = %q\n", e.files.cert, e.files.key)
		if e.hosts != nil {
			fmt.Fprintf(&b, "hosts = [\"%s\"]\n", strings.Join(e.hosts, `", "`))
		}
	}
	return b.String()
}

// leafFor handshakes with the TLS listener at addr, sending server name
// sni ("" sends none), and returns the certificate the server sent, or
// the handshake's error.
func leafFor(addr, sni string) (*x509.Certificate, error) {
	conf := &tls.Config{ServerName: sni, InsecureSkipVerify: true}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, conf)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0], nil
}

// servedCN returns the common name of the certificate served for sni.
func servedCN(t testing.TB, addr, sni string) string {
	t.Helper()
	leaf, err := leafFor(addr, sni)
	if err != nil {
		t.Fatalf("handshake with server name %q: %v", sni, err)
	}
	return leaf.Subject.CommonName
}

var inAYear = time.Now().Add(365 * 24 * time.Hour)

// TestCertsBySNI: each server name gets the certificate listed for it,
// then the one whose wildcard covers it, then the default; a client that
// sends no server name gets the default.
func TestCertsBySNI(t *testing.T) {
	dir := t.TempDir()
	def := writeCert(t, dir, "default", "default", inAYear, "default.example.com", "b.example.com")
	a := writeCert(t, dir, "a", "a", inAYear, "a.example.com", "alias.example.org")
	b := writeCert(t, dir, "b", "b", inAYear, "b.example.com", "*.b.example.com")
	w := writeCert(t, dir, "wild", "wild", inAYear, "*.wild.example.com")
	p := startProxy(t, tlsTOML(&def, "0s",
		certEntry{a, []string{"a.example.com", "alias.example.org"}},
		certEntry{files: b}, // serves its DNS names
		certEntry{w, []string{"*.wild.example.com"}},
	)+oneApp("", nil))

	for _, tc := range []struct{ sni, want string }{
		{"a.example.com", "a"},
		{"A.Example.COM", "a"},
		{"alias.example.org", "a"},
		{"b.example.com", "b"}, // the default's DNS name too: a [[tls.certificate]] wins
		{"x.b.example.com", "b"},
		{"x.wild.example.com", "wild"},
		{"y.x.wild.example.com", "default"}, // a wildcard covers one label
		{"wild.example.com", "default"},
		{"default.example.com", "default"},
		{"other.example.net", "default"},
		{"", "default"},
	} {
		leaf, err := leafFor(p.httpsAddr, tc.sni)
		if err != nil {
			t.Errorf("server name %q: handshake: %v", tc.sni, err)
			continue
		}
		if got := leaf.Subject.CommonName; got != tc.want {
			t.Errorf("server name %q: got certificate %q, want %q", tc.sni, got, tc.want)
		}
		if tc.want != "default" || tc.sni == "default.example.com" {
			if err := leaf.VerifyHostname(tc.sni); err != nil {
				t.Errorf("server name %q: served certificate does not cover it: %v", tc.sni, err)
			}
		}
	}
}

// TestCertsDefaultIsFirst: without [tls] cert_file the first
// [[tls.certificate]] is the default.
func TestCertsDefaultIsFirst(t *testing.T) {
	dir := t.TempDir()
	a := writeCert(t, dir, "a", "a", inAYear, "a.example.com")
	b := writeCert(t, dir, "b", "b", inAYear, "b.example.com")
	p := startProxy(t, tlsTOML(nil, "0s", certEntry{files: a}, certEntry{files: b})+oneApp("", nil))
	for _, tc := range []struct{ sni, want string }{
		{"", "a"}, {"other.example.com", "a"}, {"b.example.com", "b"}, {"a.example.com", "a"},
	} {
		if got := servedCN(t, p.httpsAddr, tc.sni); got != tc.want {
			t.Errorf("server name %q: got certificate %q, want %q", tc.sni, got, tc.want)
		}
	}
}

// TestCertsSelfSigned: with no certificate configured, a self-signed one
// covers the apps' hosts, and reloading has nothing to do.
func TestCertsSelfSigned(t *testing.T) {
	p := startProxy(t, oneApp("", nil))
	leaf, err := leafFor(p.httpsAddr, webHost)
	if err != nil {
		t.Fatal(err)
	}
	if err := leaf.VerifyHostname(webHost); err != nil {
		t.Errorf("self-signed certificate: %v", err)
	}
	if err := p.srv.ReloadCertificates(); err != nil {
		t.Errorf("ReloadCertificates: got %v, want nil", err)
	}
	if n := testutil.ToFloat64(p.srv.certs.reloads.WithLabelValues("ok")); n != 0 {
		t.Errorf("reloads ok: got %v, want 0", n)
	}
}

// TestCertsTLSVersions: TLS 1.2 with AEAD suites and TLS 1.3 are served,
// with HTTP/2 and HTTP/1.1 by ALPN; TLS 1.1 and CBC suites are refused.
func TestCertsTLSVersions(t *testing.T) {
	p := startProxy(t, oneApp("", nil))
	for _, tc := range []struct {
		name      string
		conf      *tls.Config
		ok        bool
		wantProto string
	}{
		{"tls 1.0 and 1.1", &tls.Config{MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}, false, ""},
		{"tls 1.2", &tls.Config{MaxVersion: tls.VersionTLS12}, true, ""},
		{"tls 1.2 h2", &tls.Config{MaxVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}}, true, "h2"},
		{"tls 1.2 chacha20", &tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256}}, true, ""},
		{"tls 1.2 cbc only", &tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA}}, false, ""},
		{"tls 1.3 http/1.1", &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{"http/1.1"}}, true, "http/1.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conf := tc.conf.Clone()
			conf.ServerName, conf.InsecureSkipVerify = webHost, true
			c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", p.httpsAddr, conf)
			if !tc.ok {
				if err == nil {
					c.Close()
					t.Fatalf("handshake: got %s, want refused", tls.VersionName(c.ConnectionState().Version))
				}
				if !strings.Contains(err.Error(), "remote error") {
					t.Errorf("handshake: got %v, want the server's refusal", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("handshake: got %v, want success", err)
			}
			defer c.Close()
			st := c.ConnectionState()
			if st.Version == tls.VersionTLS12 && !strings.Contains(tls.CipherSuiteName(st.CipherSuite), "GCM") &&
				!strings.Contains(tls.CipherSuiteName(st.CipherSuite), "CHACHA20") {
				t.Errorf("cipher suite: got %s, want an AEAD one", tls.CipherSuiteName(st.CipherSuite))
			}
			if st.NegotiatedProtocol != tc.wantProto {
				t.Errorf("ALPN: got %q, want %q", st.NegotiatedProtocol, tc.wantProto)
			}
		})
	}
}

// TestCertsReloadPoll: with a reload interval, renewed files are served
// without any call, and a certificate's new DNS names with them.
func TestCertsReloadPoll(t *testing.T) {
	dir := t.TempDir()
	def := writeCert(t, dir, "default", "default-1", inAYear, "default.example.com")
	a := writeCert(t, dir, "a", "a-1", inAYear, "a.example.com")
	p := startProxy(t, tlsTOML(&def, "10ms", certEntry{files: a})+oneApp("", nil))
	if got := servedCN(t, p.httpsAddr, "a.example.com"); got != "a-1" {
		t.Fatalf("before: got certificate %q, want a-1", got)
	}

	writeCert(t, dir, "a", "a-2", inAYear, "a.example.com", "a2.example.com")
	eventually(t, 10*time.Second, "renewed certificate served", func() bool {
		return servedCN(t, p.httpsAddr, "a.example.com") == "a-2"
	})
	if got := servedCN(t, p.httpsAddr, "a2.example.com"); got != "a-2" {
		t.Errorf("new DNS name: got certificate %q, want a-2", got)
	}
	if got := servedCN(t, p.httpsAddr, ""); got != "default-1" {
		t.Errorf("no server name: got certificate %q, want default-1", got)
	}
	if n := testutil.ToFloat64(p.srv.certs.reloads.WithLabelValues("ok")); n < 1 {
		t.Errorf("reloads ok: got %v, want at least 1", n)
	}
}

// TestCertsReloadExplicit: with reload_interval 0 files are read again
// only by ReloadCertificates.
func TestCertsReloadExplicit(t *testing.T) {
	dir := t.TempDir()
	def := writeCert(t, dir, "default", "default-1", inAYear, "default.example.com")
	a := writeCert(t, dir, "a", "a-1", inAYear, "a.example.com")
	p := startProxy(t, tlsTOML(&def, "0s", certEntry{a, []string{"a.example.com"}})+oneApp("", nil))

	writeCert(t, dir, "a", "a-2", inAYear, "a.example.com")
	writeCert(t, dir, "default", "default-2", inAYear, "default.example.com")
	if got := servedCN(t, p.httpsAddr, "a.example.com"); got != "a-1" {
		t.Errorf("before reload: got certificate %q, want a-1", got)
	}
	if err := p.srv.ReloadCertificates(); err != nil {
		t.Fatalf("ReloadCertificates: got %v, want nil", err)
	}
	for _, tc := range []struct{ sni, want string }{{"a.example.com", "a-2"}, {"", "default-2"}} {
		if got := servedCN(t, p.httpsAddr, tc.sni); got != tc.want {
			t.Errorf("after reload, server name %q: got certificate %q, want %q", tc.sni, got, tc.want)
		}
	}
	if ok, bad := testutil.ToFloat64(p.srv.certs.reloads.WithLabelValues("ok")), testutil.ToFloat64(p.srv.certs.reloads.WithLabelValues("error")); ok != 2 || bad != 0 {
		t.Errorf("reloads: got ok %v error %v, want ok 2 error 0", ok, bad)
	}
}

// TestCertsReloadBroken: a reload that cannot load a certificate names the
// file, counts an error and keeps the previous certificate in service; once
// the files are fixed the next reload serves them.
func TestCertsReloadBroken(t *testing.T) {
	otherCert, _ := makeCert(t, "other", inAYear, "a.example.com")
	for _, tc := range []struct {
		name     string
		breakIt  func(f certFiles) error
		wantFile func(f certFiles) string
		wantMsg  string
	}{
		{"missing key", func(f certFiles) error { return os.Remove(f.key) },
			func(f certFiles) string { return f.key }, "no such file"},
		{"missing certificate", func(f certFiles) error { return os.Remove(f.cert) },
			func(f certFiles) string { return f.cert }, "no such file"},
		{"bad PEM", func(f certFiles) error { return os.WriteFile(f.cert, []byte("not a certificate\n"), 0o600) },
			func(f certFiles) string { return f.cert }, "PEM"},
		{"key mismatch", func(f certFiles) error { return os.WriteFile(f.cert, otherCert, 0o600) },
			func(f certFiles) string { return f.cert }, "does not match"},
		{"directory for key", func(f certFiles) error {
			if err := os.Remove(f.key); err != nil {
				return err
			}
			return os.Mkdir(f.key, 0o700)
		}, func(f certFiles) string { return f.key }, "not a regular file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			a := writeCert(t, dir, "a", "a-1", inAYear, "a.example.com")
			p := startProxy(t, tlsTOML(nil, "0s", certEntry{files: a})+oneApp("", nil))
			if err := tc.breakIt(a); err != nil {
				t.Fatal(err)
			}
			err := p.srv.ReloadCertificates()
			if err == nil || !strings.Contains(err.Error(), tc.wantFile(a)) || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("ReloadCertificates: got %v, want an error naming %s and saying %q", err, tc.wantFile(a), tc.wantMsg)
			}
			if got := servedCN(t, p.httpsAddr, "a.example.com"); got != "a-1" {
				t.Errorf("after a failed reload: got certificate %q, want a-1 (the previous)", got)
			}
			if ok, bad := testutil.ToFloat64(p.srv.certs.reloads.WithLabelValues("ok")), testutil.ToFloat64(p.srv.certs.reloads.WithLabelValues("error")); ok != 0 || bad != 1 {
				t.Errorf("reloads: got ok %v error %v, want ok 0 error 1", ok, bad)
			}

			os.Remove(a.key) // a directory in one case
			writeCert(t, dir, "a", "a-2", inAYear, "a.example.com")
			if err := p.srv.ReloadCertificates(); err != nil {
				t.Fatalf("ReloadCertificates after the fix: got %v, want nil", err)
			}
			if got := servedCN(t, p.httpsAddr, "a.example.com"); got != "a-2" {
				t.Errorf("after the fix: got certificate %q, want a-2", got)
			}
		})
	}
}

// TestCertsReloadBrokenPoll: the poller keeps the previous certificate
// when the files break, counts the failure once however many polls see
// it, and serves the files once they are fixed.
func TestCertsReloadBrokenPoll(t *testing.T) {
	dir := t.TempDir()
	a := writeCert(t, dir, "a", "a-1", inAYear, "a.example.com")
	p := startProxy(t, tlsTOML(nil, "5ms", certEntry{files: a})+oneApp("", nil))
	errors := p.srv.certs.reloads.WithLabelValues("error")
	if err := os.Link(a.cert, a.cert+".orig"); err != nil {
		t.Fatal(err)
	}

	replaceFile(t, a.cert, []byte("-----BEGIN CERTIFICATE-----\ntruncated\n"))
	eventually(t, 10*time.Second, "failed reload counted", func() bool { return testutil.ToFloat64(errors) == 1 })
	if got := servedCN(t, p.httpsAddr, "a.example.com"); got != "a-1" {
		t.Errorf("broken files: got certificate %q, want a-1 (the previous)", got)
	}

	// The same key, so that no poll sees a new certificate with an old key.
	key, err := tls.LoadX509KeyPair(a.cert+".orig", a.key)
	if err != nil {
		t.Fatal(err)
	}
	fixed, _ := makeCertWithKey(t, key.PrivateKey.(*ecdsa.PrivateKey), "a-2", inAYear, "a.example.com")
	replaceFile(t, a.cert, fixed)
	eventually(t, 10*time.Second, "fixed certificate served", func() bool {
		return servedCN(t, p.httpsAddr, "a.example.com") == "a-2"
	})
	if n := testutil.ToFloat64(errors); n != 1 {
		t.Errorf("reload errors: got %v, want 1 (counted once)", n)
	}
}

// TestCertsExpiryGauge: each configured certificate's not-after time is
// exported by its first host.
func TestCertsExpiryGauge(t *testing.T) {
	dir := t.TempDir()
	soon := time.Now().Add(48 * time.Hour).Truncate(time.Second)
	def := writeCert(t, dir, "default", "default", inAYear.Truncate(time.Second), "default.example.com")
	a := writeCert(t, dir, "a", "a", soon, "a.example.com")
	reg := prometheus.NewRegistry()
	_, selfSigned, err := newCertStore(config.TLS{CertFile: def.cert, KeyFile: def.key,
		Certificates: []config.TLSCertificate{{CertFile: a.cert, KeyFile: a.key, Hosts: []string{"*.a.example.com"}}}},
		nil, slog.New(slog.DiscardHandler), reg)
	if err != nil || selfSigned {
		t.Fatalf("newCertStore: got self-signed %v, error %v; want neither", selfSigned, err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "godwit_tls_certificate_expiry_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			got[m.GetLabel()[0].GetValue()] = m.GetGauge().GetValue()
		}
	}
	want := map[string]float64{"default.example.com": float64(inAYear.Truncate(time.Second).Unix()), "*.a.example.com": float64(soon.Unix())}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("godwit_tls_certificate_expiry_seconds: got %v, want %v", got, want)
	}
}

// TestCertsLoadErrors: New fails, naming the file, when a configured
// certificate cannot be loaded.
func TestCertsLoadErrors(t *testing.T) {
	dir := t.TempDir()
	a := writeCert(t, dir, "a", "a", inAYear, "a.example.com")
	b := writeCert(t, dir, "b", "b", inAYear, "b.example.com")
	missing := filepath.Join(dir, "missing.pem")
	for _, tc := range []struct {
		name string
		tls  config.TLS
		want []string
	}{
		{"missing default", config.TLS{CertFile: missing, KeyFile: a.key}, []string{missing, "no such file"}},
		{"missing certificate", config.TLS{Certificates: []config.TLSCertificate{{CertFile: a.cert, KeyFile: a.key}, {CertFile: missing, KeyFile: b.key}}}, []string{missing, "no such file"}},
		{"key of another certificate", config.TLS{Certificates: []config.TLSCertificate{{CertFile: a.cert, KeyFile: b.key}}}, []string{a.cert, "does not match"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := config.Parse([]byte(proxyConfig(oneApp("", nil))), "t.toml")
			if err != nil {
				t.Fatal(err)
			}
			cfg.TLS = tc.tls
			s, err := New(cfg, nil, prometheus.NewRegistry())
			if err == nil {
				s.closeMachines()
				t.Fatalf("New: got a server, want an error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("New: got error %q, want it to contain %q", err, w)
				}
			}
		})
	}
}

// BenchmarkCertsPick measures the certificate choice of a handshake.
func BenchmarkCertsPick(b *testing.B) {
	dir := b.TempDir()
	a := writeCert(b, dir, "a", "a", inAYear, "a.example.com", "*.w.example.com")
	st, _, err := newCertStore(config.TLS{Certificates: []config.TLSCertificate{{CertFile: a.cert, KeyFile: a.key}}},
		nil, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		b.Fatal(err)
	}
	hellos := []*tls.ClientHelloInfo{{ServerName: "a.example.com"}, {ServerName: "x.w.example.com"}, {ServerName: "other.example.com"}}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if c, _ := st.getCertificate(hellos[i%len(hellos)]); c == nil {
			b.Fatal("no certificate")
		}
	}
}
