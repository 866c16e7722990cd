package proxy_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tenantguard/tenantguard/proxy"
)

func TestParseUpstreamURL(t *testing.T) {
	u, err := proxy.ParseUpstreamURL("postgres://tg:s3cret@db.internal:6543/app?sslmode=verify-full&sslrootcert=/ca.pem&sslservername=pg.example&connect_timeout=3")
	require.NoError(t, err)
	assert.Equal(t, proxy.UpstreamConfig{
		Host: "db.internal", Port: 6543, SSLMode: "verify-full", SSLRootCert: "/ca.pem", SSLServerName: "pg.example",
		ConnectTimeout: 3 * time.Second, User: "tg", Password: "s3cret", Database: "app",
	}, u)
	assert.Equal(t, "db.internal:6543", u.Addr())

	u, err = proxy.ParseUpstreamURL("postgresql://localhost")
	require.NoError(t, err)
	assert.Equal(t, 5432, u.Port)
	assert.Equal(t, "prefer", u.SSLMode, "libpq's default")

	for _, bad := range []string{
		"mysql://localhost/x",
		"postgres://localhost:99999/x",
		"postgres://localhost/x?sslmode=verify",
		"postgres://localhost/x?sslmod=disable",
		"postgres://localhost/x?connect_timeout=-1",
	} {
		_, err := proxy.ParseUpstreamURL(bad)
		assert.Error(t, err, bad)
	}
	// A malformed URL's error must not echo the password.
	_, err = proxy.ParseUpstreamURL("postgres://u:pa ss%zz@h/x")
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "pa ss")
}

func TestNewServerValidates(t *testing.T) {
	_, err := proxy.NewServer(proxy.Config{})
	assert.Error(t, err, "no upstream")
	_, err = proxy.NewServer(proxy.Config{Upstream: proxy.UpstreamConfig{Host: "h", SSLMode: "verify-full"}})
	assert.Error(t, err, "verify-full without sslrootcert")
	_, err = proxy.NewServer(proxy.Config{Upstream: proxy.UpstreamConfig{Host: "h", SSLMode: "verify-ca", SSLRootCert: "/nonexistent"}})
	assert.Error(t, err)
	_, err = proxy.NewServer(proxy.Config{Upstream: proxy.UpstreamConfig{Host: "h"}, TLSCertFile: "/x"})
	assert.Error(t, err, "certificate without key")
	s, err := proxy.NewServer(proxy.Config{Upstream: proxy.UpstreamConfig{Host: "h", SSLMode: "require"}})
	require.NoError(t, err)
	assert.Nil(t, s.Addr())
	assert.Equal(t, 0, s.ActiveSessions())
}
