package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Defaults of the policy file. Every key of the file is optional except that
// a policy must name at least one table or set discover: true.
const (
	DefaultVersion      = 1
	DefaultMode         = ModeEnforce
	DefaultStrategy     = StrategyInject
	DefaultColumn       = "clinic_id"
	DefaultType         = TypeInteger
	DefaultSetting      = "app.clinic_id"
	DefaultRequired     = true
	DefaultDiscover     = false // discovery widens the policy from the live schema: opt in explicitly
	DefaultMaxRows      = int64(100)
	DefaultUnbounded    = UnboundedReject
	DefaultRedactErrors = true
)

// Error is one problem in a policy file, located by file, line and key.
// Its text is "policy: FILE:LINE: KEY: MESSAGE", for example
//
//	policy: testdata/bad.yaml:12: tables[2].strategy: must be inject or verify, got "foo"
//
// List indexes in keys count from 0.
type Error struct {
	Source string // file name, "<input>" when parsed from memory
	Line   int    // 1-based; 0 when the YAML library gave none
	Key    string // dotted path of the offending key; "" for the document itself
	Msg    string
}

// Error implements error.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("policy: ")
	b.WriteString(e.Source)
	if e.Line > 0 {
		b.WriteString(":")
		b.WriteString(strconv.Itoa(e.Line))
	}
	b.WriteString(": ")
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors is every problem found in one policy file, in file order. Parse
// returns it (never empty) when the file is invalid.
type Errors []*Error

// Error implements error: one problem per line.
func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap lets errors.As find each *Error.
func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

// Load reads and validates the policy file at path. See Parse.
func Load(path string) (*Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("policy: read %s: %w", path, err)
	}
	return Parse(data, path)
}

// Parse validates a policy file and returns it with every default filled in.
// source names the file in error messages ("" for "<input>"). Every key is
// checked: unknown keys, wrong types and bad values are refused, and all
// problems found are returned together as Errors. Parse never panics.
func Parse(data []byte, source string) (pol *Policy, err error) {
	if source == "" {
		source = "<input>"
	}
	p := &parser{src: source}
	root, ok := p.document(data)
	if !ok {
		return nil, p.errs
	}
	pol = p.policy(root)
	if len(p.errs) > 0 {
		return nil, p.errs
	}
	pol.Digest = digest(data)
	if source != "<input>" {
		pol.Source = source
	}
	return pol, nil
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

type parser struct {
	src  string
	errs Errors
}

func (p *parser) errorf(n *yaml.Node, key, format string, args ...any) {
	line := 0
	if n != nil {
		line = n.Line
	}
	p.errs = append(p.errs, &Error{Source: p.src, Line: line, Key: key, Msg: fmt.Sprintf(format, args...)})
}

// document decodes exactly one YAML document into a node tree.
func (p *parser) document(data []byte) (root *yaml.Node, ok bool) {
	defer func() {
		// The YAML library is not ours; a panic in it must not take the
		// proxy down with it.
		if r := recover(); r != nil {
			p.errs = append(p.errs, &Error{Source: p.src, Msg: "yaml: the file could not be parsed"})
			root, ok = nil, false
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			p.errs = append(p.errs, &Error{Source: p.src, Line: 1, Msg: "the policy is empty"})
			return nil, false
		}
		p.yamlError(err)
		return nil, false
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		p.errorf(&extra, "", "a policy file holds one YAML document, found another")
		return nil, false
	} else if !errors.Is(err, io.EOF) {
		p.yamlError(err)
		return nil, false
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 {
		p.errs = append(p.errs, &Error{Source: p.src, Line: 1, Msg: "the policy is empty"})
		return nil, false
	}
	root = deref(doc.Content[0])
	if root.Kind == yaml.ScalarNode && root.ShortTag() == "!!null" {
		p.errorf(root, "", "the policy is empty")
		return nil, false
	}
	if root.Kind != yaml.MappingNode {
		p.errorf(root, "", "the policy must be a mapping of keys (version, mode, tenant, tables, ...), got %s", describe(root))
		return nil, false
	}
	return root, true
}

func (p *parser) yamlError(err error) {
	msg := err.Error()
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		p.errs = append(p.errs, &Error{Source: p.src, Line: line, Msg: "yaml: " + m[2]})
		return
	}
	p.errs = append(p.errs, &Error{Source: p.src, Msg: msg})
}

// deref follows YAML aliases (anchors are allowed; the library bounds alias
// expansion).
func deref(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && n.Alias != nil && i < 100; i++ {
		n = n.Alias
	}
	return n
}

// describe names a node's type for "got ..." in messages, echoing a short
// scalar value (a policy holds no secrets).
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return "null"
		case "!!str":
			return "string " + quote(n.Value)
		case "!!int":
			return "integer " + short(n.Value)
		case "!!float":
			return "number " + short(n.Value)
		case "!!bool":
			return "boolean " + short(n.Value)
		default:
			return short(n.ShortTag()) + " " + quote(n.Value)
		}
	}
	return "an unsupported YAML node"
}

func short(s string) string {
	const max = 48
	if len(s) > max {
		// Cut on a rune boundary is not needed for %q, which escapes.
		return s[:max] + "..."
	}
	return s
}

func quote(s string) string { return strconv.Quote(short(s)) }

// mapping iterates the key/value pairs of a mapping node, refusing
// duplicate and non-string keys. fn returns false for an unknown key.
func (p *parser) mapping(n *yaml.Node, path string, known string, fn func(key string, k, v *yaml.Node) bool) {
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), deref(n.Content[i+1])
		if k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge" {
			p.errorf(k, path, "YAML merge keys (<<) are not supported")
			continue
		}
		if k.Kind != yaml.ScalarNode || k.ShortTag() != "!!str" {
			p.errorf(k, path, "keys must be strings, got %s", describe(k))
			continue
		}
		full := join(path, k.Value)
		if line, dup := seen[k.Value]; dup {
			p.errorf(k, full, "duplicate key (first at line %d)", line)
			continue
		}
		seen[k.Value] = k.Line
		if !fn(k.Value, k, v) {
			p.errorf(k, full, "unknown key (known: %s)", known)
		}
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func (p *parser) str(n *yaml.Node, key string) (string, bool) {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" {
		p.errorf(n, key, "must be a string, got %s", describe(n))
		return "", false
	}
	return n.Value, true
}

func (p *parser) boolean(n *yaml.Node, key string) bool {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" {
		p.errorf(n, key, "must be true or false, got %s", describe(n))
		return false
	}
	var b bool
	if err := n.Decode(&b); err != nil {
		p.errorf(n, key, "must be true or false, got %s", describe(n))
		return false
	}
	return b
}

func (p *parser) integer(n *yaml.Node, key string) (int64, bool) {
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!float" && digitsOnly(strings.TrimPrefix(n.Value, "-")) {
		// YAML reads an integer too large for 64 bits as a float.
		p.errorf(n, key, "must be an integer that fits in 64 bits, got %s", short(n.Value))
		return 0, false
	}
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
		p.errorf(n, key, "must be an integer, got %s", describe(n))
		return 0, false
	}
	var v int64
	if err := n.Decode(&v); err != nil {
		p.errorf(n, key, "must be an integer that fits in 64 bits, got %s", describe(n))
		return 0, false
	}
	return v, true
}

func digitsOnly(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// enum reads a string that must be one of choices.
func (p *parser) enum(n *yaml.Node, key string, choices ...string) (string, bool) {
	s, ok := p.str(n, key)
	if !ok {
		return "", false
	}
	for _, c := range choices {
		if s == c {
			return s, true
		}
	}
	p.errorf(n, key, "must be %s, got %s", orList(choices), quote(s))
	return "", false
}

func orList(c []string) string {
	switch len(c) {
	case 1:
		return c[0]
	case 2:
		return c[0] + " or " + c[1]
	}
	return strings.Join(c[:len(c)-1], ", ") + " or " + c[len(c)-1]
}

// name reads a SQL name of at most maxParts dotted parts.
func (p *parser) name(n *yaml.Node, key string, maxParts int) ([]string, bool) {
	s, ok := p.str(n, key)
	if !ok {
		return nil, false
	}
	if (n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle)) != 0 && hasUpperOutsideQuotes(s) {
		p.errorf(n, key, "%s is ambiguous: YAML quotes are not SQL quotes; write %s for the folded name, or '\"%s\"' for the case-sensitive one",
			quote(s), foldASCII(s), s)
		return nil, false
	}
	if s == "" {
		p.errorf(n, key, "must not be empty")
		return nil, false
	}
	parts, err := parseName(s, maxParts)
	if err != nil {
		p.errorf(n, key, "%s %s", quote(s), err.Error())
		return nil, false
	}
	return parts, true
}

func (p *parser) column(n *yaml.Node, key string) (string, bool) {
	parts, ok := p.name(n, key, 1)
	if !ok {
		return "", false
	}
	return parts[0], true
}

const rootKeys = "version, mode, strategy, tenant, tables, discover, limits, roles, redact_errors"

func (p *parser) policy(root *yaml.Node) *Policy {
	pol := &Policy{
		Version:  DefaultVersion,
		Mode:     DefaultMode,
		Strategy: DefaultStrategy,
		Tenant: Tenant{
			Column:   DefaultColumn,
			Type:     DefaultType,
			Setting:  DefaultSetting,
			Required: DefaultRequired,
		},
		Discover:     DefaultDiscover,
		Limits:       Limits{MaxRows: DefaultMaxRows, Unbounded: DefaultUnbounded},
		Roles:        map[string]Role{},
		RedactErrors: DefaultRedactErrors,
	}
	var tablesNode *yaml.Node
	p.mapping(root, "", rootKeys, func(key string, k, v *yaml.Node) bool {
		switch key {
		case "version":
			if n, ok := p.integer(v, key); ok && n != 1 {
				p.errorf(v, key, "must be 1, got %d", n)
			}
		case "mode":
			if s, ok := p.enum(v, key, string(ModeEnforce), string(ModeAudit)); ok {
				pol.Mode = Mode(s)
			}
		case "strategy":
			if s, ok := p.enum(v, key, string(StrategyInject), string(StrategyVerify)); ok {
				pol.Strategy = Strategy(s)
			}
		case "tenant":
			p.tenant(v, key, &pol.Tenant)
		case "tables":
			tablesNode = v
			pol.Tables = p.tables(v, key)
		case "discover":
			pol.Discover = p.boolean(v, key)
		case "limits":
			p.limits(v, key, &pol.Limits)
		case "roles":
			pol.Roles = p.roles(v, key)
		case "redact_errors":
			pol.RedactErrors = p.boolean(v, key)
		default:
			return false
		}
		return true
	})
	// Per-table defaults come from tenant.column and strategy, which may
	// appear anywhere in the file.
	for i := range pol.Tables {
		if pol.Tables[i].Column == "" {
			pol.Tables[i].Column = pol.Tenant.Column
		}
		if pol.Tables[i].Strategy == "" {
			pol.Tables[i].Strategy = pol.Strategy
		}
	}
	if len(pol.Tables) == 0 && !pol.Discover && len(p.errs) == 0 {
		at := root
		if tablesNode != nil {
			at = tablesNode
		}
		p.errorf(at, "tables", "no tenant tables: list at least one, or set discover: true (a policy that scopes nothing protects nothing)")
	}
	return pol
}

func (p *parser) section(n *yaml.Node, key string) bool {
	if n.Kind != yaml.MappingNode {
		p.errorf(n, key, "must be a mapping, got %s", describe(n))
		return false
	}
	return true
}

func (p *parser) tenant(n *yaml.Node, path string, t *Tenant) {
	if !p.section(n, path) {
		return
	}
	p.mapping(n, path, "column, type, setting, required", func(key string, k, v *yaml.Node) bool {
		full := join(path, key)
		switch key {
		case "column":
			if c, ok := p.column(v, full); ok {
				t.Column = c
			}
		case "type":
			if s, ok := p.enum(v, full, string(TypeInteger), string(TypeBigint), string(TypeUUID), string(TypeText)); ok {
				t.Type = TenantType(s)
			}
		case "setting":
			if s, ok := p.str(v, full); ok {
				if s == "" {
					p.errorf(v, full, "must not be empty")
				} else if set, err := parseSetting(s); err != nil {
					p.errorf(v, full, "%s %s", quote(s), err.Error())
				} else {
					t.Setting = set
				}
			}
		case "required":
			t.Required = p.boolean(v, full)
		default:
			return false
		}
		return true
	})
}

func (p *parser) tables(n *yaml.Node, path string) []Table {
	if n.Kind != yaml.SequenceNode {
		p.errorf(n, path, "must be a list of table names, got %s", describe(n))
		return nil
	}
	var out []Table
	firstAt := map[[2]string]int{}
	for i, item := range n.Content {
		item = deref(item)
		key := fmt.Sprintf("%s[%d]", path, i)
		var t Table
		var ok bool
		switch item.Kind {
		case yaml.ScalarNode:
			t, ok = p.tableName(item, key)
		case yaml.MappingNode:
			t, ok = p.tableMapping(item, key)
		default:
			p.errorf(item, key, "must be a table name or a mapping with name, column, strategy, got %s", describe(item))
		}
		if !ok {
			continue
		}
		id := [2]string{t.Schema, t.Name}
		if line, dup := firstAt[id]; dup {
			p.errorf(item, key, "table %s is listed twice (first at line %d)", quote(t.qualified()), line)
			continue
		}
		firstAt[id] = item.Line
		out = append(out, t)
	}
	return out
}

func (t Table) qualified() string {
	if t.Schema == "" {
		return t.Name
	}
	return t.Schema + "." + t.Name
}

func (p *parser) tableName(n *yaml.Node, key string) (Table, bool) {
	parts, ok := p.name(n, key, 2)
	if !ok {
		return Table{}, false
	}
	if len(parts) == 2 {
		return Table{Schema: parts[0], Name: parts[1]}, true
	}
	return Table{Name: parts[0]}, true
}

func (p *parser) tableMapping(n *yaml.Node, path string) (Table, bool) {
	var t Table
	ok, hasName := true, false
	p.mapping(n, path, "name, column, strategy", func(key string, k, v *yaml.Node) bool {
		full := join(path, key)
		switch key {
		case "name":
			hasName = true
			nt, good := p.tableName(v, full)
			if !good {
				ok = false
				return true
			}
			t.Schema, t.Name = nt.Schema, nt.Name
		case "column":
			c, good := p.column(v, full)
			if !good {
				ok = false
				return true
			}
			t.Column = c
		case "strategy":
			s, good := p.enum(v, full, string(StrategyInject), string(StrategyVerify))
			if !good {
				ok = false
				return true
			}
			t.Strategy = Strategy(s)
		default:
			ok = false
			return false
		}
		return true
	})
	if !hasName {
		p.errorf(n, path, "a table mapping needs a name")
		return Table{}, false
	}
	return t, ok
}

func (p *parser) limits(n *yaml.Node, path string, l *Limits) {
	if !p.section(n, path) {
		return
	}
	p.mapping(n, path, "max_rows, unbounded", func(key string, k, v *yaml.Node) bool {
		full := join(path, key)
		switch key {
		case "max_rows":
			if m, ok := p.integer(v, full); ok {
				if m < 1 {
					p.errorf(v, full, "must be at least 1, got %d", m)
				} else {
					l.MaxRows = m
				}
			}
		case "unbounded":
			if s, ok := p.enum(v, full, string(UnboundedReject), string(UnboundedCap)); ok {
				l.Unbounded = Unbounded(s)
			}
		default:
			return false
		}
		return true
	})
}

var simpleKey = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func roleKey(path, user string) string {
	if simpleKey.MatchString(user) {
		return path + "." + user
	}
	return path + "[" + quote(user) + "]"
}

func (p *parser) roles(n *yaml.Node, path string) map[string]Role {
	out := map[string]Role{}
	if !p.section(n, path) {
		return out
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), deref(n.Content[i+1])
		if k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge" {
			p.errorf(k, path, "YAML merge keys (<<) are not supported")
			continue
		}
		if k.Kind != yaml.ScalarNode || k.ShortTag() != "!!str" {
			p.errorf(k, path, "role names must be strings (quote them), got %s", describe(k))
			continue
		}
		user := k.Value
		key := roleKey(path, user)
		if user == "" || strings.IndexByte(user, 0) >= 0 {
			p.errorf(k, key, "role name must be a non-empty database user name")
			continue
		}
		if line, dup := seen[user]; dup {
			p.errorf(k, key, "duplicate role (first at line %d)", line)
			continue
		}
		seen[user] = k.Line
		if !p.section(v, key) {
			continue
		}
		out[user] = p.role(v, key)
	}
	return out
}

func (p *parser) role(n *yaml.Node, path string) Role {
	var r Role
	p.mapping(n, path, "bypass, ddl, truncate, copy_from, do, functions", func(key string, k, v *yaml.Node) bool {
		full := join(path, key)
		switch key {
		case "bypass":
			r.Bypass = p.boolean(v, full)
		case "ddl":
			r.AllowDDL = p.boolean(v, full)
		case "truncate":
			r.AllowTruncate = p.boolean(v, full)
		case "copy_from":
			r.AllowCopyFrom = p.boolean(v, full)
		case "do":
			r.AllowDo = p.boolean(v, full)
		case "functions":
			r.Functions = p.functions(v, full)
		default:
			return false
		}
		return true
	})
	return r
}

func (p *parser) functions(n *yaml.Node, path string) []string {
	if n.Kind != yaml.SequenceNode {
		p.errorf(n, path, "must be a list of function names, got %s", describe(n))
		return nil
	}
	var out []string
	for i, item := range n.Content {
		item = deref(item)
		parts, ok := p.name(item, fmt.Sprintf("%s[%d]", path, i), 2)
		if !ok {
			continue
		}
		out = append(out, strings.Join(parts, "."))
	}
	return out
}
