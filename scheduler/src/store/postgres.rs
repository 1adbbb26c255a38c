//! PostgreSQL: connection pool, dialect, and LISTEN for changes made by anyone's SQL.

use std::borrow::Cow;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};

use super::expand_calls;

pub(super) async fn connect(url: &str) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
}

/// `now_plus_ms(x)` is `now()` moved by `x` milliseconds.
pub(super) fn dialect(query: Cow<'static, str>) -> Cow<'static, str> {
    expand_calls(query, "now_plus_ms", |ms| {
        format!("(now() + ({ms}) * interval '1 millisecond')")
    })
}

/// Channels the schema's triggers notify.
pub const DEFINITIONS_CHANNEL: &str = "ferry_definitions";
pub const EVENTS_CHANNEL: &str = "ferry_events";

/// A dedicated connection LISTENing to ferry's channels; reconnects by itself.
pub struct Notifications {
    listener: PgListener,
}

impl Notifications {
    pub(super) async fn listen(pool: &PgPool) -> Result<Self, sqlx::Error> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener
            .listen_all([DEFINITIONS_CHANNEL, EVENTS_CHANNEL])
            .await?;
        Ok(Self { listener })
    }

    /// Waits for the next notification and returns its channel. A lost connection is an
    /// error once; the next call reconnects.
    pub async fn recv(&mut self) -> Result<String, sqlx::Error> {
        Ok(self.listener.recv().await?.channel().to_owned())
    }
}
