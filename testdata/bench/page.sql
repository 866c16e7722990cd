-- Page list, unscoped (tenantguard runs). LIMIT 20 is within the policy's max_rows.
SELECT id, full_name, status, created_at FROM patients WHERE status = 'active' ORDER BY created_at DESC LIMIT 20;
