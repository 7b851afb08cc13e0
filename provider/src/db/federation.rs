//! What the federation keeps: the hosted URIs its filter is built from, and peers' filters.

use super::records::StoredPeerFilter;
use super::sql::query;
use super::{Db, StoreResult};

impl Db {
    /// Every hosted canonical URI, for building this provider's Bloom filter.
    pub async fn all_uris(&self) -> StoreResult<Vec<String>> {
        Ok(query("SELECT uri FROM user_uris")
            .fetch_all_scan(&self.pool)
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    pub async fn peer_filters(&self) -> StoreResult<Vec<StoredPeerFilter>> {
        let rows = query(
            "SELECT provider_id, generation, algorithm, bits, items, filter, fetched_at \
             FROM peer_filters",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| StoredPeerFilter {
                provider_id: r.get(0),
                generation: r.get(1),
                algorithm: r.get(2),
                bits: r.get(3),
                items: r.get(4),
                filter_base64: r.get(5),
                fetched_at: r.get(6),
            })
            .collect())
    }

    /// Saves a peer's filter in place of the one held. One statement: two pulls of the same
    /// peer saving at once (PostgreSQL runs them concurrently) must not both find no row and
    /// both insert; the later save wins, as the later pull is the newer.
    pub async fn save_peer_filter(&self, filter: &StoredPeerFilter) -> StoreResult<()> {
        self.write_one(
            query(
                "INSERT INTO peer_filters (provider_id, generation, algorithm, bits, items, filter, \
                 fetched_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (provider_id) DO UPDATE SET generation = excluded.generation, \
                 algorithm = excluded.algorithm, bits = excluded.bits, items = excluded.items, \
                 filter = excluded.filter, fetched_at = excluded.fetched_at",
            )
            .bind(&filter.provider_id)
            .bind(filter.generation)
            .bind(&filter.algorithm)
            .bind(filter.bits)
            .bind(filter.items)
            .bind(&filter.filter_base64)
            .bind(filter.fetched_at),
        )
        .await?;
        Ok(())
    }

    pub async fn delete_peer_filter(&self, provider_id: &str) -> StoreResult<()> {
        self.write_one(query("DELETE FROM peer_filters WHERE provider_id = $1").bind(provider_id))
            .await?;
        Ok(())
    }
}
