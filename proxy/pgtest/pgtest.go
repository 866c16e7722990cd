// Package pgtest starts throwaway PostgreSQL clusters for tests: initdb and
// pg_ctl from the machine's PostgreSQL binaries, a free loopback port, a temp
// directory, and a fixed set of users for every authentication method
// tenantguard passes through. As root, the server runs as the postgres OS user.
//
// A test binary shares one cluster (Shared) and stops it in TestMain (Main);
// tests that need isolation create their own database in it (CreateDatabase).
package pgtest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Users and passwords created in every cluster. The superuser connects with
// trust; the others authenticate with the method in their name.
const (
	SuperUser     = "postgres"
	ScramUser     = "scram_user"
	ScramPassword = "scram-secret"
	MD5User       = "md5_user"
	MD5Password   = "md5-secret"
	PlainUser     = "plain_user" // cleartext password authentication
	PlainPassword = "plain-secret"
	AppUser       = "app_user" // ordinary role, trust authentication, not a superuser
)

// InstallHint tells a developer how to get the PostgreSQL binaries the
// database tests need.
const InstallHint = "PostgreSQL server binaries not found (initdb, pg_ctl): install them with `apt-get install postgresql-15` (Debian) or put pg_config on PATH"

// ErrNoBinaries is returned by Start when no PostgreSQL installation is found.
var ErrNoBinaries = errors.New("pgtest: " + InstallHint)

// Cluster is a running throwaway PostgreSQL cluster.
type Cluster struct {
	Host   string // always 127.0.0.1
	Port   int
	Dir    string // temp dir holding data/, certificates and the server log
	BinDir string
	// CAFile is the PEM file of the CA that signed the server certificate
	// (CN=localhost, SANs localhost and 127.0.0.1). TLS is always on; clients
	// choose with sslmode.
	CAFile string
	// CertFile and KeyFile are the server's certificate and key; tests may reuse
	// them as the proxy's own TLS certificate.
	CertFile, KeyFile string

	runAs string // OS user that owns the cluster ("" = current user)
	mu    sync.Mutex
	dbSeq int
}

// Options tunes Start.
type Options struct {
	// Settings are extra postgresql.conf lines (name -> value, value already quoted as needed).
	Settings map[string]string
}

// BinDir returns the directory holding initdb and pg_ctl, or "" when none is found.
func BinDir() string {
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		dir := strings.TrimSpace(string(out))
		if fileExists(filepath.Join(dir, "initdb")) && fileExists(filepath.Join(dir, "pg_ctl")) {
			return dir
		}
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	// Prefer the newest version.
	sort.Slice(matches, func(i, j int) bool { return versionOf(matches[i]) > versionOf(matches[j]) })
	for _, dir := range matches {
		if fileExists(filepath.Join(dir, "initdb")) && fileExists(filepath.Join(dir, "pg_ctl")) {
			return dir
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p)
	}
	return ""
}

func versionOf(dir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(dir)))
	return v
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Start creates and starts a new cluster. The caller must Stop it.
func Start(opts Options) (_ *Cluster, err error) {
	bin := BinDir()
	if bin == "" {
		return nil, ErrNoBinaries
	}
	dir, err := os.MkdirTemp("", "tenantguard-pg-")
	if err != nil {
		return nil, fmt.Errorf("pgtest: temp dir: %w", err)
	}
	c := &Cluster{Host: "127.0.0.1", Dir: dir, BinDir: bin}
	defer func() {
		if err != nil {
			_ = c.Stop()
		}
	}()
	if os.Geteuid() == 0 {
		// initdb refuses to run as root.
		c.runAs = "postgres"
		u, lerr := user.Lookup(c.runAs)
		if lerr != nil {
			return nil, fmt.Errorf("pgtest: running as root needs the postgres OS user: %w", lerr)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, fmt.Errorf("pgtest: chown temp dir: %w", err)
		}
	}
	if c.Port, err = FreePort(); err != nil {
		return nil, fmt.Errorf("pgtest: free port: %w", err)
	}
	data := filepath.Join(dir, "data")
	if out, err := c.run("initdb", "-D", data, "-U", SuperUser, "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"); err != nil {
		return nil, fmt.Errorf("pgtest: initdb: %w\n%s", err, out)
	}
	if err := c.writeCerts(); err != nil {
		return nil, err
	}
	conf := map[string]string{
		"listen_addresses":          "'127.0.0.1'",
		"port":                      strconv.Itoa(c.Port),
		"unix_socket_directories":   "''",
		"fsync":                     "off",
		"synchronous_commit":        "off",
		"full_page_writes":          "off",
		"max_connections":           "300",
		"ssl":                       "on",
		"ssl_cert_file":             quote(c.CertFile),
		"ssl_key_file":              quote(c.KeyFile),
		"max_prepared_transactions": "10",
	}
	for k, v := range opts.Settings {
		conf[k] = v
	}
	var b strings.Builder
	keys := make([]string, 0, len(conf))
	for k := range conf {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, conf[k])
	}
	if err := appendFile(filepath.Join(data, "postgresql.conf"), b.String()); err != nil {
		return nil, err
	}
	hba := strings.Join([]string{
		"# written by pgtest",
		"host all " + ScramUser + " 127.0.0.1/32 scram-sha-256",
		"host all " + MD5User + " 127.0.0.1/32 md5",
		"host all " + PlainUser + " 127.0.0.1/32 password",
		"host all all 127.0.0.1/32 trust",
		"host replication all 127.0.0.1/32 trust",
		"",
	}, "\n")
	if err := os.WriteFile(filepath.Join(data, "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		return nil, fmt.Errorf("pgtest: write pg_hba.conf: %w", err)
	}
	if c.runAs != "" {
		u, _ := user.Lookup(c.runAs)
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		_ = filepath.Walk(dir, func(p string, _ os.FileInfo, _ error) error { return os.Lchown(p, uid, gid) })
	}
	logFile := filepath.Join(dir, "server.log")
	if out, err := c.run("pg_ctl", "-D", data, "-l", logFile, "-w", "-t", "60", "start"); err != nil {
		log, _ := os.ReadFile(logFile)
		return nil, fmt.Errorf("pgtest: pg_ctl start: %w\n%s\n%s", err, out, log)
	}
	if err := c.setupUsers(); err != nil {
		return nil, err
	}
	return c, nil
}

func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func appendFile(name, text string) error {
	f, err := os.OpenFile(name, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	if _, err := f.WriteString(text); err != nil {
		f.Close()
		return fmt.Errorf("pgtest: %w", err)
	}
	return f.Close()
}

// run runs a PostgreSQL binary, as the postgres OS user when we are root.
func (c *Cluster) run(name string, args ...string) ([]byte, error) {
	path := filepath.Join(c.BinDir, name)
	var cmd *exec.Cmd
	if c.runAs != "" {
		cmd = exec.Command("runuser", append([]string{"-u", c.runAs, "--", path}, args...)...)
	} else {
		cmd = exec.Command(path, args...)
	}
	cmd.Dir = c.Dir
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	return out.Bytes(), err
}

func (c *Cluster) setupUsers() error {
	stmts := []string{
		fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s'", ScramUser, ScramPassword),
		"SET password_encryption = 'md5'",
		fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s'", MD5User, MD5Password),
		"RESET password_encryption",
		fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s'", PlainUser, PlainPassword),
		fmt.Sprintf("CREATE ROLE %s LOGIN", AppUser),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.ConnString(SuperUser, "", "postgres"))
	if err != nil {
		return fmt.Errorf("pgtest: connect: %w", err)
	}
	defer conn.Close(ctx)
	for _, s := range stmts {
		if _, err := conn.Exec(ctx, s); err != nil {
			return fmt.Errorf("pgtest: %s: %w", s, err)
		}
	}
	return nil
}

// Stop stops the server and removes its directory. It is safe to call twice.
func (c *Cluster) Stop() error {
	if c == nil || c.Dir == "" {
		return nil
	}
	var err error
	data := filepath.Join(c.Dir, "data")
	if fileExists(filepath.Join(data, "postmaster.pid")) {
		if out, e := c.run("pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"); e != nil {
			err = fmt.Errorf("pgtest: pg_ctl stop: %w\n%s", e, out)
		}
	}
	if e := os.RemoveAll(c.Dir); e != nil && err == nil {
		err = e
	}
	c.Dir = ""
	return err
}

// Addr is host:port of the server.
func (c *Cluster) Addr() string { return net.JoinHostPort(c.Host, strconv.Itoa(c.Port)) }

// URL returns a postgres:// URL for user (and password, if any) on database db,
// with sslmode=disable.
func (c *Cluster) URL(user, password, db string) string {
	u := url.URL{Scheme: "postgres", Host: c.Addr(), Path: "/" + db, RawQuery: "sslmode=disable"}
	if password != "" {
		u.User = url.UserPassword(user, password)
	} else {
		u.User = url.User(user)
	}
	return u.String()
}

// ConnString is URL under a name drivers' docs use.
func (c *Cluster) ConnString(user, password, db string) string { return c.URL(user, password, db) }

// Connect opens a pgx connection as the superuser to db.
func (c *Cluster) Connect(ctx context.Context, db string) (*pgx.Conn, error) {
	return pgx.Connect(ctx, c.URL(SuperUser, "", db))
}

// Exec runs SQL (one or many statements, simple protocol) as the superuser on db.
func (c *Cluster) Exec(ctx context.Context, db, sql string) error {
	conn, err := c.Connect(ctx, db)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol)
	return err
}

// CreateDatabase creates a new, uniquely named database (prefix + sequence
// number), grants AppUser and the password users full rights on it, and
// returns its name.
func (c *Cluster) CreateDatabase(ctx context.Context, prefix string) (string, error) {
	c.mu.Lock()
	c.dbSeq++
	suffix := fmt.Sprintf("_%d", c.dbSeq)
	base := sanitize(prefix)
	// PostgreSQL cuts names at 63 bytes: cut the prefix instead, so that
	// the sequence number keeps two long test names apart.
	if len(base)+len(suffix) > 63 {
		base = base[:63-len(suffix)]
	}
	name := base + suffix
	c.mu.Unlock()
	if err := c.Exec(ctx, "postgres", "CREATE DATABASE "+name); err != nil {
		return "", fmt.Errorf("pgtest: create database %s: %w", name, err)
	}
	grant := fmt.Sprintf("GRANT ALL ON SCHEMA public TO %s, %s, %s, %s", AppUser, ScramUser, MD5User, PlainUser)
	if err := c.Exec(ctx, name, grant); err != nil {
		return "", fmt.Errorf("pgtest: grant on %s: %w", name, err)
	}
	return name, nil
}

func sanitize(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') || r == '_' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	if b.Len() == 0 || b.String()[0] >= '0' && b.String()[0] <= '9' {
		return "db_" + b.String()
	}
	return b.String()
}

// ServerLog returns the server's log so far (for failing tests).
func (c *Cluster) ServerLog() string {
	b, _ := os.ReadFile(filepath.Join(c.Dir, "server.log"))
	return string(b)
}

// writeCerts generates a CA and a server certificate signed by it.
func (c *Cluster) writeCerts() error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("pgtest: ca key: %w", err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "tenantguard test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("pgtest: ca cert: %w", err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("pgtest: server key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("pgtest: server cert: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("pgtest: marshal key: %w", err)
	}
	c.CAFile = filepath.Join(c.Dir, "ca.crt")
	c.CertFile = filepath.Join(c.Dir, "server.crt")
	c.KeyFile = filepath.Join(c.Dir, "server.key")
	files := []struct {
		name, typ string
		der       []byte
		mode      os.FileMode
	}{
		{c.CAFile, "CERTIFICATE", caDER, 0o644},
		{c.CertFile, "CERTIFICATE", der, 0o644},
		{c.KeyFile, "EC PRIVATE KEY", keyDER, 0o600},
	}
	for _, f := range files {
		if err := os.WriteFile(f.name, pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: f.der}), f.mode); err != nil {
			return fmt.Errorf("pgtest: write %s: %w", f.name, err)
		}
	}
	return nil
}

var (
	sharedOnce sync.Once
	shared     *Cluster
	sharedErr  error
)

// Shared returns the cluster shared by this test binary, starting it on first
// use. When the PostgreSQL binaries are absent the test is skipped with an
// install hint; in CI (CI=true) it fails instead, since the tests must run there.
func Shared(tb testing.TB) *Cluster {
	tb.Helper()
	sharedOnce.Do(func() { shared, sharedErr = Start(Options{}) })
	if errors.Is(sharedErr, ErrNoBinaries) {
		if os.Getenv("CI") != "" {
			tb.Fatalf("%v (CI=%s: database tests must run in CI)", sharedErr, os.Getenv("CI"))
		}
		tb.Skip(InstallHint)
	}
	if sharedErr != nil {
		tb.Fatalf("start postgres: %v", sharedErr)
	}
	return shared
}

// Main runs the tests of a package and stops the shared cluster afterwards,
// also when tests fail. Call it from TestMain: os.Exit(pgtest.Main(m)).
func Main(m *testing.M) int {
	code := m.Run()
	if shared != nil {
		if err := shared.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}
	return code
}
