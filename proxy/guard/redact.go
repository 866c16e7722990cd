package guard

import (
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
)

// redacted replaces a value in an upstream error.
const redacted = "<redacted>"

// redact removes row and input values from an upstream error, keeping its
// SQLSTATE, so that an error cannot echo another tenant's data (a unique
// violation's `Key (email)=(...)`) or PHI into client logs. It reports
// whether it changed anything. Callers hold c.mu.
func (g *Guard) redact(c *conn, e *pgproto3.ErrorResponse) bool {
	if c.bypass {
		return false
	}
	pol := g.opts.Policies.Load()
	if pol == nil || !pol.RedactErrors {
		return false
	}
	changed := false
	set := func(dst *string, v string) {
		if *dst != v {
			*dst, changed = v, true
		}
	}
	set(&e.Detail, redactDetail(e.Detail))
	if strings.HasPrefix(e.Code, "22") || strings.HasPrefix(e.Code, "23") {
		set(&e.Message, redactMessage(e.Message))
	}
	// Context lines of SQL functions quote statements and their values.
	if strings.ContainsAny(e.Where, "'\"") {
		set(&e.Where, redacted)
	}
	return changed
}

// redactDetail rewrites `Key (cols)=(values)` and `Failing row contains
// (values)` details, and any other detail that quotes values.
func redactDetail(d string) string {
	if d == "" {
		return d
	}
	if i := strings.Index(d, ")=("); i >= 0 {
		// Key (a, b)=(1, x) already exists.  -> Key (a, b)=(<redacted>) already exists.
		j := matchParen(d, i+2)
		if j < 0 {
			return d[:i+3] + redacted + ")"
		}
		return d[:i+3] + redacted + redactDetail(d[j:])
	}
	if i := strings.Index(d, "Failing row contains ("); i >= 0 {
		return d[:i] + "Failing row contains (" + redacted + ")."
	}
	if strings.ContainsAny(d, "\"'") {
		return redacted
	}
	return d
}

// matchParen returns the index of the parenthesis closing the one at open,
// or -1.
func matchParen(s string, open int) int {
	depth := 0
	inQuote := false
	for i := open; i < len(s); i++ {
		switch s[i] {
		case '"':
			inQuote = !inQuote
		case '(':
			if !inQuote {
				depth++
			}
		case ')':
			if !inQuote {
				depth--
				if depth == 0 {
					return i
				}
			}
		}
	}
	return -1
}

// redactMessage removes the quoted input value at the end of data-exception
// messages (`invalid input syntax for type integer: "abc"`); constraint and
// relation names, quoted earlier in the message, stay.
func redactMessage(m string) string {
	if i := strings.LastIndex(m, `: "`); i >= 0 && strings.HasSuffix(m, `"`) {
		return m[:i+2] + redacted
	}
	return m
}
