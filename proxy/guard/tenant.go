package guard

// tenantValue is a tenant setting value; ok is false when unset.
type tenantValue struct {
	v  string
	ok bool
}

// current is the tenant the session's statements run under now, as
// tenantguard tracks it (rewriter.TenantTracker). The injected predicate
// reads the upstream's own setting, so a divergence can only make a
// statement fail, never widen it; the tracked value feeds the audit trail,
// tenant.required and the verify strategy.
func (c *conn) current() tenantValue {
	v, ok := c.tenant.Current()
	return tenantValue{v, ok}
}
