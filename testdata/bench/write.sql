-- Write by primary key, unscoped (tenantguard runs). Same rows as write_scoped.sql.
\set n random(0, :maxn)
\set id 6 + 200 * :n
\set d random(0, 24999)
UPDATE patients SET birth_date = date '1940-01-01' + CAST(:d AS integer) WHERE id = :id;
