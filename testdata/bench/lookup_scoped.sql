-- Lookup by primary key, hand-scoped (direct and PgBouncer runs).
-- Patients of clinic 7 have id = 6 + 200 * n (schema.sql: clinic_id = 1 + (p % 200));
-- run.sh passes -D maxn=<largest n for the loaded patient count>.
\set n random(0, :maxn)
\set id 6 + 200 * :n
SELECT id, full_name, email, birth_date, status FROM patients WHERE id = :id AND clinic_id = 7;
