package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
)

// Defaults applied by NewServer to zero Config fields.
const (
	// DefaultMaxMessageSize bounds one client message. PostgreSQL itself
	// accepts up to 1 GiB; 64 MiB leaves room for large COPY rows and bulk
	// Bind parameters while capping what one client can make us buffer.
	DefaultMaxMessageSize = 64 << 20
	// DefaultStartupTimeout bounds the startup packet, TLS handshake and
	// authentication exchange of a new client.
	DefaultStartupTimeout = 10 * time.Second
	// DefaultDrainTimeout bounds how long Shutdown waits for open sessions.
	DefaultDrainTimeout = 30 * time.Second

	// maxStartupPacket mirrors PostgreSQL's MAX_STARTUP_PACKET_LENGTH.
	maxStartupPacket = 10000
	// maxBackendMessage mirrors PostgreSQL's own 1 GiB limit on a message.
	maxBackendMessage = 1 << 30
)

// Config configures a Server. Zero fields take the documented defaults.
type Config struct {
	// ListenAddr is the address ListenAndServe listens on, e.g. "127.0.0.1:6432".
	ListenAddr string
	// Upstream is the PostgreSQL server every session is relayed to.
	Upstream UpstreamConfig
	// TLSCertFile and TLSKeyFile, when both set, make the proxy answer
	// SSLRequest with 'S' and terminate the client's TLS; otherwise SSLRequest
	// is answered 'N'.
	TLSCertFile, TLSKeyFile string
	// MaxMessageSize caps one client message (header included); a larger one
	// ends the session with a FATAL 08P01 error. Default DefaultMaxMessageSize.
	MaxMessageSize int
	// StartupTimeout bounds the client's startup and authentication phase and
	// the upstream connect. Default DefaultStartupTimeout.
	StartupTimeout time.Duration
	// DrainTimeout bounds Shutdown when its context has no earlier deadline.
	// Default DefaultDrainTimeout.
	DrainTimeout time.Duration
	// Logger receives connection-level events; nil logs nothing.
	Logger *zap.Logger
	// Hooks intercept session traffic for the enforcement layer; nil relays
	// everything unchanged.
	Hooks Hooks
	// EventLoops is how many epoll loops relay established plain-socket
	// sessions (Linux): 0 as many as GOMAXPROCS leaves after the spare
	// processors (one, more from four processors on: spareProcs), at least
	// one; negative none (every session is relayed by goroutines of its
	// own, as TLS sessions always are). When GOMAXPROCS leaves the spare
	// processors after all the loops, each waits in epoll_pwait on a thread
	// of its own; otherwise they park on the runtime's poller
	// (eventloop_linux.go, loopWaiter).
	EventLoops int
}

// UpstreamConfig says how to reach the PostgreSQL server. User, Password
// and Database are for tenantguard's own connections (catalog loading,
// doctor); client sessions always use the client's own credentials.
type UpstreamConfig struct {
	Host string
	Port int
	// SSLMode is one of disable, allow, prefer, require, verify-ca,
	// verify-full, with libpq's meaning. Default prefer, as in libpq.
	SSLMode string
	// SSLRootCert is a PEM file of trusted CAs, or "system" for the system
	// pool. As in libpq, require with a root certificate verifies like verify-ca.
	SSLRootCert string
	// SSLCert and SSLKey are a client certificate presented to the upstream.
	SSLCert, SSLKey string
	// SSLServerName overrides the name verified by verify-full and sent as SNI.
	SSLServerName string
	// ConnectTimeout bounds the TCP connect; zero uses the server's StartupTimeout.
	ConnectTimeout time.Duration

	User, Password, Database string
}

// Addr returns host:port of the upstream.
func (u UpstreamConfig) Addr() string { return net.JoinHostPort(u.Host, strconv.Itoa(u.Port)) }

var sslModes = map[string]bool{"disable": true, "allow": true, "prefer": true, "require": true, "verify-ca": true, "verify-full": true}

// ParseUpstreamURL parses a postgres:// (or postgresql://) URL with the
// libpq query parameters sslmode, sslrootcert, sslcert, sslkey,
// sslservername and connect_timeout. Unknown parameters are refused so a
// typo cannot silently weaken TLS.
func ParseUpstreamURL(s string) (UpstreamConfig, error) {
	u, err := url.Parse(s)
	if err != nil {
		// url.Parse errors echo the input, which may hold a password.
		return UpstreamConfig{}, errors.New("proxy: upstream URL: malformed")
	}
	if u.Scheme != "postgres" && u.Scheme != "postgresql" {
		return UpstreamConfig{}, fmt.Errorf("proxy: upstream URL: scheme must be postgres:// or postgresql://, not %q", u.Scheme)
	}
	c := UpstreamConfig{Host: u.Hostname(), Port: 5432, SSLMode: "prefer"}
	if c.Host == "" {
		c.Host = "localhost"
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n <= 0 || n > 65535 {
			return UpstreamConfig{}, fmt.Errorf("proxy: upstream URL: bad port %q", p)
		}
		c.Port = n
	}
	if u.User != nil {
		c.User = u.User.Username()
		c.Password, _ = u.User.Password()
	}
	c.Database = strings.TrimPrefix(u.Path, "/")
	for k, vs := range u.Query() {
		v := vs[len(vs)-1]
		switch k {
		case "sslmode":
			if !sslModes[v] {
				return UpstreamConfig{}, fmt.Errorf("proxy: upstream URL: unknown sslmode %q", v)
			}
			c.SSLMode = v
		case "sslrootcert":
			c.SSLRootCert = v
		case "sslcert":
			c.SSLCert = v
		case "sslkey":
			c.SSLKey = v
		case "sslservername", "sslsni_name":
			c.SSLServerName = v
		case "connect_timeout":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return UpstreamConfig{}, fmt.Errorf("proxy: upstream URL: bad connect_timeout %q", v)
			}
			c.ConnectTimeout = time.Duration(n) * time.Second
		case "user":
			c.User = v
		case "password":
			c.Password = v
		case "dbname":
			c.Database = v
		default:
			return UpstreamConfig{}, fmt.Errorf("proxy: upstream URL: unsupported parameter %q", k)
		}
	}
	return c, nil
}

// tlsConfig builds the client-side TLS configuration for the upstream leg, or
// nil when sslmode is disable. It follows libpq: require encrypts without
// verifying (unless a root certificate is given, then it acts as verify-ca),
// verify-ca checks the chain only, verify-full also the host name.
func (u UpstreamConfig) tlsConfig() (*tls.Config, error) {
	mode := u.SSLMode
	if mode == "" {
		mode = "prefer"
	}
	if mode == "disable" {
		return nil, nil
	}
	serverName := u.SSLServerName
	if serverName == "" {
		serverName = u.Host
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if net.ParseIP(serverName) == nil {
		cfg.ServerName = serverName // SNI, as libpq's sslsni=1
	}
	if u.SSLCert != "" || u.SSLKey != "" {
		cert, err := tls.LoadX509KeyPair(u.SSLCert, u.SSLKey)
		if err != nil {
			return nil, fmt.Errorf("proxy: upstream client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	var roots *x509.CertPool
	if u.SSLRootCert != "" && u.SSLRootCert != "system" {
		pem, err := os.ReadFile(u.SSLRootCert)
		if err != nil {
			return nil, fmt.Errorf("proxy: upstream sslrootcert: %w", err)
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("proxy: upstream sslrootcert: no PEM certificate in %s", u.SSLRootCert)
		}
	} else if u.SSLRootCert == "system" {
		var err error
		if roots, err = x509.SystemCertPool(); err != nil {
			return nil, fmt.Errorf("proxy: system certificate pool: %w", err)
		}
	}
	switch mode {
	case "allow", "prefer":
		cfg.InsecureSkipVerify = true
	case "require":
		if u.SSLRootCert == "" {
			cfg.InsecureSkipVerify = true
			break
		}
		fallthrough
	case "verify-ca":
		if u.SSLRootCert == "" {
			return nil, fmt.Errorf("proxy: upstream sslmode=%s needs sslrootcert", mode)
		}
		cfg.InsecureSkipVerify = true // the chain is checked below, the name is not
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("proxy: upstream sent no certificate")
			}
			opts := x509.VerifyOptions{Roots: roots, Intermediates: x509.NewCertPool()}
			for _, c := range cs.PeerCertificates[1:] {
				opts.Intermediates.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(opts)
			return err
		}
	case "verify-full":
		if u.SSLRootCert == "" {
			return nil, errors.New("proxy: upstream sslmode=verify-full needs sslrootcert")
		}
		cfg.RootCAs = roots
		cfg.ServerName = serverName
	}
	return cfg, nil
}
