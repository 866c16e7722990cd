package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	pg_query "github.com/pganalyze/pg_query_go/v6"
	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/tenantguard/tenantguard/policy"
	"github.com/tenantguard/tenantguard/proxy/catalog"
	"github.com/tenantguard/tenantguard/rewriter"
)

// upstreamTimeout bounds connecting to --upstream and loading its catalog.
const upstreamTimeout = 10 * time.Second

const checkLong = `Decide SQL statements offline, exactly as the proxy would, and print per
statement the decision, the reason and the SQL that would be sent upstream
(or the error the client would get).

Input: each SQL argument is one input and may hold several statements
(split with the PostgreSQL parser). With no SQL argument, stdin is read
whole as one input. All inputs are decided in order in one session: a
"SET app.clinic_id = 8" in one input sets the tenant for the next ones
(SET LOCAL until COMMIT/ROLLBACK, RESET and DISCARD ALL back to --tenant;
a rejected statement rolls back its input's implicit transaction, or makes
the open transaction's COMMIT a rollback). Savepoints are not followed.

--tenant is the tenant the connection starts with (as a startup parameter),
validated against the policy's tenant.type. --role is the database user: it
selects the policy's roles entry (bypass, ddl, ...). --extended decides as
the extended protocol (one statement per input, tenant as a parameter).

Catalog: --catalog FILE (JSON or YAML, the rewriter.Catalog model:
{"relations": {"public.visits": {"schema": "public", "name": "visits",
"kind": "table", "columns": ["id", "clinic_id"]}}, "functions": {...}})
or --upstream URL (read from a live server, 10s timeout). Without either,
only the policy's own tables are tenant relations and no view or function
is vouched for.

Output (--format text, the default): one block per statement, as SQL
comments followed by the SQL sent upstream (none when rejected):

  -- [1] rewritten (scoped)
  --     kind: select; relations: patients
  --     original: SELECT * FROM patients LIMIT 10
  SELECT * FROM patients WHERE ... LIMIT 10;

  -- [2] rejected (unbounded)
  --     kind: select; relations: patients
  --     original: SELECT * FROM patients
  --     ERROR 54000 tenantguard: the result of this query ... is not bounded
  --     HINT: add LIMIT <= 100, an aggregate without GROUP BY, or equality on a unique key

and a last line "-- N statements: A allowed, R rejected". --format json
prints one JSON document:

  {"statements": [{"input": "<input text>", "statement": "<statement text>",
    "decision": {<rewriter.Decision>}}, ...], "allowed": A, "rejected": R}

where "allowed" counts every statement not rejected (allowed, rewritten,
bypassed). In an audit-mode policy the decision is what enforce mode
would do ("enforced": false), and it counts the same.

Expectations (--expect FILE, for CI): a YAML or JSON list of cases, each
decided in a fresh session (--tenant/--role unless the case sets its own):

  - name: list without LIMIT is refused   # optional
    sql: SELECT * FROM patients           # required; may hold several statements
    tenant: "7"                           # optional; "" = no tenant
    role: migrator                        # optional
    extended: false                       # optional
    decision: rejected                    # required: allowed|rewritten|rejected|bypassed
    reason: unbounded                     # optional
    sqlstate: "54000"                     # optional
    sql_out: ...                          # optional: the SQL sent upstream, exactly

The expectation is about the last statement of the case; an earlier one
that is rejected is a mismatch too. With --expect no SQL is read from the
arguments or stdin; every case is reported "ok" or "FAIL" with the
differences (--format json: {"cases": [...], "passed": P, "failed": F}).

Exit status: 0 when every statement is allowed (with --expect: every case
matches), 1 when any is rejected (with --expect: any case does not match),
2 on bad input (flags, policy, catalog, expectations, tenant, SQL-less input,
--upstream unreachable).`

// checkFlags are the flags of `tenantguard check`.
type checkFlags struct {
	policy   string
	tenant   string
	role     string
	catalog  string
	upstream string
	format   string
	expect   string
	extended bool
}

func newCheckCmd() *cobra.Command {
	var f checkFlags
	cmd := &cobra.Command{
		Use:   "check --policy FILE [--tenant ID] [--role NAME] [SQL ...]",
		Short: "Decide statements offline and print the decision, reason and rewritten SQL",
		Long:  checkLong,
		Example: `  tenantguard check --policy policy.yaml --tenant 7 'SELECT * FROM patients LIMIT 10'
  echo 'SET app.clinic_id = 8; SELECT count(*) FROM invoices' | tenantguard check --policy policy.yaml
  tenantguard check --policy policy.yaml --expect policy_test.yaml --catalog catalog.json`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runCheck(cmd, f, args)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.policy, "policy", "", "policy file (required)")
	fl.StringVar(&f.tenant, "tenant", "", "tenant the session starts with (validated against tenant.type)")
	fl.StringVar(&f.role, "role", "", "database user of the session (selects the policy's roles entry)")
	fl.StringVar(&f.catalog, "catalog", "", "catalog file, JSON or YAML (rewriter.Catalog)")
	fl.StringVar(&f.upstream, "upstream", "", "postgres:// URL to read the catalog from (10s timeout)")
	fl.StringVar(&f.format, "format", "text", "output format: text or json")
	fl.StringVar(&f.expect, "expect", "", "YAML or JSON file of cases with expected decisions (for CI)")
	fl.BoolVar(&f.extended, "extended", false, "decide as the extended protocol (one statement per input)")
	return cmd
}

func runCheck(cmd *cobra.Command, f checkFlags, args []string) error {
	if f.policy == "" {
		return usageError{errors.New("check: --policy FILE is required")}
	}
	if f.format != "text" && f.format != "json" {
		return usageError{fmt.Errorf("check: --format must be text or json, got %q", f.format)}
	}
	if f.catalog != "" && f.upstream != "" {
		return usageError{errors.New("check: --catalog and --upstream are exclusive")}
	}
	if f.expect != "" && len(args) > 0 {
		return usageError{errors.New("check: --expect takes its SQL from the file: give no SQL arguments")}
	}
	pol, err := policy.Load(f.policy)
	if err != nil {
		return usageError{err}
	}
	base := rewriter.Session{User: f.role, Extended: f.extended}
	if cmd.Flags().Changed("tenant") {
		t, err := pol.ValidateTenant(f.tenant)
		if err != nil {
			// The error never echoes the value.
			return usageError{fmt.Errorf("check: --tenant: %w", err)}
		}
		base.Tenant, base.HasTenant = t, true
		base.StartupTenant, base.HasStartupTenant = t, true
	}
	var cases []expectCase
	if f.expect != "" {
		if cases, err = loadExpectations(f.expect, pol); err != nil {
			return usageError{err}
		}
	}
	var cat *rewriter.Catalog
	switch {
	case f.catalog != "":
		if cat, err = loadCatalogFile(f.catalog); err != nil {
			return usageError{err}
		}
	case f.upstream != "":
		ctx := cmd.Context()
		if ctx == nil {
			ctx = context.Background()
		}
		if cat, err = loadCatalogUpstream(ctx, f.upstream); err != nil {
			return usageError{err}
		}
	}
	if pol.Discover && cat == nil {
		// Not an error: the listed tables are still checked. But a reviewer
		// must know that discovered tables are missing from these decisions.
		fmt.Fprintln(cmd.ErrOrStderr(), "tenantguard: check: warning: the policy has discover: true but no --catalog or --upstream was given; only the tables it lists are tenant relations here")
	}
	rw := rewriter.New(pol, cat)
	out := cmd.OutOrStdout()

	if f.expect != "" {
		report := runExpectations(rw, cases, base)
		if err := report.write(out, f.format); err != nil {
			return err
		}
		if report.Failed > 0 {
			return exitError{exitRejected}
		}
		return nil
	}

	inputs := args
	if len(inputs) == 0 {
		data, err := io.ReadAll(cmd.InOrStdin())
		if err != nil {
			return usageError{fmt.Errorf("check: read stdin: %w", err)}
		}
		inputs = []string{string(data)}
	}
	report, err := decideInputs(rw, inputs, base)
	if err != nil {
		return usageError{err}
	}
	if err := report.write(out, f.format); err != nil {
		return err
	}
	if report.Rejected > 0 {
		return exitError{exitRejected}
	}
	return nil
}

// checkedStatement is one decided statement of a check run.
type checkedStatement struct {
	Input     string            `json:"input"`
	Statement string            `json:"statement"`
	Decision  rewriter.Decision `json:"decision"`
}

// checkReport is the outcome of deciding the inputs of a check run.
type checkReport struct {
	Statements []checkedStatement `json:"statements"`
	Allowed    int                `json:"allowed"`
	Rejected   int                `json:"rejected"`
}

// decideInputs decides every input in order in one session, carrying the
// tenant from one input to the next.
func decideInputs(rw *rewriter.Rewriter, inputs []string, base rewriter.Session) (*checkReport, error) {
	rep := &checkReport{Statements: []checkedStatement{}}
	st := newTenantTrack(base)
	for i, in := range inputs {
		if strings.TrimSpace(in) == "" {
			return nil, fmt.Errorf("check: input %d holds no SQL", i+1)
		}
		res := rw.Decide(in, st.next())
		if len(res.Statements) == 0 {
			return nil, fmt.Errorf("check: input %d holds no statement", i+1)
		}
		texts := statementTexts(in, len(res.Statements))
		for j, d := range res.Statements {
			rep.Statements = append(rep.Statements, checkedStatement{Input: in, Statement: texts[j], Decision: d})
			if d.Verdict == rewriter.VerdictRejected {
				rep.Rejected++
			} else {
				rep.Allowed++
			}
		}
		st.applyInput(res.Statements)
	}
	return rep, nil
}

// statementTexts returns the text of each of the n statements of input, as
// the parser splits it; when the split does not match the decisions (a
// parse error is one decision for the whole input), the whole input.
func statementTexts(input string, n int) []string {
	texts, err := pg_query.SplitWithParser(input, true)
	if err == nil && len(texts) == n {
		return texts
	}
	texts = make([]string, n)
	for i := range texts {
		texts[i] = strings.TrimSpace(input)
	}
	return texts
}

func (r *checkReport) write(w io.Writer, format string) error {
	if format == "json" {
		return writeJSON(w, r)
	}
	var b bytes.Buffer
	for i, s := range r.Statements {
		if i > 0 {
			b.WriteByte('\n')
		}
		writeDecision(&b, i+1, s.Statement, s.Decision)
	}
	if len(r.Statements) > 0 {
		b.WriteByte('\n')
	}
	fmt.Fprintf(&b, "-- %d %s: %d allowed, %d rejected\n", len(r.Statements), plural(len(r.Statements), "statement"), r.Allowed, r.Rejected)
	_, err := w.Write(b.Bytes())
	return err
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}

// writeDecision writes the text block of one decision: SQL comments, then
// the SQL sent upstream unless the statement is rejected.
func writeDecision(b *bytes.Buffer, n int, stmt string, d rewriter.Decision) {
	fmt.Fprintf(b, "-- [%d] %s (%s)\n", n, d.Verdict, d.Reason)
	line := "kind: " + d.Kind
	if len(d.Relations) > 0 {
		line += "; relations: " + strings.Join(d.Relations, ", ")
	}
	comment(b, line)
	if !d.Enforced {
		comment(b, "not enforced (audit mode): the original statement is forwarded")
	}
	if d.SQL != stmt || d.Verdict == rewriter.VerdictRejected {
		comment(b, "original: "+stmt)
	}
	if e := d.TenantEffect; e != nil {
		line := "tenant: " + e.Op
		switch {
		case e.ValueParam > 0:
			line += fmt.Sprintf(" to parameter $%d (checked at Bind; unknown here, so later inputs have no tenant)", e.ValueParam)
		case e.Value != "":
			line += " " + e.Value
		}
		if e.Local {
			line += " (local to the transaction)"
		}
		comment(b, line)
	}
	if t := d.TxOp; t != nil {
		line := "transaction: " + t.Op
		if t.Savepoint != "" {
			line += " " + t.Savepoint
		}
		if t.Chain {
			line += " and chain"
		}
		comment(b, line)
	}
	if no := d.Notify; no != nil {
		comment(b, strings.TrimSpace("notify: "+no.Op+" "+no.Channel))
	}
	if d.TenantParam > 0 {
		comment(b, fmt.Sprintf("tenant bound as parameter $%d (%s)", d.TenantParam, d.TenantType))
	}
	for _, p := range d.LimitParams {
		comment(b, fmt.Sprintf("at Bind: parameter $%d must be <= %d", p, d.MaxRows))
	}
	for _, p := range d.ArrayParams {
		comment(b, fmt.Sprintf("at Bind: the array bound to parameter $%d must have <= %d elements", p, d.MaxRows))
	}
	for _, p := range d.VerifyParams {
		comment(b, fmt.Sprintf("at Bind: parameter $%d must equal the tenant", p))
	}
	if d.RowGuard {
		comment(b, fmt.Sprintf("row guard: more than %d rows fail with 54000", d.MaxRows))
	}
	if e := d.Error; e != nil {
		comment(b, "ERROR "+e.SQLState+" "+e.Message)
		if e.Hint != "" {
			comment(b, "HINT: "+e.Hint)
		}
	}
	if d.SQL != "" && (d.Verdict != rewriter.VerdictRejected) {
		b.WriteString(strings.TrimRight(d.SQL, "; \t\n"))
		b.WriteString(";\n")
	}
}

// comment writes text as an indented SQL comment, one "--" per line.
func comment(b *bytes.Buffer, text string) {
	for _, l := range strings.Split(text, "\n") {
		b.WriteString("--     ")
		b.WriteString(strings.TrimRight(l, " \t\r"))
		b.WriteByte('\n')
	}
}

// tenantTrack follows the tenant from one input to the next with the
// tracker the proxy uses; within one input the rewriter does the same.
type tenantTrack struct {
	base rewriter.Session
	t    rewriter.TenantTracker
}

func newTenantTrack(base rewriter.Session) *tenantTrack {
	tt := &tenantTrack{base: base, t: rewriter.NewTenantTracker(base.StartupTenant, base.HasStartupTenant)}
	if base.HasTenant != base.HasStartupTenant || base.Tenant != base.StartupTenant {
		tt.t.Apply(&rewriter.Decision{TenantEffect: &rewriter.TenantEffect{Op: rewriter.EffectSet, Value: base.Tenant}}, "")
	}
	return tt
}

// next is the rewriter session for the next input.
func (t *tenantTrack) next() rewriter.Session { return t.t.Session(t.base) }

// applyInput applies the effects of one input's decisions. PostgreSQL runs
// a multi-statement simple query as one implicit transaction (unless it
// opens its own) and stops at the first error: a rejected statement ends
// the input and undoes what the implicit transaction set. A tenant bound to
// a parameter is not known offline: later inputs run with no tenant.
func (t *tenantTrack) applyInput(ds []rewriter.Decision) {
	before := t.t.Snapshot()
	explicit := false
	for i := range ds {
		d := &ds[i]
		if d.Verdict == rewriter.VerdictRejected {
			if t.t.InTx() {
				t.t.Fail()
			} else if !explicit {
				t.t = before
			}
			return
		}
		if d.TxOp != nil && d.TxOp.Op == "begin" {
			explicit = true
		}
		t.t.Apply(d, "")
	}
}

// loadCatalogFile reads a rewriter.Catalog from a JSON or YAML file; unknown
// keys are refused.
func loadCatalogFile(path string) (*rewriter.Catalog, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("check: catalog: %w", err)
	}
	var cat rewriter.Catalog
	if err := decodeStrict(data, path, &cat); err != nil {
		return nil, fmt.Errorf("check: catalog %s: %w", path, err)
	}
	if err := completeCatalog(&cat); err != nil {
		return nil, fmt.Errorf("check: catalog %s: %w", path, err)
	}
	return &cat, nil
}

// completeName checks that a catalog entry's "schema.name" key matches its
// schema and name, filling them when the entry leaves them out.
func completeName(section, key string, schema, name *string) error {
	ks, kn, ok := strings.Cut(key, ".")
	if !ok || ks == "" || kn == "" {
		return fmt.Errorf("%s: key %q is not schema.name", section, key)
	}
	if *schema == "" {
		*schema = ks
	}
	if *name == "" {
		*name = kn
	}
	if *schema != ks || *name != kn {
		return fmt.Errorf("%s: %s: schema and name do not match the key", section, key)
	}
	return nil
}

// completeCatalog checks the keys of a catalog read from a file and fills
// the schema, name and kind a hand-written entry may leave out.
func completeCatalog(cat *rewriter.Catalog) error {
	for _, key := range sortedKeys(cat.Relations) {
		r := cat.Relations[key]
		if r == nil {
			return fmt.Errorf("relations: %s: empty entry", key)
		}
		if err := completeName("relations", key, &r.Schema, &r.Name); err != nil {
			return err
		}
		switch r.Kind {
		case "":
			r.Kind = rewriter.KindTable
		case rewriter.KindTable, rewriter.KindPartitioned, rewriter.KindView, rewriter.KindMatView, rewriter.KindForeign:
		default:
			return fmt.Errorf("relations: %s: kind must be table, partitioned_table, view, materialized_view or foreign_table", key)
		}
	}
	for _, key := range sortedKeys(cat.Functions) {
		fn := cat.Functions[key]
		if fn == nil {
			return fmt.Errorf("functions: %s: empty entry", key)
		}
		if err := completeName("functions", key, &fn.Schema, &fn.Name); err != nil {
			return err
		}
	}
	return nil
}

// sortedKeys returns the keys of m in order, so that the first problem
// reported is the same on every run.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// isJSON says whether a data file is JSON: by extension, else by its first
// character.
func isJSON(data []byte, path string) bool {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".json":
		return true
	case ".yaml", ".yml":
		return false
	}
	t := bytes.TrimSpace(data)
	return len(t) > 0 && (t[0] == '{' || t[0] == '[')
}

// decodeStrict decodes JSON or YAML into v, refusing unknown keys and
// trailing documents.
func decodeStrict(data []byte, path string, v any) error {
	if isJSON(data, path) {
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(v); err != nil {
			return err
		}
		if dec.More() {
			return errors.New("more than one JSON value")
		}
		return nil
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return errors.New("empty file")
		}
		return errors.New(oneLine(err))
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return errors.New("more than one YAML document")
	}
	return nil
}

// goType matches the Go type names yaml.v3 puts in its messages.
var goType = regexp.MustCompile(` in type [\w.\[\]*]+`)

// oneLine turns a yaml.v3 error into one line without Go type names.
func oneLine(err error) string {
	msg := strings.TrimPrefix(err.Error(), "yaml: unmarshal errors:\n")
	msg = goType.ReplaceAllString(msg, "")
	lines := strings.Split(msg, "\n")
	for i := range lines {
		lines[i] = strings.TrimSpace(lines[i])
	}
	return "yaml: " + strings.TrimPrefix(strings.Join(lines, "; "), "yaml: ")
}

// loadCatalogUpstream reads the catalog of a live server. Errors never
// carry the URL's password.
func loadCatalogUpstream(ctx context.Context, rawURL string) (*rewriter.Catalog, error) {
	redact := func(err error) error {
		msg := err.Error()
		if u, perr := url.Parse(rawURL); perr == nil && u.User != nil {
			if pw, ok := u.User.Password(); ok && pw != "" {
				msg = strings.ReplaceAll(msg, pw, "xxxxx")
				msg = strings.ReplaceAll(msg, url.QueryEscape(pw), "xxxxx")
				msg = strings.ReplaceAll(msg, url.PathEscape(pw), "xxxxx")
			}
		}
		// Other spellings of a password (key=value strings) stay out too.
		if strings.Contains(rawURL, "password") {
			msg = redactKeyword(msg)
		}
		return errors.New(msg)
	}
	cfg, err := pgx.ParseConfig(rawURL)
	if err != nil {
		return nil, fmt.Errorf("check: --upstream: %w", redact(err))
	}
	ctx, cancel := context.WithTimeout(ctx, upstreamTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("check: --upstream: connect: %w", redact(err))
	}
	defer conn.Close(context.WithoutCancel(ctx))
	cat, err := catalog.LoadConn(ctx, conn, catalog.Options{})
	if err != nil {
		return nil, fmt.Errorf("check: --upstream: %w", redact(err))
	}
	return cat, nil
}

// redactKeyword blanks the value after "password=" in a message.
func redactKeyword(msg string) string {
	const kw = "password="
	var b strings.Builder
	for {
		i := strings.Index(msg, kw)
		if i < 0 {
			b.WriteString(msg)
			return b.String()
		}
		b.WriteString(msg[:i+len(kw)])
		b.WriteString("xxxxx")
		msg = msg[i+len(kw):]
		j := strings.IndexAny(msg, " &'`\"")
		if j < 0 {
			return b.String()
		}
		msg = msg[j:]
	}
}

// expectCase is one entry of an --expect file.
type expectCase struct {
	Name     string  `json:"name,omitempty" yaml:"name,omitempty"`
	SQL      string  `json:"sql" yaml:"sql"`
	Tenant   *string `json:"tenant,omitempty" yaml:"tenant,omitempty"`
	Role     *string `json:"role,omitempty" yaml:"role,omitempty"`
	Extended *bool   `json:"extended,omitempty" yaml:"extended,omitempty"`
	Decision string  `json:"decision" yaml:"decision"`
	Reason   string  `json:"reason,omitempty" yaml:"reason,omitempty"`
	SQLState string  `json:"sqlstate,omitempty" yaml:"sqlstate,omitempty"`
	SQLOut   *string `json:"sql_out,omitempty" yaml:"sql_out,omitempty"`

	// where names the case in reports: "FILE:LINE" (YAML) or "FILE[i]".
	where string
	// tenant is the validated Tenant.
	tenant string
}

// loadExpectations reads and checks an --expect file.
func loadExpectations(path string, pol *policy.Policy) ([]expectCase, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("check: expect: %w", err)
	}
	var cases []expectCase
	if err := decodeStrict(data, path, &cases); err != nil {
		return nil, fmt.Errorf("check: expect %s: %w (want a list of {sql, decision, reason?, sql_out?})", path, err)
	}
	if len(cases) == 0 {
		return nil, fmt.Errorf("check: expect %s: no cases", path)
	}
	var lines []int
	if !isJSON(data, path) {
		var doc yaml.Node
		if yaml.Unmarshal(data, &doc) == nil && len(doc.Content) == 1 && doc.Content[0].Kind == yaml.SequenceNode {
			for _, n := range doc.Content[0].Content {
				lines = append(lines, n.Line)
			}
		}
	}
	for i := range cases {
		c := &cases[i]
		c.where = fmt.Sprintf("%s[%d]", path, i)
		if i < len(lines) {
			c.where = fmt.Sprintf("%s:%d", path, lines[i])
		}
		if strings.TrimSpace(c.SQL) == "" {
			return nil, fmt.Errorf("check: expect %s: sql is required", c.where)
		}
		switch c.Decision {
		case rewriter.VerdictAllowed, rewriter.VerdictRewritten, rewriter.VerdictRejected, rewriter.VerdictBypassed:
		case "":
			return nil, fmt.Errorf("check: expect %s: decision is required", c.where)
		default:
			return nil, fmt.Errorf("check: expect %s: decision must be allowed, rewritten, rejected or bypassed, got %q", c.where, c.Decision)
		}
		if c.Tenant != nil && *c.Tenant != "" {
			t, err := pol.ValidateTenant(*c.Tenant)
			if err != nil {
				return nil, fmt.Errorf("check: expect %s: tenant: %w", c.where, err)
			}
			c.tenant = t
		}
	}
	return cases, nil
}

// caseResult is the outcome of one expectation.
type caseResult struct {
	Name       string     `json:"name,omitempty"`
	Where      string     `json:"where"`
	SQL        string     `json:"sql"`
	OK         bool       `json:"ok"`
	Mismatches []mismatch `json:"mismatches,omitempty"`
	// Decisions are the decisions of the case's statements.
	Decisions []rewriter.Decision `json:"decisions"`
}

// mismatch is one field of a case that differs from the expectation.
type mismatch struct {
	Field string `json:"field"`
	Want  string `json:"want"`
	Got   string `json:"got"`
}

// expectReport is the outcome of an --expect run.
type expectReport struct {
	Cases  []caseResult `json:"cases"`
	Passed int          `json:"passed"`
	Failed int          `json:"failed"`
}

// runExpectations decides every case in a fresh session and compares.
func runExpectations(rw *rewriter.Rewriter, cases []expectCase, base rewriter.Session) *expectReport {
	rep := &expectReport{Cases: []caseResult{}}
	for _, c := range cases {
		s := base
		if c.Tenant != nil {
			s.Tenant, s.HasTenant = c.tenant, c.tenant != ""
			s.StartupTenant, s.HasStartupTenant = s.Tenant, s.HasTenant
		}
		if c.Role != nil {
			s.User = *c.Role
		}
		if c.Extended != nil {
			s.Extended = *c.Extended
		}
		res := rw.Decide(c.SQL, s)
		r := caseResult{Name: c.Name, Where: c.where, SQL: c.SQL, Decisions: res.Statements}
		r.Mismatches = compareCase(c, res.Statements)
		r.OK = len(r.Mismatches) == 0
		if r.OK {
			rep.Passed++
		} else {
			rep.Failed++
		}
		rep.Cases = append(rep.Cases, r)
	}
	return rep
}

// compareCase compares the last decision of a case with the expectation;
// an earlier rejected statement is a mismatch too.
func compareCase(c expectCase, ds []rewriter.Decision) []mismatch {
	if len(ds) == 0 {
		return []mismatch{{Field: "statements", Want: "at least 1", Got: "0"}}
	}
	var ms []mismatch
	for i, d := range ds[:len(ds)-1] {
		if d.Verdict == rewriter.VerdictRejected {
			ms = append(ms, mismatch{Field: fmt.Sprintf("statement %d", i+1), Want: "not rejected", Got: "rejected (" + d.Reason + ")"})
		}
	}
	d := ds[len(ds)-1]
	if d.Verdict != c.Decision {
		ms = append(ms, mismatch{Field: "decision", Want: c.Decision, Got: d.Verdict})
	}
	if c.Reason != "" && d.Reason != c.Reason {
		ms = append(ms, mismatch{Field: "reason", Want: c.Reason, Got: d.Reason})
	}
	if c.SQLState != "" {
		got := ""
		if d.Error != nil {
			got = d.Error.SQLState
		}
		if got != c.SQLState {
			ms = append(ms, mismatch{Field: "sqlstate", Want: c.SQLState, Got: got})
		}
	}
	if c.SQLOut != nil && strings.TrimSpace(d.SQL) != strings.TrimSpace(*c.SQLOut) {
		ms = append(ms, mismatch{Field: "sql_out", Want: strings.TrimSpace(*c.SQLOut), Got: strings.TrimSpace(d.SQL)})
	}
	return ms
}

func (r *expectReport) write(w io.Writer, format string) error {
	if format == "json" {
		return writeJSON(w, r)
	}
	var b bytes.Buffer
	for _, c := range r.Cases {
		label := c.Where
		if c.Name != "" {
			label = c.Name + " (" + c.Where + ")"
		}
		if c.OK {
			fmt.Fprintf(&b, "ok   %s\n", label)
			continue
		}
		fmt.Fprintf(&b, "FAIL %s\n", label)
		fmt.Fprintf(&b, "     sql: %s\n", strings.ReplaceAll(strings.TrimSpace(c.SQL), "\n", "\n          "))
		for _, m := range c.Mismatches {
			fmt.Fprintf(&b, "     %s:\n", m.Field)
			diffLine(&b, "-", "want", m.Want)
			diffLine(&b, "+", "got ", m.Got)
		}
		if d := c.Decisions; len(d) > 0 && d[len(d)-1].Error != nil {
			e := d[len(d)-1].Error
			fmt.Fprintf(&b, "     error: %s %s\n", e.SQLState, e.Message)
		}
	}
	fmt.Fprintf(&b, "-- %d %s: %d passed, %d failed\n", len(r.Cases), plural(len(r.Cases), "case"), r.Passed, r.Failed)
	_, err := w.Write(b.Bytes())
	return err
}

// diffLine writes one side of a mismatch, continuing multi-line values.
func diffLine(b *bytes.Buffer, sign, label, v string) {
	if v == "" {
		v = "(none)"
	}
	for i, l := range strings.Split(v, "\n") {
		if i == 0 {
			fmt.Fprintf(b, "     %s %s %s\n", sign, label, l)
		} else {
			fmt.Fprintf(b, "     %s %s %s\n", sign, strings.Repeat(" ", len(label)), l)
		}
	}
}
