package rewriter

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tenantguard/tenantguard/policy"
)

// indirectionCatalog is the golden catalog plus the schema code of the
// end-to-end threat suite: functions reading tenant data through an escaped
// name, a view, another function and a string; an operator, a cast, a
// trigger, a default and a rule.
func indirectionCatalog() *Catalog {
	c := testCatalog()
	fn := func(schema, name, lang, body string) {
		c.Functions[schema+"."+name] = &Function{Schema: schema, Name: name, Language: lang, Body: body}
	}
	fn("public", "escaped_names", "sql", `SELECT string_agg(name, ',') FROM U&"pat\0069ents"`)
	fn("public", "via_view", "sql", "SELECT string_agg(name, ',') FROM patient_names")
	fn("public", "dump_names", "plpgsql", "DECLARE r text; BEGIN SELECT string_agg(name, ',') INTO r FROM patients; RETURN r; END")
	fn("public", "via_function", "sql", "SELECT dump_names()")
	fn("public", "via_chain", "sql", "SELECT via_view()")
	fn("public", "via_xml", "sql", "SELECT query_to_xml('SELECT name FROM pat' || 'ients', true, false, '')::text")
	fn("public", "ping", "sql", "SELECT pong()")
	fn("public", "pong", "sql", "SELECT ping()")
	fn("public", "double", "sql", "SELECT $1 * 2")
	fn("public", "country_name", "sql", "WITH c AS (SELECT name FROM countries WHERE code = $1) SELECT name FROM c")
	fn("public", "std_body", "sql", "RETURN ($1 + 1)")
	fn("public", "std_atomic", "sql", "BEGIN ATOMIC\n SELECT count(*) FROM public.patients;\nEND")
	fn("public", "std_atomic_safe", "sql", "BEGIN ATOMIC\n SELECT count(*) FROM public.countries;\nEND")
	fn("public", "ghost", "sql", "SELECT * FROM not_in_catalog")
	fn("public", "broken", "sql", "SELEC 1")
	fn("public", "switcher", "sql", "SELECT set_config('app.clinic_id', '2', false)")
	fn("public", "setter", "sql", "SET app.clinic_id = 2")
	fn("public", "shout", "plpgsql", "BEGIN RAISE NOTICE '%', (SELECT string_agg(name, ',') FROM patients); RETURN NEW; END")
	fn("public", "stamp", "sql", "SELECT 'x'::text")
	fn("public", "leak_op", "sql", "SELECT string_agg(name, ',') FROM patients")
	fn("public", "safe_op", "sql", "SELECT $1 + $2")
	fn("public", "to_secret", "sql", "SELECT ROW(count(*))::secret FROM patients")
	fn("public", "uuid_generate_v4", "c", "")
	fn("public", "log_country", "sql", "INSERT INTO feedback VALUES (1, $1)")
	fn("public", "overloaded", "sql", "SELECT 1\n;\nSELECT count(*) FROM countries")
	c.Operators = map[string][]string{"###": {"public.leak_op"}, "%%%": {"public.safe_op", "pg_catalog.int4pl"}}
	c.Casts = map[string][]string{"secret": {"public.to_secret"}}
	add := func(r *Relation) { c.Relations[r.Schema+"."+r.Name] = r }
	add(&Relation{Schema: "public", Name: "feedback", Kind: KindTable, Columns: []string{"id", "body"}, Triggers: []string{"public.shout"}})
	add(&Relation{Schema: "public", Name: "stamped", Kind: KindTable, Columns: []string{"id", "names"}, Defaults: []string{"public.dump_names"}})
	add(&Relation{Schema: "public", Name: "ruled", Kind: KindTable, Columns: []string{"id"}, HasRules: true})
	add(&Relation{Schema: "public", Name: "quiet", Kind: KindTable, Columns: []string{"id", "body"}, Triggers: []string{"public.stamp"}, Defaults: []string{"public.uuid_generate_v4"}})
	return c
}

func TestIndirection(t *testing.T) {
	p := testPolicy("")
	p.Roles["trusted"] = policy.Role{Functions: []string{"dump_names", "public.shout"}}
	r := New(p, indirectionCatalog())
	for _, tc := range []struct {
		name, sql, user, want string // want: reason, "" = not rejected
	}{
		{"escaped identifier in a SQL body", "SELECT escaped_names()", "", ReasonDeniedFunction},
		{"view over a tenant table in a SQL body", "SELECT via_view()", "", ReasonDeniedFunction},
		{"function calling a plpgsql function", "SELECT via_function()", "", ReasonDeniedFunction},
		{"chain of SQL functions to a view", "SELECT via_chain()", "", ReasonDeniedFunction},
		{"query_to_xml in a SQL body", "SELECT via_xml()", "", ReasonDeniedFunction},
		{"set_config in a SQL body", "SELECT switcher()", "", ReasonDeniedFunction},
		{"SET in a SQL body", "SELECT setter()", "", ReasonDeniedFunction},
		{"cycle", "SELECT ping()", "", ReasonDeniedFunction},
		{"unknown relation in a body", "SELECT ghost()", "", ReasonDeniedFunction},
		{"body that does not parse", "SELECT broken()", "", ReasonDeniedFunction},
		{"BEGIN ATOMIC reading a tenant table", "SELECT std_atomic()", "", ReasonDeniedFunction},
		{"plpgsql refused", "SELECT dump_names()", "", ReasonDeniedFunction},
		{"plpgsql listed for the role", "SELECT dump_names()", "trusted", ""},
		{"SQL function calling a listed plpgsql function", "SELECT via_function()", "trusted", ""},
		{"computing SQL function", "SELECT double(2)", "", ""},
		{"SQL function over a non-tenant table with a CTE", "SELECT country_name('fr')", "", ""},
		{"RETURN body", "SELECT std_body(1)", "", ""},
		{"BEGIN ATOMIC over a non-tenant table", "SELECT std_atomic_safe()", "", ""},
		{"extension C function", "SELECT uuid_generate_v4()", "", ""},
		{"overloads joined", "SELECT overloaded()", "", ""},
		{"operator reading a tenant table", "SELECT 1 ### 1", "", ReasonDeniedFunction},
		{"qualified operator", "SELECT 1 OPERATOR(public.###) 1", "", ReasonDeniedFunction},
		{"operator in ANY", "SELECT 1 ### ANY (SELECT 1)", "", ReasonDeniedFunction},
		{"operator in ORDER BY USING", "SELECT id FROM countries ORDER BY id USING ### LIMIT 1", "", ReasonDeniedFunction},
		{"safe operator", "SELECT 1 %%% 1", "", ""},
		{"builtin operator", "SELECT 1 + 1", "", ""},
		{"cast through a user function", "SELECT 1::secret", "", ReasonDeniedFunction},
		{"CALL of a function reading a view", "CALL via_view()", "", ReasonDeniedFunction},
		{"trigger on a non-tenant table", "INSERT INTO feedback VALUES (1, 'hello') ON CONFLICT DO NOTHING", "", ReasonDeniedFunction},
		{"trigger listed for the role", "INSERT INTO feedback VALUES (1, 'hello')", "trusted", ""},
		{"trigger on UPDATE", "UPDATE feedback SET body = 'x' WHERE id = 1", "", ReasonDeniedFunction},
		{"trigger on a writable CTE", "WITH w AS (DELETE FROM feedback RETURNING id) SELECT count(*) FROM w", "", ReasonDeniedFunction},
		{"trigger on COPY FROM", "COPY feedback FROM STDIN", "", ReasonDeniedFunction},
		{"default calling a plpgsql function", "INSERT INTO stamped (id) VALUES (1)", "", ReasonDeniedFunction},
		{"defaults do not run on DELETE", "DELETE FROM stamped WHERE id = 1", "", ""},
		{"rule", "INSERT INTO ruled VALUES (1)", "", ReasonUnsupported},
		{"safe trigger and C default", "INSERT INTO quiet VALUES (1, 'x')", "", ""},
		{"SQL body writing to a table with a trigger", "SELECT log_country('fr')", "", ReasonDeniedFunction},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := r.Decide(tc.sql, Session{Tenant: "1", HasTenant: true, User: tc.user})
			require.Len(t, res.Statements, 1)
			d := res.Statements[0]
			if tc.want == "" {
				assert.NotEqual(t, VerdictRejected, d.Verdict, "%s: %+v", tc.sql, d.Error)
				return
			}
			require.Equal(t, VerdictRejected, d.Verdict, tc.sql)
			assert.Equal(t, tc.want, d.Reason, tc.sql)
			require.NotNil(t, d.Error)
			if tc.want == ReasonDeniedFunction {
				assert.Equal(t, "42501", d.Error.SQLState)
			} else {
				assert.Equal(t, "0A000", d.Error.SQLState)
			}
		})
	}
}

// Without a catalog nothing is known of user functions: unqualified names
// pass as builtins would, denied builtins are still refused.
func TestIndirectionWithoutCatalog(t *testing.T) {
	r := New(testPolicy(""), nil)
	for sql, rejected := range map[string]bool{
		"SELECT via_view()": false,
		"SELECT 1 ### 1":    false,
		"SELECT query_to_xml('SELECT 1', true, false, '')": true,
	} {
		d := r.Decide(sql, Session{Tenant: "1", HasTenant: true}).Statements[0]
		assert.Equal(t, rejected, d.Verdict == VerdictRejected, sql)
	}
}

func TestParseSQLBody(t *testing.T) {
	for body, n := range map[string]int{
		"":                           0,
		"SELECT 1":                   1,
		"SELECT 1; SELECT 2":         2,
		"SELECT 1 -- c\n;\nSELECT 2": 2,
		"RETURN 1":                   1,
		"BEGIN ATOMIC\n SELECT 1;\n SELECT 2;\nEND": 2,
	} {
		stmts, ok := parseSQLBody(body)
		require.True(t, ok, body)
		assert.Len(t, stmts, n, body)
	}
	_, ok := parseSQLBody("SELEC 1")
	assert.False(t, ok)
}
