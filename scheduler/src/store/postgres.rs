//! PostgreSQL: connection pool, dialect, and LISTEN for changes made by anyone's SQL.

use std::borrow::Cow;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};

use super::expand_calls;
use super::servers::{Servers, Wanted};

/// A pool on the first server of `url` that is of the kind it asks for (see [`Servers`]).
pub(super) async fn connect(url: &str) -> Result<(PgPool, Servers), sqlx::Error> {
    // A statement that hangs (a primary that vanished without a reset) must fail fast, so a
    // scheduler notices and stops local work before its leases could be someone else's.
    let servers = Servers::parse(url, |options| {
        options.options([("statement_timeout", "5s")])
    })?;
    let options = servers.find().await?.1.clone();
    let pool = pool_options(&servers, 8).connect_with(options).await?;
    Ok((pool, servers))
}

/// Another pool of `connections` to the server `pool` uses, connecting when first used.
pub(super) fn pool_beside(pool: &PgPool, servers: &Servers, connections: u32) -> PgPool {
    let options = pool.connect_options().as_ref().clone();
    pool_options(servers, connections).connect_lazy_with(options)
}

/// Every new connection checked to be of the kind `servers` wants; with several servers, the
/// connections opened before the pool moved to another dropped.
fn pool_options(servers: &Servers, connections: u32) -> PgPoolOptions {
    let mut pool = PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(2));
    let wanted = servers.wanted;
    if wanted != Wanted::Any {
        pool = pool.after_connect(move |conn, _| Box::pin(wanted.check(conn)));
    }
    if servers.several() {
        let reusable = servers.reusable();
        pool = pool.before_acquire(move |_, meta| {
            let fresh = reusable(meta.age);
            Box::pin(async move { Ok(fresh) })
        });
    }
    pool
}

/// `now_plus_ms(x)` is `now()` moved by `x` milliseconds; `json_items(x)` the rows of a JSON
/// array of texts, in a column named `value`.
pub(super) fn dialect(query: Cow<'static, str>) -> Cow<'static, str> {
    let query = expand_calls(query, "now_plus_ms", |ms| {
        format!("(now() + ({ms}) * interval '1 millisecond')")
    });
    expand_calls(query, "json_items", |array| {
        format!("json_array_elements_text(CAST({array} AS json))")
    })
}

/// What a listener wants to hear about; each is a channel the schema's triggers notify.
#[derive(Debug, Clone, Copy)]
pub enum Channel {
    /// Jobs, schedules or monitors changed (by anyone's SQL or CLI).
    Definitions,
    /// A run event was written.
    Events,
}

impl Channel {
    fn name(self) -> &'static str {
        match self {
            Channel::Definitions => "ferry_definitions",
            Channel::Events => "ferry_events",
        }
    }
}

/// A dedicated connection LISTENing to ferry's channels; reconnects by itself.
pub struct Notifications {
    listener: PgListener,
}

impl Notifications {
    pub(super) async fn listen(pool: &PgPool, channel: Channel) -> Result<Self, sqlx::Error> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(channel.name()).await?;
        Ok(Self { listener })
    }

    /// Waits for the next notification and returns its payload (on `ferry_definitions`, the
    /// table written; on `ferry_events`, the run). A lost connection is an error once; the next
    /// call reconnects.
    pub async fn recv(&mut self) -> Result<String, sqlx::Error> {
        Ok(self.listener.recv().await?.payload().to_owned())
    }
}
