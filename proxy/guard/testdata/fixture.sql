-- Guard end-to-end fixture: three tenants and rows without a tenant. Every
-- text value carries its tenant's marker (TENANT1, TENANT2, TENANT3,
-- NOTENANT) so that a test can scan everything a client received for a
-- foreign marker.
CREATE TABLE clinics (id integer PRIMARY KEY, name text NOT NULL);
INSERT INTO clinics VALUES (1, 'clinic one'), (2, 'clinic two'), (3, 'clinic three');

CREATE TABLE patients (
    id        integer PRIMARY KEY,
    clinic_id integer,
    full_name text NOT NULL,
    email     text UNIQUE,
    status    text NOT NULL DEFAULT 'active'
);
CREATE INDEX patients_clinic ON patients (clinic_id, id);
INSERT INTO patients (id, clinic_id, full_name, email)
SELECT i, t, 'patient ' || i || ' TENANT' || t, 'p' || i || '.TENANT' || t || '@example.org'
FROM generate_series(1, 30) AS i, LATERAL (SELECT 1 + i % 3 AS t) x;
INSERT INTO patients (id, clinic_id, full_name, email) VALUES
  (100, NULL, 'orphan NOTENANT', 'orphan.NOTENANT@example.org');

CREATE TABLE invoices (
    id         integer PRIMARY KEY,
    clinic_id  integer,
    patient_id integer REFERENCES patients(id),
    memo       text
);
INSERT INTO invoices SELECT id, clinic_id, id, 'invoice ' || id || ' TENANT' || clinic_id FROM patients WHERE clinic_id IS NOT NULL;
INSERT INTO invoices VALUES (100, NULL, 100, 'invoice NOTENANT');

CREATE TABLE soap_notes (
    id         integer PRIMARY KEY,
    clinic_id  integer,
    patient_id integer,
    note       text
);
INSERT INTO soap_notes SELECT id, clinic_id, id, 'note TENANT' || clinic_id FROM patients WHERE clinic_id IS NOT NULL;

GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO app_user;
