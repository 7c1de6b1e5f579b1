package proxy

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/godwit/godwit/config"
)

// maxPEMFile bounds a certificate or key file: a chain of a few
// certificates is a few KiB.
const maxPEMFile = 1 << 20

// certStore holds the certificates of listen.https and listen.http3 and
// picks one for each TLS handshake by the server name the client sent
// (SNI): a host of a certificate, then a wildcard one label up
// ("*.example.com" for "a.example.com"), then the default certificate. A
// client that sends no server name gets the default.
//
// The default is [tls] cert_file/key_file, or else the first
// [[tls.certificate]]. A certificate whose entry lists no hosts is served
// for the DNS names it carries (the default's too, after every listed host
// and every other certificate's names). With no certificate configured the
// store holds one self-signed certificate for the apps' hosts and never
// reloads.
//
// Handshakes read an immutable snapshot; a reload builds a new one and
// swaps it in. A file that cannot be loaded (missing, bad PEM, a key that
// does not match) leaves the certificate it was to replace in service.
type certStore struct {
	log      *slog.Logger
	interval time.Duration // between polls of the files; 0: no polling
	reloads  *prometheus.CounterVec

	cur atomic.Pointer[certSnapshot]

	mu    sync.Mutex    // serializes loads, file reads included; guards the sources' state. Handshakes never take it
	def   *certSource   // [tls] cert_file/key_file; nil when not set
	certs []*certSource // [[tls.certificate]], in file order
}

// certSource is one configured certificate and the state of its files.
type certSource struct {
	certFile, keyFile string
	hosts             []string // configured; empty: the certificate's DNS names

	cert *tls.Certificate // last loaded; its Leaf is set
	// seen is the hash of the contents (or read error) last loaded or
	// reported; pending, of contents that failed once on a poll and get
	// one more poll before they are reported (a renewal may be seen
	// halfway: a new certificate with the old key).
	seen, pending [sha256.Size]byte
}

// certSnapshot is what handshakes read: which certificate serves which
// name.
type certSnapshot struct {
	exact    map[string]*tls.Certificate // lower-case host
	wildcard map[string]*tls.Certificate // "example.com" for "*.example.com"
	def      *tls.Certificate
	expiry   map[string]time.Time // not-after by host label, configured certificates only
}

// newCertStore loads every configured certificate, or makes a self-signed
// one for the apps' hosts when there is none (selfSigned is then true).
// Metrics go to reg (nil: none). The store polls its files only while run
// runs.
func newCertStore(c config.TLS, apps []config.App, log *slog.Logger, reg prometheus.Registerer) (st *certStore, selfSigned bool, err error) {
	st = &certStore{
		log:      log,
		interval: c.ReloadInterval,
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "godwit_tls_reloads_total",
			Help: "Loads of TLS certificates after start, by outcome (ok, error): every certificate on an explicit reload, and on each poll those whose files changed. After an error the previous certificate stays in service.",
		}, []string{"outcome"}),
	}
	st.reloads.WithLabelValues("ok")
	st.reloads.WithLabelValues("error")
	if c.CertFile != "" {
		st.def = &certSource{certFile: c.CertFile, keyFile: c.KeyFile}
	}
	for _, cc := range c.Certificates {
		st.certs = append(st.certs, &certSource{certFile: cc.CertFile, keyFile: cc.KeyFile, hosts: cc.Hosts})
	}
	if st.def == nil && len(st.certs) == 0 {
		cert, err := selfSignedCert(apps)
		if err != nil {
			return nil, false, fmt.Errorf("self-signed tls certificate: %w", err)
		}
		st.cur.Store(&certSnapshot{def: &cert})
		selfSigned = true
	} else {
		for _, src := range st.sources() {
			if _, err := st.load(src, true); err != nil {
				return nil, false, err
			}
		}
		st.cur.Store(st.build())
	}
	if reg != nil {
		reg.MustRegister(st.reloads, newCertExpiryCollector(st))
	}
	return st, selfSigned, nil
}

// sources returns the configured certificates, the default first.
func (st *certStore) sources() []*certSource {
	if st.def == nil {
		return st.certs
	}
	return append([]*certSource{st.def}, st.certs...)
}

// getCertificate is tls.Config.GetCertificate. It does not block.
func (st *certStore) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	return st.cur.Load().pick(hello.ServerName), nil
}

// pick returns the certificate for server name name ("" when the client
// sent none).
func (s *certSnapshot) pick(name string) *tls.Certificate {
	if name == "" {
		return s.def
	}
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	if c := s.exact[name]; c != nil {
		return c
	}
	if i := strings.IndexByte(name, '.'); i > 0 {
		if c := s.wildcard[name[i+1:]]; c != nil {
			return c
		}
	}
	return s.def
}

// Reload reads every certificate file again and serves what loads. A
// certificate that fails to load keeps its previous one in service; the
// failures are returned, each naming its files, and counted, but not
// logged: the caller (SIGHUP, POST /v1/reload) reports them. With the
// self-signed development certificate there is nothing to reload.
func (st *certStore) Reload() error {
	return errors.Join(st.reload(true)...)
}

// Replace serves the certificates of a new [tls] section (a config
// reload): every one is loaded first, and if any fails nothing changes and
// the error, naming its files, is returned. Without any certificate the
// store serves a new self-signed one for apps' hosts. The reload interval
// stays (it changes at a restart).
func (st *certStore) Replace(c config.TLS, apps []config.App) error {
	next, _, err := newCertStore(c, apps, st.log, nil)
	if err != nil {
		return err
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	st.def, st.certs = next.def, next.certs
	st.cur.Store(next.cur.Load())
	return nil
}

// poll loads the certificates whose files changed since they were last
// tried, and logs what fails. A failure is reported when it persists for
// two polls (a renewal seen halfway loads at the next one), and once: not
// at every poll until the files change again.
func (st *certStore) poll() {
	for _, err := range st.reload(false) {
		st.log.Error("tls certificate reload failed: the previous certificate stays in service", "error", err)
	}
}

// reload loads the certificates, all of them (force) or those whose
// files changed, and swaps in a new snapshot if any loaded.
func (st *certStore) reload(force bool) []error {
	st.mu.Lock()
	defer st.mu.Unlock()
	var errs []error
	changed := false
	for _, src := range st.sources() {
		ok, err := st.load(src, force)
		switch {
		case err != nil:
			st.reloads.WithLabelValues("error").Inc()
			errs = append(errs, err)
		case ok:
			st.reloads.WithLabelValues("ok").Inc()
			changed = true
			st.log.Info("tls certificate reloaded", "cert_file", src.certFile, "hosts", src.names(),
				"not_after", src.cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
		}
	}
	if changed {
		st.cur.Store(st.build())
	}
	return errs
}

// load reads src's files and, if they differ from the last ones loaded
// or reported (or force), parses them into src.cert. It reports whether
// src.cert was replaced. On error src.cert stays as it was; without force
// an error is returned only for contents that already failed once. The
// caller holds st.mu, or is newCertStore.
func (st *certStore) load(src *certSource, force bool) (bool, error) {
	certPEM, keyPEM, readErr := src.read()
	var sum [sha256.Size]byte
	if readErr != nil {
		sum = sha256.Sum256([]byte(readErr.Error()))
	} else {
		h := sha256.New()
		h.Write(certPEM)
		h.Write([]byte{0})
		h.Write(keyPEM)
		h.Sum(sum[:0])
	}
	if !force && sum == src.seen {
		return false, nil
	}
	cert, err := parseKeyPair(certPEM, keyPEM, readErr)
	if err != nil {
		if !force && sum != src.pending {
			src.pending = sum // tried again at the next poll
			return false, nil
		}
		src.seen = sum
		return false, fmt.Errorf("load tls certificate %s (key %s): %w", src.certFile, src.keyFile, err)
	}
	src.seen = sum
	src.cert = cert
	st.check(src)
	return true, nil
}

// parseKeyPair parses a certificate chain and its key, both PEM; readErr
// is the error of reading them, if any.
func parseKeyPair(certPEM, keyPEM []byte, readErr error) (*tls.Certificate, error) {
	if readErr != nil {
		return nil, readErr
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	if cert.Leaf == nil { // GODEBUG x509keypairleaf=0
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, err
		}
	}
	return &cert, nil
}

// check warns about a loaded certificate that will not serve as
// configured: expired, or not valid for a host it is listed for.
func (st *certStore) check(src *certSource) {
	leaf := src.cert.Leaf
	if time.Now().After(leaf.NotAfter) {
		st.log.Warn("tls certificate has expired: clients will refuse it", "cert_file", src.certFile,
			"not_after", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	for _, h := range src.hosts {
		probe := h
		if rest, ok := strings.CutPrefix(h, "*."); ok {
			probe = "godwit-probe." + rest // a wildcard host needs a wildcard name
		}
		if leaf.VerifyHostname(probe) != nil {
			st.log.Warn("tls certificate is not valid for a host it is served for: clients will refuse it",
				"cert_file", src.certFile, "host", h, "dns_names", leaf.DNSNames)
		}
	}
	isDefault := src == st.def || st.def == nil && src == st.certs[0]
	if len(src.hosts) == 0 && len(leaf.DNSNames) == 0 && !isDefault {
		st.log.Warn("tls certificate has no DNS names and lists no hosts: it serves no server name",
			"cert_file", src.certFile)
	}
}

// read returns the contents of src's two files.
func (src *certSource) read() (certPEM, keyPEM []byte, err error) {
	if certPEM, err = config.ReadRegularFile(src.certFile, maxPEMFile); err != nil {
		return nil, nil, err
	}
	if keyPEM, err = config.ReadRegularFile(src.keyFile, maxPEMFile); err != nil {
		return nil, nil, err
	}
	return certPEM, keyPEM, nil
}

// names returns the server names src serves: its listed hosts, or the DNS
// names of its certificate.
func (src *certSource) names() []string {
	if len(src.hosts) > 0 {
		return src.hosts
	}
	names := make([]string, 0, len(src.cert.Leaf.DNSNames))
	for _, n := range src.cert.Leaf.DNSNames {
		names = append(names, strings.ToLower(strings.TrimSuffix(n, ".")))
	}
	return names
}

// label names src in the expiry gauge: its first host, else its
// certificate's first DNS name or common name, else its file name.
func (src *certSource) label() string {
	if names := src.names(); len(names) > 0 {
		return names[0]
	}
	if cn := src.cert.Leaf.Subject.CommonName; cn != "" {
		return cn
	}
	return filepath.Base(src.certFile)
}

// build makes the snapshot of the loaded certificates. A name goes to the
// first certificate that claims it: listed hosts first (config makes them
// unique), then the DNS names of the other [[tls.certificate]] entries in
// file order, then the default's.
func (st *certStore) build() *certSnapshot {
	s := &certSnapshot{
		exact:    make(map[string]*tls.Certificate),
		wildcard: make(map[string]*tls.Certificate),
		expiry:   make(map[string]time.Time),
	}
	add := func(name string, c *tls.Certificate) {
		m := s.exact
		if rest, ok := strings.CutPrefix(name, "*."); ok {
			m, name = s.wildcard, rest
		}
		if _, taken := m[name]; !taken {
			m[name] = c
		}
	}
	for _, src := range st.certs {
		for _, h := range src.hosts {
			add(h, src.cert)
		}
	}
	for _, src := range st.certs {
		if len(src.hosts) == 0 {
			for _, n := range src.names() {
				add(n, src.cert)
			}
		}
	}
	if st.def != nil {
		for _, n := range st.def.names() {
			add(n, st.def.cert)
		}
		s.def = st.def.cert
	} else {
		s.def = st.certs[0].cert
	}
	for _, src := range st.sources() {
		l, na := src.label(), src.cert.Leaf.NotAfter
		if t, dup := s.expiry[l]; !dup || na.Before(t) {
			s.expiry[l] = na
		}
	}
	return s
}

// run polls the certificate files every reload interval until ctx ends.
// It returns at once when the interval is 0 or no file is configured.
func (st *certStore) run(ctx context.Context) {
	if st.interval <= 0 || (st.def == nil && len(st.certs) == 0) {
		return
	}
	t := time.NewTicker(st.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			st.poll()
		}
	}
}

// certExpiryCollector exports the not-after time of every configured
// certificate in service, from the store's current snapshot.
type certExpiryCollector struct {
	st   *certStore
	desc *prometheus.Desc
}

func newCertExpiryCollector(st *certStore) certExpiryCollector {
	return certExpiryCollector{st, prometheus.NewDesc("godwit_tls_certificate_expiry_seconds",
		"Not-after time of each configured TLS certificate in service, as Unix seconds (subtract time() for the time left), by its first host (the earliest when two certificates share one). The self-signed development certificate is not shown.",
		[]string{"host"}, nil)}
}

func (c certExpiryCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c certExpiryCollector) Collect(ch chan<- prometheus.Metric) {
	for host, t := range c.st.cur.Load().expiry {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(t.Unix()), host)
	}
}

// ReloadCertificates reads the TLS certificate files of listen.https and
// listen.http3 again (SIGHUP, POST /v1/reload); see certStore.Reload. It
// returns nil when neither listener is on.
func (s *Server) ReloadCertificates() error {
	if s.certs == nil {
		return nil
	}
	return s.certs.Reload()
}
