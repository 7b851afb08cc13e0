-- Peer filters are switchyard-bloom-v2 now (split blocks, XXH64, no key). A saved v1 filter
-- cannot be read as v2, so the saved ones are dropped: each member's filter is pulled again at
-- start. The algorithm's name is kept with each filter, so that a later change is seen the same
-- way instead of being misread.
DROP TABLE peer_filters;
CREATE TABLE peer_filters (
    provider_id TEXT PRIMARY KEY,
    generation BIGINT NOT NULL,
    algorithm TEXT NOT NULL,
    bits BIGINT NOT NULL,
    items BIGINT NOT NULL,
    filter TEXT NOT NULL,
    fetched_at BIGINT NOT NULL
);
