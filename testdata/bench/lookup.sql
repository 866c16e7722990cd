-- Lookup by primary key, unscoped (tenantguard runs; the tenant comes from
-- PGOPTIONS='-c app.clinic_id=7'). Same ids as lookup_scoped.sql.
\set n random(0, :maxn)
\set id 6 + 200 * :n
SELECT id, full_name, email, birth_date, status FROM patients WHERE id = :id;
