//! SQLite: the embedded default. Several schedulers on one machine may share the file: WAL lets
//! readers work beside the writer, and the busy timeout makes writers queue instead of failing.

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::expand_calls;

const NOW: &str = "strftime('%Y-%m-%d %H:%M:%f', 'now')";

pub(super) async fn connect(url: &str) -> Result<SqlitePool, sqlx::Error> {
    let options = if url.starts_with("sqlite:") {
        SqliteConnectOptions::from_str(url)?
    } else {
        SqliteConnectOptions::new().filename(url)
    };
    let options = options
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true);
    pool_options(4).connect_with(options).await
}

/// Another pool of `connections` to the file `pool` uses, connecting when first used.
pub(super) fn pool_beside(pool: &SqlitePool, connections: u32) -> SqlitePool {
    let options = pool.connect_options().as_ref().clone();
    pool_options(connections).connect_lazy_with(options)
}

fn pool_options(connections: u32) -> SqlitePoolOptions {
    SqlitePoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(10))
}

/// Rewrites the PostgreSQL time functions the shared queries use, and `json_items`.
pub(super) fn dialect(query: Cow<'static, str>) -> Cow<'static, str> {
    let query = expand_calls(query, "now_plus_ms", |ms| {
        format!("strftime('%Y-%m-%d %H:%M:%f', 'now', (({ms}) / 1000.0) || ' seconds')")
    });
    let query = expand_calls(query, "json_items", |array| format!("json_each({array})"));
    if query.contains("now()") {
        Cow::Owned(query.replace("now()", NOW))
    } else {
        query
    }
}
