-- Page list, hand-scoped (direct and PgBouncer runs).
SELECT id, full_name, status, created_at FROM patients WHERE clinic_id = 7 AND status = 'active' ORDER BY created_at DESC LIMIT 20;
