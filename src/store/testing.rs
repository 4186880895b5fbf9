//! Helpers for tests that need a real database, here and in integration tests.
//!
//! PostgreSQL tests run when `KEYBOUND_TEST_POSTGRES_URL` names a server (for example
//! `postgres://postgres@127.0.0.1:5432/test`); each test gets a database of its own on it.

use sqlx::migrate::MigrateDatabase;

/// The environment variable naming the Redis server for tests.
pub const REDIS_URL_ENV: &str = "KEYBOUND_TEST_REDIS_URL";

/// The Redis server for tests, from `KEYBOUND_TEST_REDIS_URL`; `None` (with a note) when unset.
///
/// # Panics
///
/// When the variable is unset and `CI=true`, like [`postgres_test_url`].
pub fn redis_test_url() -> Option<String> {
    match std::env::var(REDIS_URL_ENV) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{REDIS_URL_ENV} is not set, but CI=true: the Redis tests must run in CI")
        }
        _ => {
            eprintln!("skipped: set {REDIS_URL_ENV} to run the Redis tests");
            None
        }
    }
}

/// The environment variable naming the PostgreSQL server for tests.
pub const POSTGRES_URL_ENV: &str = "KEYBOUND_TEST_POSTGRES_URL";

/// The PostgreSQL server for tests, from `KEYBOUND_TEST_POSTGRES_URL`; `None` when unset, so a
/// developer without PostgreSQL can skip those tests.
///
/// # Panics
///
/// When the variable is unset and `CI=true`: a missing service under CI is a failure, not a
/// skip, or a broken CI configuration would silently test nothing.
pub fn postgres_test_url() -> Option<String> {
    match std::env::var(POSTGRES_URL_ENV) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").as_deref() == Ok("true") => panic!(
            "{POSTGRES_URL_ENV} is not set, but CI=true: the PostgreSQL tests must run in CI. \
             Start a PostgreSQL service and set {POSTGRES_URL_ENV}=postgres://user@host:port/db"
        ),
        _ => None,
    }
}

/// Creates a database named `kb_<random>` on the server of `base_url` and returns its URL
/// (`base_url` with the database name replaced, query parameters kept).
///
/// # Panics
///
/// When the database cannot be created: this is for tests.
pub async fn fresh_postgres_url(base_url: &str) -> String {
    let name = format!("kb_{}", uuid::Uuid::new_v4().simple());
    let url = with_database(base_url, &name);
    sqlx::Postgres::create_database(&url)
        .await
        .unwrap_or_else(|e| panic!("creating test database {name}: {e}"));
    url
}

/// Drops a database made by [`fresh_postgres_url`], closing its remaining connections.
///
/// # Panics
///
/// When the database cannot be dropped: this is for tests.
pub async fn drop_postgres_database(url: &str) {
    // `DROP DATABASE … WITH (FORCE)` terminates the connections it finds, then waits 5 s for
    // them to go; a server still running in the test (its pool reconnecting, its background
    // tasks) can open a new one meanwhile, and the drop fails with object_in_use (55006).
    // Trying again is enough: the race is narrow.
    for attempt in 1.. {
        match sqlx::Postgres::force_drop_database(url).await {
            Ok(()) => return,
            Err(e)
                if attempt < 3
                    && e.as_database_error()
                        .and_then(|d| d.code())
                        .is_some_and(|c| c == "55006") => {}
            Err(e) => panic!("dropping test database: {e}"),
        }
    }
}

/// `url` with its database (the path) replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let server = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{server}/{database}?{query}"),
        None => format!("{server}/{database}"),
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_name_is_replaced_and_the_rest_kept() {
        let cases = [
            ("postgres://u@h:5432/test", "postgres://u@h:5432/kb_x"),
            ("postgres://u@h:5432", "postgres://u@h:5432/kb_x"),
            ("postgres://u@h/", "postgres://u@h/kb_x"),
            (
                "postgres://u:p@h/test?sslmode=disable",
                "postgres://u:p@h/kb_x?sslmode=disable",
            ),
        ];
        for (base, want) in cases {
            assert_eq!(with_database(base, "kb_x"), want, "base {base}");
        }
    }
}
