-- The members whose answer to a forwarded Initiate said they rang, comma-separated (the
-- originator's record): only their Accept and Cancel Forwards count. Appended by one UPDATE per
-- answer, so concurrent answers on PostgreSQL never lose each other.
ALTER TABLE calls ADD COLUMN ringing_providers TEXT NOT NULL DEFAULT '';

-- The maximum-call-duration sweep reads answered calls by answer time.
CREATE INDEX calls_by_state_answered ON calls (state, answered_at);
