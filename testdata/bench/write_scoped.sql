-- Write by primary key, hand-scoped (direct and PgBouncer runs). birth_date is
-- not indexed, so the update can be HOT, as a typical form save would be.
\set n random(0, :maxn)
\set id 6 + 200 * :n
\set d random(0, 24999)
UPDATE patients SET birth_date = date '1940-01-01' + CAST(:d AS integer) WHERE id = :id AND clinic_id = 7;
