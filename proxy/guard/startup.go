package guard

import (
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/tenantguard/tenantguard/policy"
	"github.com/tenantguard/tenantguard/proxy"
	"github.com/tenantguard/tenantguard/proxy/audit"
	"github.com/tenantguard/tenantguard/rewriter"
)

// OnStartup decides the session: its tenant from the startup parameters
// (a parameter named after the tenant setting, or `options=-c name=value`),
// and, for roles that are not bypass roles, refuses the startup settings
// that would make the upstream read bytes differently from the proxy's
// parser or change the session's role.
func (g *Guard) OnStartup(s *proxy.Session) error {
	e := g.engine()
	pol := e.pol
	c := &conn{
		id:              s.ID,
		nonce:           g.nonce,
		user:            s.Params["user"],
		database:        s.Params["database"],
		applicationName: s.Params["application_name"],
		started:         g.opts.Now(),
		statements:      map[string]*prepared{},
		portals:         map[string]*portal{},
		rejects:         map[string]*rejection{},
		// The ReadyForQuery that ends the startup is the first the guard
		// sees: it closes cycle 0.
		frontCycle: 1,
	}
	if c.database == "" {
		c.database = c.user
	}
	if s.ClientAddr != nil {
		c.client = s.ClientAddr.String()
	}
	c.bypass = pol.Role(c.user).Bypass
	s.State = c
	if !c.bypass {
		if g.opts.Database != "" && c.database != g.opts.Database {
			return g.refuseStartup(c, "42501", "tenantguard: this proxy enforces its policy on database "+g.opts.Database+" only",
				"connect to "+g.opts.Database+", or run a tenantguard for the other database")
		}
		if e.cat == nil {
			return g.refuseStartup(c, "57P03", "tenantguard: the upstream catalog is not loaded yet",
				"retry in a moment; /readyz reports when tenantguard is ready")
		}
	}

	params := map[string]string{}
	for k, v := range s.Params {
		switch k {
		case "user", "database", "options", "application_name", "replication":
			continue
		}
		lk := strings.ToLower(k)
		if prev, dup := params[lk]; dup && prev != v && !c.bypass {
			// The server keeps the later one in the packet; a map cannot
			// tell which that is, so neither is trusted.
			return g.refuseStartup(c, "42501", "tenantguard: the startup parameter "+lk+" is set twice with different values",
				"set each parameter once")
		}
		params[lk] = v
	}
	opts, err := parseOptions(s.Params["options"])
	if err != nil && !c.bypass {
		return g.refuseStartup(c, "42501", "tenantguard: the startup options could not be read: "+err.Error(),
			"pass settings as -c name=value or --name=value")
	}
	// PostgreSQL applies the options first and the other startup
	// parameters after them: a parameter wins.
	settings := map[string]string{}
	for k, v := range opts {
		settings[k] = v
	}
	for k, v := range params {
		settings[k] = v
	}
	if !c.bypass {
		// Every value either source sets is checked, not only the winner.
		for _, src := range []map[string]string{opts, params} {
			for name, value := range src {
				if msg := deniedStartupSetting(name, value); msg != "" {
					return g.refuseStartup(c, "42501", msg, "remove the setting from the connection parameters")
				}
			}
		}
	}
	key := strings.ToLower(pol.Tenant.Setting)
	if v, ok := settings[key]; ok {
		badTenant := func() error {
			return g.refuseStartup(c, "42501", "tenantguard: the startup tenant ("+pol.Tenant.Setting+") is not a valid "+string(pol.Tenant.Type),
				"connect with a tenant value of the policy's tenant type")
		}
		if ov, ok := opts[key]; ok && !c.bypass {
			if _, err := pol.ValidateTenant(ov); err != nil {
				return badTenant()
			}
		}
		canon, err := pol.ValidateTenant(v)
		if err != nil && !c.bypass {
			return badTenant()
		}
		if err == nil {
			c.tenant = rewriter.NewTenantTracker(canon, true)
			// The upstream's setting holds this value (see conn.pinned); a
			// session whose two sources disagree is not pinned all the same.
			c.pinned = true
			if ov, ok := opts[key]; ok {
				if pv, ok := params[key]; ok && pv != ov {
					c.pinned = false
				}
			}
		}
	}
	g.opts.Metrics.ClientConnections.Inc()
	g.opts.Metrics.UpstreamConnections.Inc()
	return nil
}

// logConnect writes the connect event once authentication is over (the
// first ReadyForQuery), when the method is known. Callers hold c.mu.
func (g *Guard) logConnect(s *proxy.Session, c *conn) {
	c.connectLogged = true
	tls := s.ClientTLS
	g.opts.Audit.Log(&audit.Event{
		Event: audit.EventConnect, ConnID: c.id, Client: c.client, User: c.user, Database: c.database,
		ApplicationName: c.applicationName, Tenant: c.current().v, TLS: &tls, AuthMethod: s.AuthMethod,
	})
}

// refuseStartup refuses the session once it has authenticated: the refusal
// is held until the server's first ReadyForQuery, so that a client that
// cannot log in gets the server's own authentication error and learns
// nothing of the policy. It returns nil for OnStartup.
func (g *Guard) refuseStartup(c *conn, code, msg, hint string) error {
	c.refused = true
	c.refusal = &proxy.ClientError{Response: &pgproto3.ErrorResponse{
		Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: code, Message: msg, Hint: hint,
	}}
	return nil
}

// enforceRefusal ends an authenticated session refused at startup. Callers
// hold c.mu.
func (g *Guard) enforceRefusal(c *conn) error {
	code := c.refusal.Response.Code
	g.opts.Metrics.Rejections.WithLabelValues("startup").Inc()
	g.opts.Audit.Log(&audit.Event{
		Event: audit.EventConnect, ConnID: c.id, Client: c.client, User: c.user, Database: c.database,
		ApplicationName: c.applicationName, Decision: audit.DecisionRejected, Reason: "startup", SQLState: code,
	})
	g.log.Info("session refused at startup", zap.Uint64("conn_id", c.id), zap.String("sqlstate", code))
	return c.refusal
}

// deniedStartupSetting returns why a startup setting is refused for an
// ordinary role, or "".
func deniedStartupSetting(name, value string) string {
	switch name {
	case "standard_conforming_strings":
		if !isOn(value) {
			return "tenantguard: standard_conforming_strings must stay on (the proxy's parser reads strings as the server does only then)"
		}
	case "client_encoding":
		if !safeEncoding(value) {
			return "tenantguard: client_encoding must be UTF8 (other encodings can make the server read the bytes differently from the proxy's parser)"
		}
	case "role", "session_authorization":
		return "tenantguard: changing the role at startup is not allowed"
	}
	return ""
}

// isOn reports whether a boolean setting value is true, as PostgreSQL parses it.
func isOn(v string) bool {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "on", "true", "yes", "1", "t", "y", "tr", "tru", "ye":
		return true
	}
	return false
}

// safeEncoding reports whether a client_encoding keeps the bytes the server
// parses identical to the bytes the proxy parsed: UTF8, or SQL_ASCII (no
// conversion at all).
func safeEncoding(v string) bool {
	n := strings.ToLower(strings.NewReplacer("-", "", "_", "", " ", "").Replace(v))
	switch n {
	case "utf8", "unicode", "sqlascii":
		return true
	}
	return false
}

// parseOptions reads the `options` startup parameter the way the
// postmaster does: whitespace-separated, backslash escapes, and -c
// name=value, -cname=value or --name=value switches. Other switches are
// errors (they cannot be checked).
func parseOptions(s string) (map[string]string, error) {
	out := map[string]string{}
	var toks []string
	var cur strings.Builder
	inTok, esc := false, false
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case esc:
			cur.WriteByte(ch)
			esc, inTok = false, true
		case ch == '\\':
			esc, inTok = true, true
		case ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v':
			if inTok {
				toks = append(toks, cur.String())
				cur.Reset()
				inTok = false
			}
		default:
			cur.WriteByte(ch)
			inTok = true
		}
	}
	if inTok {
		toks = append(toks, cur.String())
	}
	for i := 0; i < len(toks); i++ {
		t := toks[i]
		var kv string
		switch {
		case t == "-c":
			if i+1 >= len(toks) {
				return nil, errf("-c without a setting")
			}
			i++
			kv = toks[i]
		case strings.HasPrefix(t, "--"):
			kv = t[2:]
		case strings.HasPrefix(t, "-c"):
			kv = t[2:]
		default:
			return nil, errf("unsupported switch in options")
		}
		name, value, ok := strings.Cut(kv, "=")
		if !ok || name == "" {
			return nil, errf("a setting in options has no value")
		}
		out[strings.ToLower(strings.ReplaceAll(name, "-", "_"))] = value
	}
	return out, nil
}

type optionError string

func (e optionError) Error() string { return string(e) }

func errf(s string) error { return optionError(s) }

// tenantValid validates a tenant value against the policy.
func tenantValid(pol *policy.Policy, v string) (string, bool) {
	canon, err := pol.ValidateTenant(v)
	return canon, err == nil
}
