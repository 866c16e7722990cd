package config

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"github.com/stretchr/testify/require"
)

func load(t *testing.T, args []string, env map[string]string) (*Config, error) {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
	v := viper.New()
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	BindFlags(v, fs)
	require.NoError(t, fs.Parse(args))
	return Load(v)
}

func TestDefaults(t *testing.T) {
	c, err := load(t, []string{"--upstream", "postgres://tg@127.0.0.1:5432/app", "--policy", "p.yaml"}, nil)
	require.NoError(t, err)
	require.Equal(t, DefaultListen, c.Listen)
	require.Equal(t, DefaultAdmin, c.Admin)
	require.Equal(t, "info", c.LogLevel)
	require.Equal(t, DefaultDrainTimeout, c.DrainTimeout)
	require.Equal(t, 1.0, c.AuditSample)
	require.Empty(t, c.AuditDecisions)
	require.Zero(t, c.Procs, "procs: automatic")
	require.Zero(t, c.EventLoops, "event-loops: automatic")
}

func TestPrecedenceFlagEnvFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "tenantguard.yaml")
	require.NoError(t, os.WriteFile(file, []byte(`
upstream: postgres://file@127.0.0.1/app
policy: file.yaml
listen: 127.0.0.1:7000
drain-timeout: 5s
audit:
  file: /var/log/audit.log
  decisions: rejected,rewritten
admin: "off"
`), 0o644))
	c, err := load(t, []string{"--config", file, "--listen", "127.0.0.1:7001"},
		map[string]string{"TENANTGUARD_POLICY": "env.yaml", "TENANTGUARD_AUDIT_SAMPLE": "0.25", "TENANTGUARD_PROCS": "3"})
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1:7001", c.Listen, "flag wins over file")
	require.Equal(t, "env.yaml", c.Policy, "environment wins over file")
	require.Equal(t, "postgres://file@127.0.0.1/app", c.Upstream)
	require.Equal(t, 5*time.Second, c.DrainTimeout)
	require.Equal(t, "/var/log/audit.log", c.AuditFile)
	require.Equal(t, []string{"rejected", "rewritten"}, c.AuditDecisions)
	require.Equal(t, 0.25, c.AuditSample)
	require.Equal(t, 3, c.Procs)
	require.Empty(t, c.Admin, `admin "off" disables the admin listener`)
}

func TestErrorsNameTheKeyAndHideThePassword(t *testing.T) {
	_, err := load(t, []string{"--upstream", "mysql://u:hunter2@h/db", "--log-level", "loud", "--listen", "nope",
		"--audit.sample", "2", "--audit.decisions", "maybe", "--procs", "-1", "--event-loops", "-2"}, nil)
	require.Error(t, err)
	msg := err.Error()
	for _, key := range []string{"upstream", "policy", "log-level", "listen", "audit.sample", "audit.decisions", "procs", "event-loops"} {
		require.Contains(t, msg, "config: "+key+":")
	}
	require.NotContains(t, msg, "hunter2")
}
