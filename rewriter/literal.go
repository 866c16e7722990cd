package rewriter

import (
	"encoding/json"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	pg "github.com/pganalyze/pg_query_go/v6"

	"github.com/tenantguard/tenantguard/policy"
)

// The literal-insensitive cache. In the simple protocol an application
// sends the same statement with different literals (`WHERE id = 17`, then
// `WHERE id = 18`): the text cache misses every time. For a single statement
// whose literals the scanner below fully understands, the decision is also
// cached under a key with every literal replaced by a marker, as the
// decision of the abstract statement where each literal is a parameter.
// A hit renders the abstract decision, checks the parameters the decision
// depends on (a LIMIT bound, a verified tenant, an OFFSET) against the
// literal values exactly as Bind would, and puts the original literal text
// back in place of the parameters: no parse, no deparse.
//
// It is correct by construction of what is stored: a template is stored
// only when the abstract decision, with the literals put back, is identical
// to the full decision of the same statement; anything the hit path cannot
// check (a rejection, a tenant change, a parameter whose value matters and
// is not checked) falls back to the full decision.

// litKind distinguishes number and string literals in the key.
const (
	litNumber = 'n'
	litString = 's'
)

// literalSpan is one literal of a statement, as byte offsets.
type literalSpan struct {
	start, end int
}

// maxLiteralSQL keeps long statements out of the literal path: they are rare
// and their scan is not worth it.
const maxLiteralSQL = 8 << 10

// scanLiterals returns the statement's literal-insensitive key and its
// literals. ok is false when the text holds anything the scanner does not
// fully understand (comments, dollar quoting, escapes, prefixed strings,
// parameters, odd numbers): the caller then takes the full path.
func scanLiterals(sql string) (key string, lits []literalSpan, ok bool) {
	k, lits, ok := appendLiteralKey(nil, nil, sql)
	return string(k), lits, ok
}

// appendLiteralKey is scanLiterals appending the key to b and the
// literals to lits (the caller's buffers: no allocation while they last).
func appendLiteralKey(b []byte, lits []literalSpan, sql string) ([]byte, []literalSpan, bool) {
	if len(sql) > maxLiteralSQL {
		return b, lits, false
	}
	last := 0
	i := 0
	for i < len(sql) {
		c := sql[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case isIdentStart(c):
			for i < len(sql) && isIdentCont(sql[i]) {
				i++
			}
		case c == '"':
			j := i + 1
			for {
				k := strings.IndexByte(sql[j:], '"')
				if k < 0 {
					return b, lits, false
				}
				j += k + 1
				if j < len(sql) && sql[j] == '"' {
					j++
					continue
				}
				break
			}
			if i > 0 && (sql[i-1] == '&' || isIdentCont(sql[i-1])) {
				return b, lits, false // U&"..." and friends
			}
			i = j
		case c == '\'':
			if i > 0 && (isIdentCont(sql[i-1]) || sql[i-1] == '&' || sql[i-1] == '\'') {
				return b, lits, false // E'', B'', X'', N'', U&'' and odd adjacency
			}
			j := i + 1
			for {
				k := strings.IndexAny(sql[j:], "'\\")
				if k < 0 || sql[j+k] == '\\' {
					return b, lits, false // unterminated, or a backslash (escape rules)
				}
				j += k + 1
				if j < len(sql) && sql[j] == '\'' {
					j++
					continue
				}
				break
			}
			if body := sql[i+1 : j-1]; !utf8.ValidString(body) || strings.IndexByte(body, 0) >= 0 {
				// The parser refuses both, even inside a string, and so
				// does the full path; a template would take them (a
				// literal's contents are not in the key). Outside strings
				// such bytes are part of the key, so a template for them
				// was learnt from the same bytes.
				return b, lits, false
			}
			// 'a' 'b' across a newline is one literal in PostgreSQL.
			k := j
			for k < len(sql) && (sql[k] == ' ' || sql[k] == '\t' || sql[k] == '\n' || sql[k] == '\r') {
				k++
			}
			if k < len(sql) && sql[k] == '\'' {
				return b, lits, false
			}
			b = append(b, sql[last:i]...)
			b = append(b, 0, litString)
			lits = append(lits, literalSpan{i, j})
			i, last = j, j
		case c >= '0' && c <= '9' || c == '.' && i+1 < len(sql) && sql[i+1] >= '0' && sql[i+1] <= '9':
			if i > 0 && (isIdentCont(sql[i-1]) || sql[i-1] == '.') {
				return b, lits, false
			}
			j := i
			for j < len(sql) && sql[j] >= '0' && sql[j] <= '9' {
				j++
			}
			if j < len(sql) && sql[j] == '.' {
				j++
				for j < len(sql) && sql[j] >= '0' && sql[j] <= '9' {
					j++
				}
			}
			if j < len(sql) && (sql[j] == 'e' || sql[j] == 'E') {
				k := j + 1
				if k < len(sql) && (sql[k] == '+' || sql[k] == '-') {
					k++
				}
				if k >= len(sql) || sql[k] < '0' || sql[k] > '9' {
					return b, lits, false
				}
				for k < len(sql) && sql[k] >= '0' && sql[k] <= '9' {
					k++
				}
				j = k
			}
			if j < len(sql) && (isIdentCont(sql[j]) || sql[j] == '.') {
				return b, lits, false // 0x1F, 1_000, 123abc, 1.2.3
			}
			if c == '0' && j-i > 1 && allDigits(sql[i:j]) {
				// 007: the full path renders an integer from its value (7),
				// a template would keep the text.
				return b, lits, false
			}
			b = append(b, sql[last:i]...)
			b = append(b, 0, litNumber)
			lits = append(lits, literalSpan{i, j})
			i, last = j, j
		case c == '$' || c == '\\' || c < 0x20 || c >= 0x80:
			return b, lits, false
		case c == '-' && i+1 < len(sql) && sql[i+1] == '-', c == '/' && i+1 < len(sql) && sql[i+1] == '*':
			return b, lits, false // comments
		default:
			i++
		}
	}
	if len(lits) == 0 {
		return b, lits, false // nothing to abstract: the text cache serves it
	}
	return append(b, sql[last:]...), lits, true
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func isIdentStart(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80
}

func isIdentCont(c byte) bool { return isIdentStart(c) || c >= '0' && c <= '9' || c == '$' }

// abstractSQL replaces every literal by a parameter $1..$n.
func abstractSQL(sql string, lits []literalSpan) string {
	var b strings.Builder
	b.Grow(len(sql) + 2*len(lits))
	last := 0
	for k, l := range lits {
		b.WriteString(sql[last:l.start])
		b.WriteByte('$')
		b.WriteString(strconv.Itoa(k + 1))
		last = l.end
	}
	b.WriteString(sql[last:])
	return b.String()
}

// roleInfo is a session's policy role and its cache class.
type roleInfo struct {
	role policy.Role
	key  string
}

// literalTemplate is a cached abstract decision.
type literalTemplate struct {
	qt *queryTemplate // the abstract statement, compiled as with parameters
	// sql is the rendered abstract SQL; text splits it at the parameter
	// tokens (text.slots[i] is the literal that goes after
	// text.segments[i]) and, in text.litSegs, at the setting expressions
	// when they can all become literals (Session.TenantLiteral).
	sql  string
	text PreparedForm
	// form is &text when the statement may go upstream in its prepared
	// form (upstream.go), else nil.
	form        *PreparedForm
	fingerprint string
	normalized  string
	// proven[1] says the hit path is proven exact for sessions with
	// Session.TenantLiteral, proven[0] for sessions without it.
	proven [2]bool
	// abstract is the abstract statement's decision for any session with a
	// valid tenant, when it does not depend on which tenant (buildLiteral):
	// a hit then renders nothing. Nil otherwise.
	abstract *Decision
}

// modeIndex is the proven index of a session.
func modeIndex(s Session) int {
	if s.TenantLiteral {
		return 1
	}
	return 0
}

// literalCache is a bounded cache of literal templates; when full it starts
// over (simple, and the working set of an application is small). A key is
// the role's cache class, literalRoleEnd, and the statement's literal key
// (literalKeyPrefix, appendLiteralKey): one byte string, looked up without
// allocating it.
type literalCache struct {
	mu    sync.RWMutex
	max   int
	items map[string]*literalTemplate
}

// literalRoleEnd ends the role part of a literal cache key: neither a role
// name nor a scanned statement holds a NUL followed by '|'.
const literalRoleEnd = "\x00|"

// literalKeyPrefix appends the role part of a literal cache key to b.
func literalKeyPrefix(b []byte, role string) []byte {
	return append(append(b, role...), literalRoleEnd...)
}

func newLiteralCache(max int) *literalCache {
	return &literalCache{max: max, items: make(map[string]*literalTemplate)}
}

func (c *literalCache) get(k []byte) *literalTemplate {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.items[string(k)] // no allocation for the lookup
}

func (c *literalCache) put(k string, t *literalTemplate) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.items) >= c.max {
		c.items = make(map[string]*literalTemplate)
	}
	c.items[k] = t
}

// renderLiteral decides sql from a literal template, or reports false when
// the full path must decide it.
func (r *Rewriter) renderLiteral(lt *literalTemplate, sql string, lits []literalSpan, s Session, role roleInfo) (*Result, bool) {
	if lt.qt == nil || !lt.proven[modeIndex(s)] {
		return nil, false // known not to be served by the literal path
	}
	// The abstract statement is rendered without the literal tenant: its
	// SQL then holds the setting expression, the same for every tenant,
	// and litSegs puts the literal in below.
	var d Decision
	if lt.abstract != nil && s.HasTenant && validTenant(r.pol.Tenant.Type, s.Tenant) {
		d = *lt.abstract
	} else {
		as := s
		as.Extended, as.TenantLiteral = true, false
		res := lt.qt.render(r, as, role.role)
		if len(res.Statements) != 1 {
			return nil, false
		}
		d = res.Statements[0]
	}
	if d.Verdict == VerdictRejected || d.SQL != lt.sql || d.TenantParam != 0 || d.TenantEffect != nil || d.TxOp != nil || d.Notify != nil || len(d.ArrayParams) > 0 {
		return nil, false
	}
	lit := func(k int) (string, bool) {
		if k < 1 || k > len(lits) {
			return "", false
		}
		l := lits[k-1]
		return sql[l.start:l.end], true
	}
	for _, k := range d.LimitParams {
		v, ok := lit(k)
		n, err := strconv.ParseInt(v, 10, 64)
		if !ok || err != nil || n > d.MaxRows {
			return nil, false
		}
	}
	for _, k := range d.OffsetParams {
		v, ok := lit(k)
		n, err := strconv.ParseInt(v, 10, 64)
		if !ok || err != nil || (r.maxOffset > 0 && n > r.maxOffset) {
			return nil, false
		}
	}
	if len(d.VerifyParams) > 0 {
		if !s.HasTenant {
			return nil, false
		}
		want, err := CanonicalTenant(r.pol.Tenant.Type, s.Tenant)
		if err != nil {
			return nil, false
		}
		for _, k := range d.VerifyParams {
			v, ok := lit(k)
			if !ok {
				return nil, false
			}
			got, err := CanonicalTenant(r.pol.Tenant.Type, strings.Trim(v, "'"))
			if err != nil || got != want {
				return nil, false
			}
		}
	}
	tenantLit := ""
	if s.TenantLiteral && lt.text.litSegs != nil {
		canon, err := CanonicalTenant(r.pol.Tenant.Type, s.Tenant)
		if !s.HasTenant || err != nil {
			return nil, false
		}
		tenantLit = renderTenant(r.pol.Tenant.Type, canon)
	}
	var b strings.Builder
	b.Grow(len(sql) + 64)
	if !lt.text.write(&b, tenantLit, lit) {
		return nil, false
	}
	one := &singleResult{}
	if d.Enforced {
		d.SQL = b.String()
		if lt.form != nil && (d.Verdict == VerdictAllowed || d.Verdict == VerdictRewritten) {
			if sig, args, ok := upstreamArgs(one.args[:0], sql, lits); ok {
				one.up = UpstreamCall{Form: lt.form, TenantLit: tenantLit, Sig: sig, Args: args}
				d.Upstream = &one.up
			}
		}
	} else {
		d.SQL = sql
	}
	d.LimitParams, d.VerifyParams, d.OffsetParams, d.MaxOffset, d.ArrayParams = nil, nil, nil, 0, nil
	if !d.RowGuard {
		d.MaxRows = 0
	}
	d.Fingerprint, d.Normalized = lt.fingerprint, lt.normalized
	one.d[0] = d
	one.res.Statements = one.d[:]
	return &one.res, true
}

// singleResult is a Result of one statement in one allocation.
type singleResult struct {
	res  Result
	d    [1]Decision
	up   UpstreamCall
	args [4]string // up.Args of up to four literals
}

// validTenant reports whether v is a valid tenant of type t.
func validTenant(t policy.TenantType, v string) bool {
	_, err := CanonicalTenant(t, v)
	return err == nil
}

// learnLiteral builds a literal template from a statement and its full
// decision and stores it when the two agree exactly, or stores that the
// statement's shape is not for the literal path.
func (r *Rewriter) learnLiteral(key string, sql string, lits []literalSpan, s Session, role roleInfo, tpl *queryTemplate, full *Result) *literalTemplate {
	lt := r.buildLiteral(sql, lits, s, role, tpl, full)
	if lt == nil {
		// Remember the failure so that the next miss does not try again:
		// rejected and value-dependent decisions stay on the full path.
		lt = &literalTemplate{}
	}
	r.literals.put(key, lt)
	return lt
}

// buildLiteral compiles the abstract statement of sql and proves, for
// sessions with and without Session.TenantLiteral, that the hit path
// decides sql exactly as the full path (tpl, whose decision for s is full)
// does; the template serves the modes proven.
func (r *Rewriter) buildLiteral(sql string, lits []literalSpan, s Session, role roleInfo, tpl *queryTemplate, full *Result) *literalTemplate {
	if len(full.Statements) != 1 {
		return nil
	}
	fd := full.Statements[0]
	if fd.Verdict == VerdictRejected || fd.TenantEffect != nil || fd.TxOp != nil || fd.Notify != nil || !fd.Enforced {
		return nil
	}
	qt := r.compile(abstractSQL(sql, lits), true, role.role)
	// An abstract statement refused, or changing the tenant, is not for the
	// hit path: a bypass role's decision drops the tenant effect of a
	// refused SET, so SET app.clinic_id = 'abc' (refused in the abstract
	// too) would teach a template that served every valid SET of that role
	// without its effect (found in review).
	if len(qt.stmts) != 1 || qt.stmts[0].d.Verdict == VerdictRejected || qt.stmts[0].d.TenantEffect != nil {
		return nil
	}
	as := s
	as.Extended, as.TenantLiteral = true, false
	ad := qt.render(r, as, role.role).Statements[0]
	if ad.Verdict != fd.Verdict || ad.Reason != fd.Reason || ad.Kind != fd.Kind || ad.RowGuard != fd.RowGuard ||
		ad.TenantParam != 0 || ad.TenantEffect != nil || !equalStrings(ad.Relations, fd.Relations) {
		return nil
	}
	segs, slots, ok := splitAtParams(ad.SQL, len(lits))
	if !ok {
		return nil
	}
	lt := &literalTemplate{qt: qt, sql: ad.SQL, text: PreparedForm{segments: segs, slots: slots}, fingerprint: fd.Fingerprint, normalized: fd.Normalized}
	if n := qt.stmts[0].settingExprs; n > 0 && r.settingText != "" {
		split, found := make([][]string, len(segs)), 0
		for i, seg := range segs {
			split[i] = strings.Split(seg, r.settingText)
			found += len(split[i]) - 1
		}
		if found == n {
			lt.text.litSegs = split
		}
	}
	number := func(k int) bool { return k >= 1 && k <= len(lits) && sql[lits[k-1].start] != '\'' }
	if preparable(fd.Kind, ad.SQL, number) {
		lt.form = &lt.text
	}
	if st := qt.stmts[0]; s.HasTenant && len(st.checks) == 0 && (!st.needsTenant || len(st.segments) <= 1) {
		// With a valid tenant, renderTenant reads it only to check the
		// literals the statement compares it with (none here) and to splice
		// it into the text (not here: the text holds the setting
		// expression, or no tenant at all).
		abstract := ad
		lt.abstract = &abstract
	}
	// The proof: the hit path must produce exactly the full decision, in
	// both modes.
	for _, literal := range [2]bool{s.TenantLiteral, !s.TenantLiteral} {
		ps := s
		ps.TenantLiteral = literal
		want := &fd
		if literal != s.TenantLiteral {
			other := tpl.render(r, ps, role.role)
			if len(other.Statements) != 1 {
				continue
			}
			want = &other.Statements[0]
		}
		i := modeIndex(ps)
		lt.proven[i] = true
		got, ok := r.renderLiteral(lt, sql, lits, ps, role)
		lt.proven[i] = ok && len(got.Statements) == 1 && sameDecision(&got.Statements[0], want)
	}
	if !lt.proven[0] && !lt.proven[1] {
		return nil
	}
	return lt
}

// splitAtParams splits sql at the parameter tokens $1..$n.
func splitAtParams(sql string, n int) (segs []string, slots []int, ok bool) {
	sc, err := pg.Scan(sql)
	if err != nil {
		return nil, nil, false
	}
	last := 0
	for _, t := range sc.Tokens {
		if t.Token != pg.Token_PARAM {
			continue
		}
		k, err := strconv.Atoi(sql[t.Start+1 : t.End])
		if err != nil || k < 1 || k > n {
			return nil, nil, false
		}
		segs = append(segs, sql[last:t.Start])
		slots = append(slots, k)
		last = int(t.End)
	}
	segs = append(segs, sql[last:])
	return segs, slots, true
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// sameDecision compares everything a client and the audit trail see: the
// whole decision as it marshals.
func sameDecision(a, b *Decision) bool {
	ja, err1 := json.Marshal(a)
	jb, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && string(ja) == string(jb)
}
