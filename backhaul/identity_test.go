package backhaul

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestNewIdentity(t *testing.T) {
	id := newIdentity(t, "edge-iad-1")
	sum := sha256.Sum256(id.Cert.Certificate[0])
	if want := hex.EncodeToString(sum[:]); id.Fingerprint != want {
		t.Errorf("Fingerprint = %s, want the SHA-256 of the leaf %s", id.Fingerprint, want)
	}
	leaf := id.Cert.Leaf
	if leaf.Subject.CommonName != "edge-iad-1" {
		t.Errorf("common name %q, want %q", leaf.Subject.CommonName, "edge-iad-1")
	}
	if _, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok {
		t.Errorf("public key is %T, want ECDSA", leaf.PublicKey)
	}
	if other := newIdentity(t, "edge-iad-1"); other.Fingerprint == id.Fingerprint {
		t.Errorf("two identities share fingerprint %s", id.Fingerprint)
	}
}

func TestLoadIdentity(t *testing.T) {
	id := newIdentity(t, "edge-nrt-1")
	certFile, keyFile := writePEM(t, id.Cert.Certificate[0], id.Cert.PrivateKey.(*ecdsa.PrivateKey))
	loaded, err := LoadIdentity(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if loaded.Fingerprint != id.Fingerprint {
		t.Errorf("loaded fingerprint %s, want %s", loaded.Fingerprint, id.Fingerprint)
	}
	if _, err := LoadIdentity(certFile, filepath.Join(t.TempDir(), "missing.pem")); err == nil {
		t.Errorf("LoadIdentity with a missing key file: no error")
	}
}

// With an operator CA, peers are admitted by their chain instead of pins.
func TestCAPool(t *testing.T) {
	ca := newCA(t, "operator CA")
	stranger := newCA(t, "someone else")
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	forEachProtocol(t, func(t *testing.T, proto string) {
		opts := Options{Protocol: proto, CAPool: pool}
		h := &counter{}
		srv := startServer(t, "127.0.0.1:0", ca.issue(t, "edge-iad-1"), nil, h, opts)
		get := func(id *Identity) error {
			cli := NewClient(id, opts)
			defer cli.Close()
			req, _ := http.NewRequest(http.MethodGet, "https://backhaul/", nil)
			resp, err := cli.RoundTrip(req, srv.Addr(), "") // no pin needed
			if err != nil {
				return err
			}
			readAll(t, resp)
			return nil
		}
		if err := get(ca.issue(t, "edge-nrt-1")); err != nil {
			t.Fatalf("client with a certificate from the CA: %v", err)
		}
		err := get(stranger.issue(t, "intruder"))
		wantErr(t, err, []error{ErrPeerUnreachable}, "refused this node's certificate")
		if n := h.n.Load(); n != 1 {
			t.Errorf("handler ran %d times, want 1", n)
		}

		// And a client with the CA refuses a server from another.
		other := startServer(t, "127.0.0.1:0", stranger.issue(t, "impostor"), nil, h, Options{Protocol: proto, CAPool: pool})
		cli := NewClient(ca.issue(t, "edge-nrt-2"), opts)
		defer cli.Close()
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, "https://backhaul/", nil)
		_, err = cli.RoundTrip(req, other.Addr(), "")
		wantErr(t, err, []error{ErrPeerUnreachable}, "certificate signed by unknown authority")
	})
}

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key}
}

// issue makes a node certificate signed by the CA, loaded as an Identity
// from PEM files.
func (ca *testCA) issue(t *testing.T, name string) *Identity {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	id, err := LoadIdentity(writePEM(t, der, key))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// writePEM writes a certificate and its key as PEM files.
func writePEM(t *testing.T, der []byte, key *ecdsa.PrivateKey) (certFile, keyFile string) {
	t.Helper()
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}
