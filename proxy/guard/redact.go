package guard

import (
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
)

// redacted replaces a value in an upstream error.
const redacted = "<redacted>"

// redact removes row and input values from an upstream error, keeping its
// SQLSTATE, so that an error cannot echo another tenant's data (a unique
// violation's `Key (email)=(...)`, a row value a cast or a parser refused)
// into the client. A quoted word survives only when the statement itself
// contains it (a relation or column the client named); everything else
// quoted is replaced, and the CONTEXT is dropped. It reports whether it
// changed anything. Callers hold c.mu.
func (g *Guard) redact(c *conn, e *pgproto3.ErrorResponse, sql string) bool {
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
	set(&e.Message, redactQuoted(e.Message, sql))
	set(&e.Detail, redactDetail(e.Detail))
	set(&e.Hint, redactQuoted(e.Hint, sql))
	if e.Where != "" {
		set(&e.Where, redacted)
	}
	if e.InternalQuery != "" {
		set(&e.InternalQuery, redacted)
	}
	return changed
}

// redactDetail keeps the shape of `Key (cols)=(values)` and `Failing row
// contains (values)` details without their values; any other detail is
// replaced whole, since details quote input data in forms no pattern can
// pair reliably (an XML parser's input line, a JSON token with quotes).
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
		return d[:i+3] + redacted + d[j:] // the rest names a table, never a value
	}
	if i := strings.Index(d, "Failing row contains ("); i >= 0 {
		return d[:i] + "Failing row contains (" + redacted + ")."
	}
	return redacted
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

// redactQuoted replaces every "..." and '...' part of s that is not a word of
// sql with <redacted>.
func redactQuoted(s, sql string) string {
	if !strings.ContainsAny(s, `"'`) {
		return s
	}
	lower := strings.ToLower(sql)
	var b strings.Builder
	i := 0
	for i < len(s) {
		q := s[i]
		apostrophe := q == '\'' && i > 0 && isWordByte(s[i-1]) // "can't", not a quote
		if q != '"' && q != '\'' || apostrophe {
			b.WriteByte(q)
			i++
			continue
		}
		j := strings.IndexByte(s[i+1:], q)
		if j < 0 {
			b.WriteString(redacted) // an unterminated quote: drop the rest
			break
		}
		word := s[i+1 : i+1+j]
		if word != "" && containsWord(lower, strings.ToLower(word)) {
			b.WriteString(s[i : i+2+j])
			i += j + 2
			continue
		}
		// A value may itself hold quotes, which breaks the pairing: redact
		// up to the last quote of the same kind.
		b.WriteString(redacted)
		i += strings.LastIndexByte(s[i:], q) + 1
	}
	return b.String()
}

// containsWord reports whether w occurs in s with no identifier character
// right before or after it.
func containsWord(s, w string) bool {
	for from := 0; ; {
		k := strings.Index(s[from:], w)
		if k < 0 {
			return false
		}
		start, end := from+k, from+k+len(w)
		if (start == 0 || !isWordByte(s[start-1])) && (end == len(s) || !isWordByte(s[end])) {
			return true
		}
		from = start + 1
	}
}

func isWordByte(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c >= 0x80
}
