package proxy_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"io"
	"os"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tenantguard/tenantguard/proxy"
	"github.com/tenantguard/tenantguard/proxy/pgtest"
)

// TLS client leg: the same lingering-close deadline is cleared by the
// frontend goroutine (answerReentry runs for every session).
func TestLostUpstreamEndsAnIdleTLSClientSession(t *testing.T) {
	c := pgtest.Shared(t)
	port := upstreamThatDies(t)
	p := startProxy(t, func(cfg *proxy.Config) {
		cfg.Upstream.Port = port
		cfg.TLSCertFile, cfg.TLSKeyFile = c.CertFile, c.KeyFile
	})
	for round := 0; round < 3; round++ {
		nc := p.dial(t)
		req := make([]byte, 8)
		binary.BigEndian.PutUint32(req, 8)
		binary.BigEndian.PutUint32(req[4:], 80877103)
		_, err := nc.Write(req)
		require.NoError(t, err)
		var b [1]byte
		_, err = io.ReadFull(nc, b[:])
		require.NoError(t, err)
		require.Equal(t, byte('S'), b[0])
		ca, err := os.ReadFile(c.CAFile)
		require.NoError(t, err)
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(ca)
		tc := tls.Client(nc, &tls.Config{RootCAs: pool, ServerName: "localhost"})
		require.NoError(t, tc.Handshake())
		fe := startup(t, tc)
		queryUntilLost(t, fe)
		requireSessionsGone(t, p, "round %d: TLS session outlived its lingering close", round)
		nc.Close()
	}
}
