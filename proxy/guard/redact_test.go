package guard

import "testing"

func TestRedactQuoted(t *testing.T) {
	const sql = "SELECT full_name FROM patients p WHERE p.nme = 'Ann' LIMIT 5"
	for in, want := range map[string]string{
		`invalid input syntax for type integer: "Ann TENANT2"`:         `invalid input syntax for type integer: <redacted>`,
		`syntax error in tsquery: "patient 1 TENANT2"`:                 `syntax error in tsquery: <redacted>`,
		`unrecognized configuration parameter "patient_1_TENANT2"`:     `unrecognized configuration parameter <redacted>`,
		`column p.nme does not exist`:                                  `column p.nme does not exist`,
		`relation "patients" does not exist`:                           `relation "patients" does not exist`,
		`column "nme" does not exist`:                                  `column "nme" does not exist`,
		`duplicate key value violates unique constraint "p_email_key"`: `duplicate key value violates unique constraint <redacted>`,
		`invalid input value for enum mood: 'x'`:                       `invalid input value for enum mood: <redacted>`,
		`value "1" is out of range`:                                    `value <redacted> is out of range`,
		`"Ann" is the client's own literal`:                            `"Ann" is the client's own literal`,
	} {
		if got := redactQuoted(in, sql); got != want {
			t.Errorf("redactQuoted(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRedactDetail(t *testing.T) {
	for in, want := range map[string]string{
		`Key (email)=(a@TENANT2.org) already exists.`:      `Key (email)=(<redacted>) already exists.`,
		`Key (a, b)=(1, (x)) is not present in table "t".`: `Key (a, b)=(<redacted>) is not present in table "t".`,
		`Failing row contains (1, 2, Ann TENANT2).`:        `Failing row contains (<redacted>).`,
		`line 1: patient 1 TENANT2`:                        `<redacted>`,
		`Token ""patient 1 TENANT2" is invalid.`:           `<redacted>`,
	} {
		if got := redactDetail(in); got != want {
			t.Errorf("redactDetail(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestTagRows(t *testing.T) {
	for tag, want := range map[string]int64{
		"SELECT 5": 5, "INSERT 0 12": 12, "UPDATE 3": 3, "COPY 1000000": 1000000,
		"BEGIN": -1, "SET": -1, "SELECT ": -1, "SELECT x1": -1, "": -1,
	} {
		if got := tagRows([]byte(tag)); got != want {
			t.Errorf("tagRows(%q) = %d, want %d", tag, got, want)
		}
	}
}
