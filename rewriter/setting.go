package rewriter

// WithTenantSetting makes the injected predicate read the tenant from the
// upstream's own session setting, `col = current_setting('<setting>')::<type>`,
// in both protocols, instead of a literal (simple protocol) or an appended
// parameter (extended protocol). The proxy forwards every tenant change
// upstream, so the setting is the tenant PostgreSQL itself holds, with its
// exact transaction semantics (SET LOCAL, rollback, RESET); a prepared
// statement stays right after a tenant switch with no change to Bind; and a
// tenant the proxy did not see change can only make statements fail, never
// widen them. The expression is stable, so `(clinic_id, ...)` indexes stay
// usable. Checks against the session's tenant (strategy verify, literals in
// writes) still use Session.Tenant.
func WithTenantSetting() Option {
	return func(r *Rewriter) { r.tenantSetting = true }
}
