package rewriter

import "testing"

func TestTenantTracker(t *testing.T) {
	set := func(v string, local bool) *Decision {
		return &Decision{TenantEffect: &TenantEffect{Op: EffectSet, Value: v, Local: local}}
	}
	tx := func(op, sp string) *Decision { return &Decision{TxOp: &TxOp{Op: op, Savepoint: sp}} }
	reset := &Decision{TenantEffect: &TenantEffect{Op: EffectReset}}
	want := func(tr *TenantTracker, v string, ok bool) {
		t.Helper()
		if gv, gok := tr.Current(); gv != v || gok != ok {
			t.Fatalf("tenant %q/%v, want %q/%v", gv, gok, v, ok)
		}
	}
	tr := NewTenantTracker("1", true)
	want(&tr, "1", true)
	tr.Apply(set("2", true), "") // SET LOCAL outside a transaction: no effect
	want(&tr, "1", true)
	tr.Apply(set("2", false), "")
	want(&tr, "2", true)
	tr.Apply(reset, "")
	want(&tr, "1", true)

	tr.Apply(tx("begin", ""), "")
	tr.Apply(set("3", false), "")
	tr.Apply(tx("savepoint", "a"), "")
	tr.Apply(set("4", true), "")
	want(&tr, "4", true)
	tr.Apply(tx("rollback_to", "a"), "")
	want(&tr, "3", true)
	tr.Apply(tx("rollback", ""), "")
	want(&tr, "1", true)

	tr.Apply(tx("begin", ""), "")
	tr.Apply(set("5", false), "")
	tr.Fail()
	tr.Apply(tx("commit", ""), "") // COMMIT of a failed transaction rolls back
	want(&tr, "1", true)

	tr.Apply(tx("begin", ""), "")
	tr.Apply(set("6", false), "")
	tr.Apply(tx("commit", ""), "")
	want(&tr, "6", true)
	tr.UndoCommit() // the server answered ROLLBACK to that COMMIT
	want(&tr, "1", true)

	snap := tr.Snapshot()
	tr.Apply(&Decision{TenantEffect: &TenantEffect{Op: EffectSet, ValueParam: 1}}, "")
	want(&tr, "", false) // a bound value the caller could not validate: unknown
	tr = snap
	want(&tr, "1", true)
	tr.Apply(&Decision{TenantEffect: &TenantEffect{Op: EffectSet, ValueParam: 1}}, "9")
	want(&tr, "9", true)
	if s := tr.Session(Session{User: "app"}); s.Tenant != "9" || !s.HasTenant || s.StartupTenant != "1" || s.User != "app" {
		t.Fatalf("session %+v", s)
	}
}
