//! Several PostgreSQL servers in one URL, in libpq's form:
//! `postgres://ferry@db1:5432,db2:5432/ferry?target_session_attrs=read-write`. sqlx connects to
//! one host, so this finds the one to use (the first, in the URL's order, that answers and is
//! what `target_session_attrs` asks for) and finds it again after a failover. The pool checks
//! every connection it opens, so a server that was demoted to a standby is never written to.

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection, PgPool};
use tokio::time::Instant;

/// How long one server may take to answer the probe before the next is tried.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What kind of server ferry may use, from `target_session_attrs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wanted {
    /// Whichever answers first (libpq's default for one host).
    Any,
    /// One that accepts writes (`transaction_read_only` is off).
    ReadWrite,
    /// One that is not in recovery.
    Primary,
}

impl Wanted {
    fn parse(value: &str) -> Result<Self, String> {
        match value {
            "any" => Ok(Wanted::Any),
            "read-write" => Ok(Wanted::ReadWrite),
            "primary" => Ok(Wanted::Primary),
            other => Err(format!(
                "target_session_attrs={other} is not one ferry can use: it writes, so give \
                 read-write or primary (or any)"
            )),
        }
    }

    /// Whether the server behind `conn` is one this asks for; `Err` says why not.
    pub(super) async fn check(self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        let unwanted = match self {
            Wanted::Any => return Ok(()),
            Wanted::ReadWrite => {
                let (read_only,): (String,) = sqlx::query_as("SHOW transaction_read_only")
                    .fetch_one(&mut *conn)
                    .await?;
                (read_only == "on").then_some("read-only (a standby, or a demoted primary)")
            }
            Wanted::Primary => {
                let (recovering,): (bool,) = sqlx::query_as("SELECT pg_is_in_recovery()")
                    .fetch_one(&mut *conn)
                    .await?;
                recovering.then_some("a standby (in recovery)")
            }
        };
        match unwanted {
            // An I/O error, so the caller takes it as the database being away, never as a
            // refused write.
            Some(why) => Err(sqlx::Error::Io(std::io::Error::other(format!(
                "the server is {why}"
            )))),
            None => Ok(()),
        }
    }
}

/// The servers a URL names, each as the options of a one-host URL, and what kind is wanted.
pub(super) struct Servers {
    candidates: Vec<(String, PgConnectOptions)>,
    pub(super) wanted: Wanted,
    /// When the pool last moved to another server: connections older than this are dropped
    /// rather than reused (they may be to the old primary, alive and demoted).
    switched_at: Arc<Mutex<Instant>>,
}

impl Servers {
    /// The servers `url` names, each with its options passed through `tune`.
    pub(super) fn parse(
        url: &str,
        tune: impl Fn(PgConnectOptions) -> PgConnectOptions,
    ) -> Result<Self, sqlx::Error> {
        let (urls, wanted) = split_hosts(url).map_err(|e| sqlx::Error::Configuration(e.into()))?;
        let candidates = urls
            .into_iter()
            .map(|(host, url)| Ok((host, tune(PgConnectOptions::from_str(&url)?))))
            .collect::<Result<_, sqlx::Error>>()?;
        Ok(Self {
            candidates,
            wanted,
            switched_at: Arc::new(Mutex::new(Instant::now())),
        })
    }

    /// Whether there is more than one server to choose from.
    pub(super) fn several(&self) -> bool {
        self.candidates.len() > 1
    }

    /// Whether a pooled connection opened at `age` ago may still be used.
    pub(super) fn reusable(&self) -> impl Fn(Duration) -> bool + Send + Sync + 'static {
        let switched_at = self.switched_at.clone();
        move |age| age < switched_at.lock().expect("never poisoned").elapsed()
    }

    /// The first server, in the URL's order, that answers and is of the wanted kind. The
    /// error names every server and why it was passed over.
    pub(super) async fn find(&self) -> Result<(&str, &PgConnectOptions), sqlx::Error> {
        if !self.several() {
            let (host, options) = &self.candidates[0];
            return Ok((host, options));
        }
        let mut passed_over = Vec::new();
        for (host, options) in &self.candidates {
            match tokio::time::timeout(PROBE_TIMEOUT, self.probe(options)).await {
                Ok(Ok(())) => return Ok((host, options)),
                Ok(Err(e)) => passed_over.push(format!("{host}: {e}")),
                Err(_) => passed_over.push(format!("{host}: no answer in {PROBE_TIMEOUT:?}")),
            }
        }
        Err(sqlx::Error::Io(std::io::Error::other(format!(
            "no server in the URL can be used now ({})",
            passed_over.join("; ")
        ))))
    }

    async fn probe(&self, options: &PgConnectOptions) -> Result<(), sqlx::Error> {
        let mut conn = PgConnection::connect_with(options).await?;
        let checked = self.wanted.check(&mut conn).await;
        let _ = conn.close().await;
        checked
    }

    /// After a connection error: points `pool` at the server to use now; whether it moved.
    pub(super) async fn follow(&self, pool: &PgPool) -> Result<bool, sqlx::Error> {
        if !self.several() {
            return Ok(false);
        }
        let (host, options) = self.find().await?;
        let current = pool.connect_options();
        if current.get_host() != options.get_host() || current.get_port() != options.get_port() {
            tracing::warn!(server = host, "the database moved; using this server now");
            pool.set_connect_options(options.clone());
            *self.switched_at.lock().expect("never poisoned") = Instant::now();
            return Ok(true);
        }
        Ok(false)
    }
}

/// Splits a libpq URL with several hosts into one URL per host (keeping the user, database and
/// parameters), and takes out `target_session_attrs`. Several hosts want a writable server
/// unless the URL says otherwise: ferry writes, and a standby would only refuse it.
fn split_hosts(url: &str) -> Result<(Vec<(String, String)>, Wanted), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| "a PostgreSQL URL starts with postgres://".to_owned())?;
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (format!("{userinfo}@"), hosts),
        None => (String::new(), authority),
    };
    let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
    let mut wanted = None;
    let mut kept = Vec::new();
    for param in query.split('&').filter(|p| !p.is_empty()) {
        match param.split_once('=') {
            Some(("target_session_attrs", value)) => wanted = Some(Wanted::parse(value)?),
            _ => kept.push(param),
        }
    }
    let query = match kept.is_empty() {
        true => String::new(),
        false => format!("?{}", kept.join("&")),
    };
    let hosts: Vec<&str> = hosts.split(',').collect();
    if hosts.iter().any(|h| h.is_empty()) && hosts.len() > 1 {
        return Err(format!(
            "an empty host in {hosts:?}: separate hosts with one comma"
        ));
    }
    let wanted = wanted.unwrap_or(if hosts.len() > 1 {
        Wanted::ReadWrite
    } else {
        Wanted::Any
    });
    let urls = hosts
        .into_iter()
        .map(|host| {
            (
                host.to_owned(),
                format!("{scheme}://{userinfo}{host}{path}{query}"),
            )
        })
        .collect();
    Ok((urls, wanted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(url: &str) -> (Vec<String>, Wanted) {
        let (urls, wanted) = split_hosts(url).unwrap();
        (urls.into_iter().map(|(_, u)| u).collect(), wanted)
    }

    #[test]
    fn several_hosts_become_one_url_each_in_order() {
        let (urls, wanted) = urls(
            "postgres://ferry:pw@db1:5432,db2:5433/ferry?sslmode=require&target_session_attrs=primary",
        );
        assert_eq!(
            urls,
            [
                "postgres://ferry:pw@db1:5432/ferry?sslmode=require",
                "postgres://ferry:pw@db2:5433/ferry?sslmode=require"
            ]
        );
        assert_eq!(wanted, Wanted::Primary);
        for url in &urls {
            let options = PgConnectOptions::from_str(url).unwrap();
            assert_eq!(options.get_database(), Some("ferry"));
        }
    }

    #[test]
    fn several_hosts_want_a_writable_server_unless_told() {
        assert_eq!(urls("postgres://u@a,b/db").1, Wanted::ReadWrite);
        assert_eq!(
            urls("postgres://u@a,b/db?target_session_attrs=any").1,
            Wanted::Any
        );
        assert_eq!(urls("postgres://u@a/db").1, Wanted::Any);
        let (one, _) = urls("postgresql://u@[::1]:5432/db?target_session_attrs=read-write");
        assert_eq!(one, ["postgresql://u@[::1]:5432/db"]);
    }

    #[test]
    fn what_ferry_cannot_use_is_refused_by_name() {
        let e = split_hosts("postgres://u@a,b/db?target_session_attrs=standby").unwrap_err();
        assert!(e.contains("target_session_attrs=standby"), "{e}");
        let e = split_hosts("postgres://u@a,,b/db").unwrap_err();
        assert!(e.contains("empty host"), "{e}");
    }
}
