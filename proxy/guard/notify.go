package guard

import (
	"bytes"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"

	"github.com/tenantguard/tenantguard/rewriter"
)

// Channels of LISTEN, UNLISTEN and NOTIFY are namespaced per tenant: an
// ordinary session's `LISTEN updates` listens on "<tenant>:updates", its
// `NOTIFY updates` notifies "<tenant>:updates", and the prefix is removed
// from the notifications it receives. Tenants cannot hear each other, and
// applications change nothing. pg_notify() is refused by the rewriter.

// channelPrefix is the namespace of a tenant's channels.
func channelPrefix(tenant string) string { return tenant + ":" }

// namespaceChannel rewrites the channel of one LISTEN, UNLISTEN or NOTIFY
// statement. It reports false when the statement's shape is not the
// expected keyword + channel (the caller then refuses it); UNLISTEN * is
// returned unchanged.
func namespaceChannel(sql, tenant string) (string, bool) {
	sc, err := pg.Scan(sql)
	if err != nil {
		return "", false
	}
	var toks []*pg.ScanToken
	for _, t := range sc.Tokens {
		if t.Token == pg.Token_SQL_COMMENT || t.Token == pg.Token_C_COMMENT {
			continue
		}
		toks = append(toks, t)
	}
	if len(toks) < 2 {
		return "", false
	}
	switch toks[0].Token {
	case pg.Token_LISTEN, pg.Token_UNLISTEN, pg.Token_NOTIFY:
	default:
		return "", false
	}
	ch := toks[1]
	raw := sql[ch.Start:ch.End]
	if raw == "*" && toks[0].Token == pg.Token_UNLISTEN {
		return sql, true
	}
	name, ok := identName(raw, ch)
	if !ok {
		return "", false
	}
	quoted := `"` + strings.ReplaceAll(channelPrefix(tenant)+name, `"`, `""`) + `"`
	return sql[:ch.Start] + quoted + sql[ch.End:], true
}

// identName returns the name an identifier token stands for: folded to
// lower case when unquoted, unescaped when double-quoted. Unicode-escaped
// identifiers (U&"...") are not accepted.
func identName(raw string, t *pg.ScanToken) (string, bool) {
	if strings.HasPrefix(raw, `"`) && strings.HasSuffix(raw, `"`) && len(raw) >= 2 {
		return strings.ReplaceAll(raw[1:len(raw)-1], `""`, `"`), true
	}
	if t.Token != pg.Token_IDENT && t.KeywordKind == pg.KeywordKind_NO_KEYWORD {
		return "", false
	}
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if !(c == '_' || c == '$' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80) {
			return "", false
		}
	}
	return strings.ToLower(raw), true
}

// stripChannel removes the tenant namespace from a NotificationResponse
// body (int32 pid, channel, payload); ok is false when it has none.
func stripChannel(body []byte) ([]byte, bool) {
	if len(body) < 5 {
		return nil, false
	}
	rest := body[4:]
	end := bytes.IndexByte(rest, 0)
	if end < 0 {
		return nil, false
	}
	i := bytes.IndexByte(rest[:end], ':')
	if i < 0 {
		return nil, false
	}
	out := make([]byte, 0, len(body)-i-1)
	out = append(out, body[:4]...)
	out = append(out, rest[i+1:]...)
	return out, true
}

// scopeNotify namespaces the channel of an enforced LISTEN, UNLISTEN or
// NOTIFY of an ordinary session, or turns the decision into a rejection
// when that is not possible. It reports whether it changed d. Callers hold
// c.mu.
func (c *conn) scopeNotify(d *rewriter.Decision) bool {
	if d.Notify == nil || c.bypass || !d.Enforced || d.Verdict == rewriter.VerdictRejected || d.Verdict == rewriter.VerdictBypassed {
		return false
	}
	cur := c.current()
	if !cur.ok {
		d.Verdict, d.Reason = rewriter.VerdictRejected, rewriter.ReasonNoTenant
		d.Error = &rewriter.Error{SQLState: "42501",
			Message: "tenantguard: notification channels belong to a tenant, and no tenant is set",
			Hint:    "set the tenant before LISTEN or NOTIFY"}
		return true
	}
	sql, ok := namespaceChannel(d.SQL, cur.v)
	if !ok {
		d.Verdict, d.Reason = rewriter.VerdictRejected, rewriter.ReasonUnsupported
		d.Error = &rewriter.Error{SQLState: "0A000",
			Message: "tenantguard: cannot namespace the channel of this " + strings.ToUpper(d.Notify.Op) + " statement",
			Hint:    "name the channel with a plain or double-quoted identifier"}
		return true
	}
	if sql != d.SQL {
		d.SQL, d.Verdict = sql, rewriter.VerdictRewritten
		return true
	}
	return false
}
