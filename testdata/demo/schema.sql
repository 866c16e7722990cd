-- Clinic-shaped sample schema for `make demo` and `make bench`.
-- psql -v patients=50000 -f schema.sql   (200 clinics; patients spread evenly)
\set ON_ERROR_STOP on
\if :{?patients}
\else
  \set patients 50000
\endif

CREATE TABLE clinics (
    id         integer PRIMARY KEY,
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE patients (
    id         bigserial PRIMARY KEY,
    clinic_id  integer NOT NULL REFERENCES clinics(id),
    full_name  text NOT NULL,
    email      text,
    birth_date date,
    status     text NOT NULL DEFAULT 'active',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX patients_clinic_created ON patients (clinic_id, created_at DESC);
CREATE INDEX patients_clinic_status ON patients (clinic_id, status, created_at DESC);

CREATE TABLE appointments (
    id          bigserial PRIMARY KEY,
    clinic_id   integer NOT NULL REFERENCES clinics(id),
    patient_id  bigint NOT NULL REFERENCES patients(id),
    starts_at   timestamptz NOT NULL,
    status      text NOT NULL DEFAULT 'booked'
);
CREATE INDEX appointments_clinic_starts ON appointments (clinic_id, starts_at);

CREATE TABLE invoices (
    id          bigserial PRIMARY KEY,
    clinic_id   integer NOT NULL REFERENCES clinics(id),
    patient_id  bigint NOT NULL REFERENCES patients(id),
    amount      numeric(10,2) NOT NULL,
    status      text NOT NULL DEFAULT 'open',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX invoices_clinic_patient ON invoices (clinic_id, patient_id);

CREATE TABLE orders (
    id          bigserial PRIMARY KEY,
    clinic_id   integer NOT NULL REFERENCES clinics(id),
    patient_id  bigint NOT NULL REFERENCES patients(id),
    item        text NOT NULL,
    quantity    integer NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_clinic_patient ON orders (clinic_id, patient_id);

CREATE TABLE soap_notes (
    id          bigserial PRIMARY KEY,
    clinic_id   integer NOT NULL REFERENCES clinics(id),
    patient_id  bigint NOT NULL REFERENCES patients(id),
    subjective  text,
    objective   text,
    assessment  text,
    plan        text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX soap_notes_clinic_patient ON soap_notes (clinic_id, patient_id);

INSERT INTO clinics (id, name)
SELECT c, 'Clinic ' || c FROM generate_series(1, 200) AS c;

INSERT INTO patients (clinic_id, full_name, email, birth_date, status, created_at)
SELECT 1 + (p % 200),
       'Patient ' || p,
       'patient' || p || '@example.org',
       date '1940-01-01' + (p % 25000),
       CASE WHEN p % 10 = 0 THEN 'inactive' ELSE 'active' END,
       now() - (p % 1000) * interval '1 hour'
FROM generate_series(1, :patients) AS p;

INSERT INTO appointments (clinic_id, patient_id, starts_at)
SELECT clinic_id, id, now() + (id % 500) * interval '1 hour' FROM patients WHERE id % 2 = 0;

INSERT INTO invoices (clinic_id, patient_id, amount, status)
SELECT clinic_id, id, (id % 900) + 10.50, CASE WHEN id % 3 = 0 THEN 'paid' ELSE 'open' END
FROM patients WHERE id % 2 = 1;

INSERT INTO orders (clinic_id, patient_id, item)
SELECT clinic_id, id, 'item-' || (id % 50) FROM patients WHERE id % 5 = 0;

INSERT INTO soap_notes (clinic_id, patient_id, subjective, assessment)
SELECT clinic_id, id, 'reports mild symptoms', 'stable' FROM patients WHERE id % 4 = 0;

ANALYZE;
