package backhaul

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"

	"github.com/quic-go/quic-go"
)

// ALPN protocol names: each end offers only the one its Protocol speaks,
// so a QUIC client cannot end up talking to something else on the port.
const (
	alpnH3 = "h3"
	alpnH2 = "h2"
)

func alpn(protocol string) string {
	switch protocol {
	case ProtocolH2:
		return alpnH2
	case ProtocolMux:
		return alpnMux
	}
	return alpnH3
}

// Pinning replaces the web PKI here, which is why both configs below turn
// Go's chain verification off (InsecureSkipVerify on the client,
// RequireAnyClientCert on the server) and verify in VerifyConnection
// instead. That is safe because VerifyConnection runs on every handshake,
// full or resumed, and aborts it on error; and because TLS itself has
// already proved that the peer holds the private key of the certificate it
// presented (CertificateVerify). A certificate whose fingerprint is pinned
// is therefore exactly the peer gossip vouched for; names and dates, which
// chain verification would check, carry no information for a self-signed
// certificate made at start.

// serverTLS is the TLS configuration of a Server. refused is told of every
// client the handshake turned away.
func serverTLS(id *Identity, pins Pins, opts *Options, refused func(error)) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.Cert},
		ClientAuth:   tls.RequireAnyClientCert,
		NextProtos:   []string{alpn(opts.Protocol)},
		VerifyConnection: func(cs tls.ConnectionState) error {
			err := verifyClient(cs.PeerCertificates, pins, opts.CAPool)
			if err != nil {
				refused(err)
			}
			return err
		},
	}
}

// clientTLS is the TLS configuration for dialling the peer whose
// certificate must have fingerprint peerFP (or chain to opts.CAPool).
func clientTLS(id *Identity, opts *Options, peerFP string) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		Certificates:       []tls.Certificate{id.Cert},
		NextProtos:         []string{alpn(opts.Protocol)},
		InsecureSkipVerify: true,              // see the comment above serverTLS
		ServerName:         "godwit-backhaul", // peers go by address; no name is checked
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyServer(cs.PeerCertificates, peerFP, opts.CAPool)
		},
	}
}

// verifyClient admits a client whose certificate is pinned, or chains to
// pool when one is set.
func verifyClient(certs []*x509.Certificate, pins Pins, pool *x509.CertPool) error {
	if len(certs) == 0 {
		return errors.New("backhaul: client sent no certificate")
	}
	if pool != nil {
		if err := verifyChain(certs, pool, x509.ExtKeyUsageClientAuth); err != nil {
			return fmt.Errorf("backhaul: client certificate %q: %w", certs[0].Subject.CommonName, err)
		}
		return nil
	}
	fp := Fingerprint(certs[0].Raw)
	if !pins(fp) {
		return fmt.Errorf("backhaul: client certificate fingerprint %s (%q) is not a member's", short(fp), certs[0].Subject.CommonName)
	}
	return nil
}

// verifyServer admits a server whose certificate has fingerprint want, or
// chains to pool when one is set.
func verifyServer(certs []*x509.Certificate, want string, pool *x509.CertPool) error {
	if len(certs) == 0 {
		return errors.New("server sent no certificate")
	}
	if pool != nil {
		if err := verifyChain(certs, pool, x509.ExtKeyUsageServerAuth); err != nil {
			return fmt.Errorf("server certificate %q: %w", certs[0].Subject.CommonName, err)
		}
		return nil
	}
	if got := Fingerprint(certs[0].Raw); got != want {
		return &fingerprintError{got: got, want: want}
	}
	return nil
}

// fingerprintError is a server certificate that is not the pinned one.
type fingerprintError struct{ got, want string }

func (e *fingerprintError) Error() string {
	return fmt.Sprintf("certificate fingerprint %s is not the expected %s", short(e.got), short(e.want))
}

// verifyChain checks that certs[0] chains to pool through the other certs,
// for the given usage. Names are not checked: the CA vouches for
// membership, and peers are dialled by address.
func verifyChain(certs []*x509.Certificate, pool *x509.CertPool, usage x509.ExtKeyUsage) error {
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{
		Roots:         pool,
		Intermediates: inter,
		KeyUsages:     []x509.ExtKeyUsage{usage},
	})
	return err
}

// refusedByPeer reports whether err says the peer aborted the TLS handshake
// with an alert: in TLS 1.3 the server checks the client's certificate
// after the client considers the handshake done, so a peer that does not
// pin this node shows up as an alert on the first read.
func refusedByPeer(err error) bool {
	if te, ok := errors.AsType[*quic.TransportError](err); ok {
		return te.Remote && te.ErrorCode.IsCryptoError()
	}
	if oe, ok := errors.AsType[*net.OpError](err); ok {
		return oe.Op == "remote error"
	}
	return false
}

// localRefusal gives an error this node's own certificate check raised
// during a QUIC handshake its own message: quic-go reports it as
// "CRYPTO_ERROR 0x12a (local): <message>", which buries the point.
func localRefusal(err error) error {
	te, ok := errors.AsType[*quic.TransportError](err)
	if !ok || te.Remote || !te.ErrorCode.IsCryptoError() {
		return err
	}
	for _, inner := range te.Unwrap() { // the TLS error, next to net.ErrClosed
		if inner != nil && inner != net.ErrClosed {
			return &messageError{msg: inner.Error(), err: err}
		}
	}
	return err
}

// messageError is err with a clearer message.
type messageError struct {
	msg string
	err error
}

func (e *messageError) Error() string { return e.msg }
func (e *messageError) Unwrap() error { return e.err }
