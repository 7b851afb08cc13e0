-- SIP accounts: an address of record (sip:user@domain) with digest credentials, acting for a
-- user and so for the user's tel:/mailto: URIs. HA1 = H(username:realm:password) is kept for
-- both digest algorithms; the password itself is never stored.
CREATE TABLE sip_accounts (
    aor TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    username TEXT NOT NULL,
    realm TEXT NOT NULL,
    ha1_md5 TEXT NOT NULL,
    ha1_sha256 TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX sip_accounts_by_credential ON sip_accounts (realm, username);
CREATE INDEX sip_accounts_by_user ON sip_accounts (user_id);

-- Registered contacts (RFC 3261 §10.3), several per AoR; expired rows are ignored and purged.
CREATE TABLE sip_contacts (
    aor TEXT NOT NULL REFERENCES sip_accounts(aor) ON DELETE CASCADE,
    contact TEXT NOT NULL,
    q TEXT,
    call_id TEXT NOT NULL,
    cseq BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    transport TEXT NOT NULL,
    source TEXT NOT NULL,
    user_agent TEXT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (aor, contact)
);
CREATE INDEX sip_contacts_by_expiry ON sip_contacts (expires_at);
