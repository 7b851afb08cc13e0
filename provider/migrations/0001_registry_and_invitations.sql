-- Portable across SQLite and PostgreSQL: TEXT and BIGINT only, times in Unix milliseconds.

CREATE TABLE users (
    id TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Canonical URIs; a URI belongs to one user, and a user's URIs reach all of the user's endpoints.
CREATE TABLE user_uris (
    uri TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL
);
CREATE INDEX user_uris_by_user ON user_uris (user_id);

CREATE TABLE provisioning_codes (
    code_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX provisioning_codes_by_user ON provisioning_codes (user_id);

CREATE TABLE endpoints (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    push_token TEXT NOT NULL UNIQUE,
    capabilities TEXT NOT NULL,
    cert_pem TEXT NOT NULL,
    cert_fingerprint TEXT NOT NULL UNIQUE,
    cert_not_after BIGINT NOT NULL,
    push_seq BIGINT NOT NULL DEFAULT 0,
    push_acked BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX endpoints_by_user ON endpoints (user_id);

-- The push queue: per endpoint, in sequence order, until acknowledged or expired.
CREATE TABLE pushes (
    endpoint_id TEXT NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    body TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (endpoint_id, seq)
);
CREATE INDEX pushes_by_expiry ON pushes (expires_at);

-- Call detail records. The row also arbitrates races between replicas (first Accept wins,
-- all-rejected, ring timeout); routing itself travels sealed in the messages.
CREATE TABLE calls (
    session_id TEXT PRIMARY KEY,
    caller_uri TEXT NOT NULL,
    callee_uri TEXT NOT NULL,
    caller_endpoint TEXT NOT NULL,
    rung_endpoints TEXT NOT NULL,
    rung_count BIGINT NOT NULL,
    rejections BIGINT NOT NULL DEFAULT 0,
    media TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    answered_by TEXT,
    providers TEXT NOT NULL,
    initiated_at BIGINT NOT NULL,
    ring_deadline BIGINT NOT NULL,
    answered_at BIGINT,
    ended_at BIGINT
);
CREATE INDEX calls_by_state_deadline ON calls (state, ring_deadline);
CREATE INDEX calls_by_initiated ON calls (initiated_at);

CREATE TABLE call_rejections (
    session_id TEXT NOT NULL REFERENCES calls(session_id) ON DELETE CASCADE,
    endpoint_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    rejected_at BIGINT NOT NULL,
    PRIMARY KEY (session_id, endpoint_id)
);

-- Keys that seal session state; the newest seals, every key still here opens.
CREATE TABLE seal_keys (
    id TEXT PRIMARY KEY,
    secret TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
