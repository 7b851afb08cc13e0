-- The SIP edge reads the queued pushes of all its gateway endpoints in one query a second, by
-- the time they were queued, instead of each gateway's queue on its own.
CREATE INDEX pushes_by_creation ON pushes (created_at);
CREATE INDEX sip_accounts_by_endpoint ON sip_accounts (endpoint_id);
