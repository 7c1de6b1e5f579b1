package backhaul

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"fmt"
	"math/big"
	"time"
)

// Identity is a node's backhaul certificate and its fingerprint. The same
// certificate authenticates the node as a server (to peers that dial it)
// and as a client (to peers it dials).
type Identity struct {
	Cert tls.Certificate
	// Fingerprint is the lower-case hex SHA-256 of the leaf certificate's
	// DER bytes: what gossip publishes and peers pin.
	Fingerprint string
}

// identityLifetime is how long a generated certificate is valid. Pinning
// ignores validity dates (the fingerprint is the identity, and a new one is
// made at every start), so this only matters to tools that inspect it.
const identityLifetime = 10 * 365 * 24 * time.Hour

// NewIdentity generates a self-signed ECDSA P-256 certificate for the node.
// nodeName becomes its common name, for humans reading it; peers never
// check names, only the fingerprint.
func NewIdentity(nodeName string) (*Identity, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("backhaul: identity: generate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("backhaul: identity: serial number: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: nodeName},
		NotBefore:             now.Add(-time.Hour), // tolerate clock skew between edges
		NotAfter:              now.Add(identityLifetime),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("backhaul: identity: create certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("backhaul: identity: parse certificate: %w", err)
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
	return &Identity{Cert: cert, Fingerprint: Fingerprint(der)}, nil
}

// LoadIdentity reads a certificate (with its chain, leaf first) and its
// private key from PEM files.
func LoadIdentity(certFile, keyFile string) (*Identity, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("backhaul: identity: %w", err)
	}
	return &Identity{Cert: cert, Fingerprint: Fingerprint(cert.Certificate[0])}, nil
}

// Fingerprint returns the lower-case hex SHA-256 of a certificate's DER
// bytes, the form Identity.Fingerprint, Pins and RoundTrip use.
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// Pins decides which peers may connect to a Server: it reports whether a
// certificate fingerprint belongs to a current member. Gossip supplies it;
// it is called once per connection, during the handshake, and must be safe
// for concurrent use.
type Pins func(fingerprint string) bool

// short abbreviates a fingerprint for error messages and logs.
func short(fp string) string {
	const n = 12
	if len(fp) <= n {
		return fp
	}
	return fp[:n] + "…"
}
