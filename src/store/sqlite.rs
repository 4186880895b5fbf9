//! SQLite implementation of [`Store`](super::Store) — placeholder until the storage branch lands.

/// SQLite-backed store.
pub struct SqliteStore;

impl SqliteStore {
    /// Opens (creating if needed) and migrates the database.
    pub async fn connect(_url: &str) -> crate::Result<std::sync::Arc<dyn super::Store>> {
        unimplemented!()
    }
}
