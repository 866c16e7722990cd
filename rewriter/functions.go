package rewriter

import (
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"
)

// deniedFunctions are builtins refused by default: they run SQL given as a
// string, reach files, large objects, other servers or other sessions, take
// locks shared by all tenants, or sleep.
var deniedFunctions = map[string]bool{
	"pg_read_file": true, "pg_read_binary_file": true, "pg_ls_dir": true, "pg_stat_file": true,
	"pg_terminate_backend": true, "pg_cancel_backend": true,
	"pg_sleep": true, "pg_sleep_for": true, "pg_sleep_until": true,
	"pg_notify": true, "ts_stat": true, "ts_rewrite": true,
	"pg_stat_get_activity": true, "pg_stat_statements": true, "pg_stat_statements_reset": true,
	"pg_reload_conf": true, "pg_rotate_logfile": true, "pg_promote": true,
	"pg_logdir_ls": true, "pg_file_write": true, "pg_file_rename": true, "pg_file_unlink": true,
	"pg_file_sync": true, "pg_switch_wal": true, "pg_create_restore_point": true,
	"pg_import_system_collations": true, "set_config": true,
}

// deniedPrefixes refuse function families by name prefix.
var deniedPrefixes = []string{
	"dblink", "lo_", "pg_ls_", "pg_advisory", "pg_try_advisory",
	"query_to_xml", "table_to_xml", "cursor_to_xml", "database_to_xml", "schema_to_xml",
	"pg_stat_get_backend", "pg_replication_", "pg_drop_replication", "pg_create_logical", "pg_create_physical",
	"pg_logical_", "pg_export_snapshot",
}

// aggregates are the builtin aggregate functions (for the bounded-result rule).
var aggregates = map[string]bool{
	"count": true, "sum": true, "avg": true, "min": true, "max": true, "array_agg": true, "string_agg": true,
	"bool_and": true, "bool_or": true, "every": true, "json_agg": true, "jsonb_agg": true, "json_object_agg": true,
	"jsonb_object_agg": true, "json_agg_strict": true, "jsonb_agg_strict": true, "json_objectagg": true,
	"json_arrayagg": true, "xmlagg": true, "bit_and": true, "bit_or": true, "bit_xor": true,
	"stddev": true, "stddev_pop": true, "stddev_samp": true, "variance": true, "var_pop": true, "var_samp": true,
	"corr": true, "covar_pop": true, "covar_samp": true, "regr_avgx": true, "regr_avgy": true, "regr_count": true,
	"regr_intercept": true, "regr_r2": true, "regr_slope": true, "regr_sxx": true, "regr_sxy": true, "regr_syy": true,
	"percentile_cont": true, "percentile_disc": true, "mode": true, "range_agg": true, "range_intersect_agg": true,
	"any_value": true,
}

// setReturning are the builtin set-returning functions: every proretset
// function of PostgreSQL 15's pg_catalog (79, read from pg_proc), and four
// that 16 and 17 add (pg_stat_get_io, pg_get_wait_events,
// pg_available_wal_summaries, pg_wal_summary_contents; not checked against
// a 16 or 17 catalog). In a target list, ORDER BY, GROUP BY or DISTINCT ON
// they multiply rows; one missing here is still cut by the row guard.
var setReturning = map[string]bool{
	"aclexplode": true, "generate_series": true, "generate_subscripts": true,
	"json_array_elements": true, "json_array_elements_text": true, "json_each": true,
	"json_each_text": true, "json_object_keys": true, "json_populate_recordset": true,
	"json_to_recordset": true, "jsonb_array_elements": true, "jsonb_array_elements_text": true,
	"jsonb_each": true, "jsonb_each_text": true, "jsonb_object_keys": true, "jsonb_path_query": true,
	"jsonb_path_query_tz": true, "jsonb_populate_recordset": true, "jsonb_to_recordset": true,
	"pg_available_extension_versions": true, "pg_available_extensions": true,
	"pg_available_wal_summaries": true, "pg_config": true, "pg_cursor": true,
	"pg_event_trigger_ddl_commands": true, "pg_event_trigger_dropped_objects": true,
	"pg_extension_update_paths": true, "pg_get_backend_memory_contexts": true,
	"pg_get_catalog_foreign_keys": true, "pg_get_keywords": true, "pg_get_multixact_members": true,
	"pg_get_publication_tables": true, "pg_get_replication_slots": true,
	"pg_get_shmem_allocations": true, "pg_get_wait_events": true,
	"pg_get_wal_resource_managers": true, "pg_hba_file_rules": true, "pg_ident_file_mappings": true,
	"pg_listening_channels": true, "pg_lock_status": true, "pg_logical_slot_get_binary_changes": true,
	"pg_logical_slot_get_changes": true, "pg_logical_slot_peek_binary_changes": true,
	"pg_logical_slot_peek_changes": true, "pg_ls_archive_statusdir": true, "pg_ls_dir": true,
	"pg_ls_logdir": true, "pg_ls_logicalmapdir": true, "pg_ls_logicalsnapdir": true,
	"pg_ls_replslotdir": true, "pg_ls_tmpdir": true, "pg_ls_waldir": true, "pg_mcv_list_items": true,
	"pg_options_to_table": true, "pg_partition_ancestors": true, "pg_partition_tree": true,
	"pg_prepared_statement": true, "pg_prepared_xact": true, "pg_show_all_file_settings": true,
	"pg_show_all_settings": true, "pg_show_replication_origin_status": true, "pg_snapshot_xip": true,
	"pg_stat_get_activity": true, "pg_stat_get_backend_idset": true, "pg_stat_get_io": true,
	"pg_stat_get_progress_info": true, "pg_stat_get_recovery_prefetch": true,
	"pg_stat_get_slru": true, "pg_stat_get_subscription": true, "pg_stat_get_wal_senders": true,
	"pg_tablespace_databases": true, "pg_timezone_abbrevs": true, "pg_timezone_names": true,
	"pg_wal_summary_contents": true, "regexp_matches": true, "regexp_split_to_table": true,
	"string_to_table": true, "ts_debug": true, "ts_parse": true, "ts_stat": true,
	"ts_token_type": true, "txid_snapshot_xip": true, "unnest": true,
}

func (c *stmtCtx) roleAllowsFunction(schema, name string) bool {
	for _, f := range c.role.Functions {
		if f == name || (schema != "" && f == schema+"."+name) {
			return true
		}
	}
	return false
}

// funcCall checks one function call anywhere in a statement.
func (c *stmtCtx) funcCall(f *pg.FuncCall) {
	schema, name := funcName(f)
	if name == "" {
		return
	}
	builtinSchema := schema == "" || schema == "pg_catalog"
	// The tenant setting changes only by statements of their own, whatever
	// the role's function list says.
	if builtinSchema && name == "set_config" && len(f.Args) > 0 {
		if k, v, _ := c.tenantValue(f.Args[0]); k != valueLiteral || strings.EqualFold(v, c.pol.Tenant.Setting) {
			c.reject(ReasonTenantTamper, c.pol.Tenant.Setting)
			return
		}
	}
	if c.roleAllowsFunction(schema, name) {
		return
	}
	// Denied names are refused in any schema: dblink and friends are
	// usually installed in public, not pg_catalog.
	if deniedBuiltin(name) {
		c.reject(ReasonDeniedFunction, name)
		return
	}
	fns := c.r.rels.functionsNamed(schema, name)
	if len(fns) == 0 {
		// Unknown to the catalog: a builtin when unqualified or in
		// pg_catalog; refused in another schema when a catalog is loaded.
		// Without a catalog (tenantguard check without --catalog) nothing
		// is known of user functions and they pass as builtins would.
		ix := c.r.rels
		switch {
		case !builtinSchema && ix.complete && !c.role.AllowDDL:
			// Not in a complete catalog: created since, perhaps.
			c.reject(ReasonUnknownFunction, "function "+schema+"."+name)
		case !builtinSchema && ix.catalogLoaded:
			c.reject(ReasonDeniedFunction, schema+"."+name)
		case schema == "" && ix.complete && !c.role.AllowDDL && ix.systemFuncs != nil && !ix.systemFuncs[name] && !ix.typeNames[name]:
			// A complete catalog knows the builtins too: an unqualified
			// name that is neither a builtin nor a type (name(x) casts)
			// may be a function created since it was loaded.
			c.reject(ReasonUnknownFunction, "function "+name)
		}
		return
	}
	rc := c.routineCheck()
	for _, fn := range fns {
		if !rc.function(fn, 0) {
			c.reject(ReasonDeniedFunction, fn.Schema+"."+fn.Name)
			return
		}
	}
}

func deniedBuiltin(name string) bool {
	if deniedFunctions[name] {
		return true
	}
	for _, p := range deniedPrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// function finds a user-defined function in the catalog. An unqualified name
// matches in any schema except pg_catalog (builtins stay builtins).
func (ix *relationIndex) function(schema, name string) *Function {
	if schema != "" {
		return ix.funcByKey[schema+"."+name]
	}
	for _, f := range ix.funcs[name] {
		if f.Schema != "pg_catalog" {
			return f
		}
	}
	return nil
}

// functionReadsTenant is true when f may not run for a role that does not
// list it (nor any function it calls): see indirection.go for the rule.
func (ix *relationIndex) functionReadsTenant(f *Function) bool {
	return !newRoutineCheck(ix, nil).function(f, 0)
}

func (ix *relationIndex) isAggregate(schema, name string) bool {
	if (schema == "" || schema == "pg_catalog") && aggregates[name] {
		return true
	}
	if f := ix.function(schema, name); f != nil && f.Kind == "a" {
		return true
	}
	return false
}

func (ix *relationIndex) isSetReturning(schema, name string) bool {
	if (schema == "" || schema == "pg_catalog") && setReturning[name] {
		return true
	}
	if f := ix.function(schema, name); f != nil && f.ReturnsSet {
		return true
	}
	return false
}
