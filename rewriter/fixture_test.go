package rewriter

import (
	"github.com/tenantguard/tenantguard/policy"
)

// testPolicy is the policy of the golden files, by variant name.
func testPolicy(variant string) *policy.Policy {
	p := &policy.Policy{
		Version:  1,
		Mode:     policy.ModeEnforce,
		Strategy: policy.StrategyInject,
		Tenant:   policy.Tenant{Column: "clinic_id", Type: policy.TypeInteger, Setting: "app.clinic_id", Required: true},
		Tables: []policy.Table{
			{Name: "patients"},
			{Name: "invoices"},
			{Name: "soap_notes", Column: "clinic_id", Strategy: policy.StrategyVerify},
			{Name: "orders"},
			{Schema: "billing", Name: "payments", Column: "tenant"},
			{Name: "Audit Log"},
		},
		Discover: true,
		Limits:   policy.Limits{MaxRows: 100, Unbounded: policy.UnboundedReject},
		Roles: map[string]policy.Role{
			"migrator": {Bypass: true},
			"admin":    {AllowDDL: true, AllowTruncate: true, AllowCopyFrom: true, AllowDo: true},
			"reporter": {Functions: []string{"pg_sleep", "reports.monthly", "set_config"}},
		},
		RedactErrors: true,
	}
	switch variant {
	case "", "default", "setting": // setting: default policy, Rewriter built WithTenantSetting
	case "verify":
		p.Strategy = policy.StrategyVerify
		for i := range p.Tables {
			p.Tables[i].Strategy = ""
		}
	case "cap":
		p.Limits.Unbounded = policy.UnboundedCap
	case "audit":
		p.Mode = policy.ModeAudit
	case "optional":
		p.Tenant.Required = false
	case "uuid":
		p.Tenant.Type = policy.TypeUUID
	case "text":
		p.Tenant.Type = policy.TypeText
	case "bigint":
		p.Tenant.Type = policy.TypeBigint
	default:
		panic("unknown policy variant " + variant)
	}
	return p
}

// testCatalog is the upstream schema of the golden files.
func testCatalog() *Catalog {
	rel := func(schema, name string, kind RelKind, cols []string, keys [][]string) *Relation {
		return &Relation{Schema: schema, Name: name, Kind: kind, Columns: cols, UniqueKeys: keys}
	}
	c := &Catalog{Relations: map[string]*Relation{}, Functions: map[string]*Function{}}
	add := func(r *Relation) { c.Relations[r.Schema+"."+r.Name] = r }
	add(rel("public", "patients", KindTable, []string{"id", "clinic_id", "name", "dob", "email"}, [][]string{{"id"}, {"clinic_id", "email"}}))
	add(rel("public", "invoices", KindTable, []string{"id", "clinic_id", "patient_id", "amount", "status"}, [][]string{{"id"}}))
	add(rel("public", "soap_notes", KindTable, []string{"id", "clinic_id", "patient_id", "note"}, [][]string{{"id"}}))
	add(rel("public", "orders", KindPartitioned, []string{"id", "clinic_id", "placed_at", "total"}, [][]string{{"id", "placed_at"}}))
	c.Relations["public.orders"].Children = []string{"public.orders_2025", "public.orders_2026"}
	for _, ch := range []string{"orders_2025", "orders_2026"} {
		r := rel("public", ch, KindTable, []string{"id", "clinic_id", "placed_at", "total"}, nil)
		r.Parents = []string{"public.orders"}
		add(r)
	}
	// legacy_visits has no tenant column in the policy but is discovered.
	add(rel("public", "visits", KindTable, []string{"id", "clinic_id", "patient_id", "at"}, [][]string{{"id"}}))
	add(rel("public", "clinics", KindTable, []string{"id", "name"}, [][]string{{"id"}}))
	add(rel("public", "countries", KindTable, []string{"code", "name"}, [][]string{{"code"}}))
	add(rel("billing", "payments", KindTable, []string{"id", "tenant", "amount"}, [][]string{{"id"}}))
	v := rel("public", "patient_summary", KindView, []string{"id", "clinic_id", "name"}, nil)
	v.Reads = []string{"public.patients"}
	add(v)
	v2 := rel("public", "patient_names", KindView, []string{"id", "name"}, nil)
	v2.Reads = []string{"public.patients"}
	add(v2)
	c.Functions["public.patient_count"] = &Function{Schema: "public", Name: "patient_count", Language: "sql", Body: "SELECT count(*) FROM patients"}
	c.Functions["public.slugify"] = &Function{Schema: "public", Name: "slugify", Language: "sql", Body: "SELECT lower($1)"}
	c.Functions["public.run_sql"] = &Function{Schema: "public", Name: "run_sql", Language: "plpgsql", Body: "BEGIN EXECUTE $1; END"}
	c.Functions["public.archive_clinic"] = &Function{Schema: "public", Name: "archive_clinic", Language: "plpgsql", Kind: "p", Body: "BEGIN UPDATE invoices SET status = 'archived'; END"}
	c.Functions["public.touch"] = &Function{Schema: "public", Name: "touch", Language: "plpgsql", Kind: "p", Body: "BEGIN PERFORM 1; END"}
	c.Functions["reports.monthly"] = &Function{Schema: "reports", Name: "monthly", Language: "sql", Body: "SELECT * FROM invoices"}
	c.Functions["public.my_agg"] = &Function{Schema: "public", Name: "my_agg", Language: "internal", Kind: "a"}
	c.Functions["public.patient_ids"] = &Function{Schema: "public", Name: "patient_ids", Language: "c", ReturnsSet: true}
	return c
}
