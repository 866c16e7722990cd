// Package config owns tenantguard's process configuration: the flags of
// `tenantguard serve`, the same keys in a config file (YAML, TOML or JSON), and
// TENANTGUARD_<NAME> environment variables, merged by viper with the
// precedence flag > environment > file > default.
package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"
)

// Config is the validated process configuration of `tenantguard serve`.
type Config struct {
	Listen   string // client listener, host:port
	Upstream string // postgres:// URL of the server; its credentials serve tenantguard's own connections
	Policy   string // policy YAML file
	Admin    string // admin listener (/metrics, /healthz, /readyz); "" or "off" disables it
	LogLevel string // debug, info, warn, error
	// LogFormat is json or console; "" picks console on a terminal, json elsewhere.
	LogFormat string

	TLSCert string // server certificate for client TLS (SSLRequest); "" answers 'N'
	TLSKey  string

	AuditFile string // audit JSON lines go here; "" = stdout
	// AuditFlush is how often buffered audit events are written; 0 writes
	// each event at once.
	AuditFlush time.Duration
	// AuditSample is the fraction of allowed statements audited (rejected,
	// rewritten and bypassed ones always are); 1 logs everything.
	AuditSample float64
	// AuditDecisions, when set, limits statement events to these decisions.
	AuditDecisions []string
	// Pprof mounts /debug/pprof/ on the admin listener.
	Pprof bool

	StartupTimeout time.Duration
	DrainTimeout   time.Duration
	MaxMessageSize int
	CatalogRefresh time.Duration
	// Procs is the number of OS threads running Go code (GOMAXPROCS);
	// 0 picks it (see the procs key).
	Procs int
	// EventLoops is the number of epoll loops relaying established
	// plain-socket sessions: 0 one per proc, -1 none.
	EventLoops int
	// PrepareSimple sends repeated simple-protocol statement shapes
	// upstream as prepared statements (a Bind of their literals).
	PrepareSimple  bool
	ConfigFileUsed string
}

// Defaults of the keys that have one.
const (
	DefaultListen         = "127.0.0.1:6432"
	DefaultAdmin          = "127.0.0.1:9187"
	DefaultLogLevel       = "info"
	DefaultStartupTimeout = 10 * time.Second
	DefaultDrainTimeout   = 30 * time.Second
	DefaultMaxMessageSize = 64 << 20
	DefaultCatalogRefresh = time.Minute
	DefaultAuditFlush     = 100 * time.Millisecond
)

// keys are the configuration keys, as flag names; the file uses the same
// names (nested keys such as audit.file are written as sections), and the
// environment uses TENANTGUARD_ plus the name upper-cased with . and - as _.
var keys = []struct {
	name, usage string
	def         any
}{
	{"config", "configuration file (YAML, TOML or JSON)", ""},
	{"listen", "address clients connect to", DefaultListen},
	{"upstream", "PostgreSQL server, as a postgres:// URL (its credentials are for tenantguard's own catalog connection)", ""},
	{"policy", "policy YAML file", ""},
	{"admin", "admin listener for /metrics, /healthz, /readyz (\"off\" disables it)", DefaultAdmin},
	{"log-level", "log level: debug, info, warn, error", DefaultLogLevel},
	{"log-format", "log format: json or console (default: console on a terminal, else json)", ""},
	{"tls.cert", "certificate file for client TLS; without it SSLRequest is declined", ""},
	{"tls.key", "key file for client TLS", ""},
	{"audit.file", "audit log file (JSON lines); default stdout", ""},
	{"audit.flush", "how often buffered audit events are written (0: write each event at once)", DefaultAuditFlush},
	{"audit.sample", "fraction (0..1] of allowed statements written to the audit log; rejections and rewrites are always written", 1.0},
	{"audit.decisions", "comma-separated decisions to audit (allowed,rewritten,rejected,bypassed); default all", ""},
	{"pprof", "serve /debug/pprof/ on the admin listener", false},
	{"startup-timeout", "time a client has to complete its startup and authentication", DefaultStartupTimeout},
	{"drain-timeout", "on SIGTERM, how long open sessions may run before they are closed", DefaultDrainTimeout},
	{"max-message-size", "largest protocol message accepted from a client, in bytes", DefaultMaxMessageSize},
	{"catalog-refresh", "how often the upstream catalog is reloaded", DefaultCatalogRefresh},
	{"procs", "threads running tenantguard's Go code (GOMAXPROCS); 0: GOMAXPROCS from the environment, else the CPU or container limit Go sees, else half the machine's CPUs plus one", 0},
	{"prepare-simple", "send a simple-protocol statement that differs from an earlier one only in its literals as a Bind of them to a statement prepared upstream once per session (PostgreSQL then skips its parse and analysis, and may plan it generically as it does prepared statements); turn it off when the upstream is a pooler in transaction mode, which cannot keep a session's prepared statements", true},
	{"event-loops", "epoll loops relaying established plain-TCP sessions (Linux); 0: as many as procs leaves after the spare ones (1, and 1 + (procs+2)/4 from 4 procs on), at least one; when procs leaves the spare ones after all loops each waits on its own thread; -1: none (two goroutines per session, as for TLS)", 0},
}

// BindFlags declares every key as a flag on fs and binds it, with the
// environment, into v.
func BindFlags(v *viper.Viper, fs *pflag.FlagSet) {
	for _, k := range keys {
		switch d := k.def.(type) {
		case string:
			fs.String(k.name, d, k.usage)
		case time.Duration:
			fs.Duration(k.name, d, k.usage)
		case int:
			fs.Int(k.name, d, k.usage)
		case float64:
			fs.Float64(k.name, d, k.usage)
		case bool:
			fs.Bool(k.name, d, k.usage)
		}
		_ = v.BindPFlag(k.name, fs.Lookup(k.name))
	}
	v.SetEnvPrefix("TENANTGUARD")
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_", "-", "_"))
	v.AutomaticEnv()
}

// Load reads the config file (when one is named) and returns the validated
// configuration. Every error names the key at fault.
func Load(v *viper.Viper) (*Config, error) {
	if file := v.GetString("config"); file != "" {
		v.SetConfigFile(file)
		if err := v.ReadInConfig(); err != nil {
			return nil, fmt.Errorf("config: read %s: %w", file, err)
		}
	}
	var errs []error
	dur := func(key string) time.Duration {
		d, err := parseDuration(v.Get(key))
		if err != nil || d <= 0 {
			errs = append(errs, fmt.Errorf("config: %s: want a positive duration such as 10s, got %q", key, fmt.Sprint(v.Get(key))))
		}
		return d
	}
	c := &Config{
		Listen:         v.GetString("listen"),
		Upstream:       v.GetString("upstream"),
		Policy:         v.GetString("policy"),
		Admin:          v.GetString("admin"),
		LogLevel:       strings.ToLower(v.GetString("log-level")),
		LogFormat:      strings.ToLower(v.GetString("log-format")),
		TLSCert:        v.GetString("tls.cert"),
		TLSKey:         v.GetString("tls.key"),
		AuditFile:      v.GetString("audit.file"),
		AuditSample:    v.GetFloat64("audit.sample"),
		AuditFlush:     v.GetDuration("audit.flush"),
		Pprof:          v.GetBool("pprof"),
		StartupTimeout: dur("startup-timeout"),
		DrainTimeout:   dur("drain-timeout"),
		CatalogRefresh: dur("catalog-refresh"),
		MaxMessageSize: v.GetInt("max-message-size"),
		Procs:          v.GetInt("procs"),
		EventLoops:     v.GetInt("event-loops"),
		PrepareSimple:  v.GetBool("prepare-simple"),
		ConfigFileUsed: v.ConfigFileUsed(),
	}
	if err := checkAddr("listen", c.Listen); err != nil {
		errs = append(errs, err)
	}
	if c.Admin == "off" {
		c.Admin = ""
	} else if err := checkAddr("admin", c.Admin); err != nil {
		errs = append(errs, err)
	}
	if c.Upstream == "" {
		errs = append(errs, errors.New("config: upstream: required (a postgres:// URL, e.g. postgres://tenantguard@127.0.0.1:5432/app)"))
	} else if u, err := url.Parse(c.Upstream); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") || u.Host == "" {
		// The URL may hold a password: never echo it.
		errs = append(errs, errors.New("config: upstream: want a postgres://[user[:password]@]host[:port]/database URL"))
	}
	if c.Policy == "" {
		errs = append(errs, errors.New("config: policy: required (a policy YAML file)"))
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("config: log-level: want debug, info, warn or error, got %q", c.LogLevel))
	}
	switch c.LogFormat {
	case "", "json", "console":
	default:
		errs = append(errs, fmt.Errorf("config: log-format: want json or console, got %q", c.LogFormat))
	}
	if c.AuditFlush < 0 {
		errs = append(errs, fmt.Errorf("config: audit.flush: want a duration of 0 or more, got %v", c.AuditFlush))
	}
	if c.AuditSample <= 0 || c.AuditSample > 1 {
		errs = append(errs, fmt.Errorf("config: audit.sample: want a fraction in (0, 1], got %v", c.AuditSample))
	}
	for _, d := range splitList(v.GetString("audit.decisions")) {
		switch d {
		case "allowed", "rewritten", "rejected", "bypassed":
			c.AuditDecisions = append(c.AuditDecisions, d)
		default:
			errs = append(errs, fmt.Errorf("config: audit.decisions: want allowed, rewritten, rejected or bypassed, got %q", d))
		}
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		errs = append(errs, errors.New("config: tls.cert and tls.key: set both or neither"))
	}
	if c.Procs < 0 {
		errs = append(errs, fmt.Errorf("config: procs: want 0 (automatic) or a positive number, got %d", c.Procs))
	}
	if c.EventLoops < -1 {
		errs = append(errs, fmt.Errorf("config: event-loops: want -1 (none), 0 (automatic) or a positive number, got %d", c.EventLoops))
	}
	if c.MaxMessageSize < 1024 {
		errs = append(errs, fmt.Errorf("config: max-message-size: want at least 1024 bytes, got %d", c.MaxMessageSize))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
}

func checkAddr(key, addr string) error {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("config: %s: want host:port, got %q", key, addr)
	}
	return nil
}

func parseDuration(x any) (time.Duration, error) {
	switch d := x.(type) {
	case time.Duration:
		return d, nil
	case int:
		return time.Duration(d) * time.Second, nil
	case float64:
		return time.Duration(d * float64(time.Second)), nil
	case string:
		return time.ParseDuration(d)
	default:
		return 0, fmt.Errorf("not a duration")
	}
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '[' || r == ']' }) {
		out = append(out, strings.ToLower(f))
	}
	return out
}
