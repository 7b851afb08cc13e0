-- Federation state. Portable across SQLite and PostgreSQL: TEXT and BIGINT only.

-- The last filter received from each member provider, so dispatch works right after a restart.
CREATE TABLE peer_filters (
    provider_id TEXT PRIMARY KEY,
    generation BIGINT NOT NULL,
    bits BIGINT NOT NULL,
    hashes BIGINT NOT NULL,
    filter_key TEXT NOT NULL,
    items BIGINT NOT NULL,
    filter TEXT NOT NULL,
    fetched_at BIGINT NOT NULL
);

-- Forward ids seen within the timestamp window: a Forward whose id was seen is a replay.
CREATE TABLE forward_nonces (
    provider_id TEXT NOT NULL,
    nonce TEXT NOT NULL,
    seen_at BIGINT NOT NULL,
    PRIMARY KEY (provider_id, nonce)
);
CREATE INDEX forward_nonces_by_time ON forward_nonces (seen_at);

-- The answer given to each Forward, so a retried Forward (same session, same action, same
-- sender) gets the same answer without acting twice.
CREATE TABLE forward_results (
    provider_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    action TEXT NOT NULL,
    status BIGINT NOT NULL,
    response TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (provider_id, session_id, action)
);
CREATE INDEX forward_results_by_time ON forward_results (created_at);

