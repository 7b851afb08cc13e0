-- Each SIP account reaches the invitation protocol through a gateway endpoint of its user: the
-- edge acts as that endpoint (its pushes become SIP requests to the account's contacts). Accounts
-- made before this column existed get their endpoint when the edge starts.
ALTER TABLE sip_accounts ADD COLUMN endpoint_id TEXT;
