//! Which schema a database is at, and whether this binary may use it.
//!
//! Only `ferry db migrate` and `ferry scheduler run --migrate` change a schema, so that running a
//! newer `ferry status` against production, or upgrading the standby scheduler first, never
//! locks the older binaries out. A binary uses a database whose schema is newer than its own
//! while the `schema_compat` row says it is compatible (new tables and columns with defaults
//! are), and refuses one that is older, or too new, with the command or release that fixes it.

use serde::Serialize;
use sqlx::migrate::Migrator;

use super::{Backend, Result, Store, StoreError};

/// What a command is about to do with the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Only read: a missing or older schema is an error, and nothing is ever written.
    Read,
    /// Read and write rows; an empty database gets the schema (nothing there to lock out).
    Write,
    /// Bring the schema up to this binary's migrations (`ferry db migrate`).
    Migrate,
    /// Look at the schema whatever its version (`ferry db status`); write nothing.
    Inspect,
}

/// The schema a database is at, beside the one this binary was built with.
#[derive(Debug, Clone, Serialize)]
pub struct SchemaState {
    /// The newest migration applied to the database (0: no ferry schema).
    pub database: i64,
    /// The newest migration this binary knows.
    pub binary: i64,
    /// The oldest binary schema the database still serves (`schema_compat`).
    pub oldest_compatible: i64,
    /// The first ferry release with that schema, for the message that asks for it.
    pub requires_ferry: String,
    /// Migrations this binary would apply, as `version description`.
    pub pending: Vec<String>,
}

/// Why a binary refuses a database.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("the database has no ferry schema: `ferry db migrate` creates it")]
    Empty,
    #[error(
        "the database's schema is version {database}, and this ferry ({ferry}) needs version \
         {binary}: run `ferry db migrate` with this ferry first (schedulers of the older version \
         keep working with the new schema)"
    )]
    Behind {
        database: i64,
        binary: i64,
        ferry: &'static str,
    },
    #[error(
        "the database's schema (version {database}) needs ferry {requires} or newer, and this is \
         ferry {ferry} (schema {binary}): upgrade this machine's ferry"
    )]
    TooOld {
        database: i64,
        binary: i64,
        requires: String,
        ferry: &'static str,
    },
}

const FERRY_VERSION: &str = env!("CARGO_PKG_VERSION");

impl Store {
    /// Makes sure this binary may use the database for `access`, migrating only when asked to
    /// (or when the database is empty and about to be written).
    pub async fn prepare(&self, access: Access) -> Result<SchemaState> {
        let state = self.schema_state().await?;
        let initialize = state.database == 0 && access == Access::Write;
        if access == Access::Migrate || initialize {
            self.migrate().await?;
            return self.schema_state().await;
        }
        if access != Access::Inspect {
            state.check()?;
        }
        Ok(state)
    }

    async fn migrate(&self) -> Result<()> {
        let mut migrator = self.migrator();
        // A newer ferry may have migrated past us: its migrations are not ours to know.
        migrator.set_ignore_missing(true);
        match &self.backend {
            Backend::Postgres(pool, _) => migrator.run(pool).await?,
            Backend::Sqlite(pool) => migrator.run(pool).await?,
        }
        self.schema_state().await?.check()?;
        Ok(())
    }

    fn migrator(&self) -> Migrator {
        match self.backend {
            Backend::Postgres(..) => sqlx::migrate!("../migrations/postgres"),
            Backend::Sqlite(_) => sqlx::migrate!("../migrations/sqlite"),
        }
    }

    /// Reads the schema's state without writing anything.
    pub async fn schema_state(&self) -> Result<SchemaState> {
        let migrator = self.migrator();
        let binary = migrator.iter().map(|m| m.version).max().unwrap_or(0);
        let database = self.applied_migration().await?;
        let pending = migrator
            .iter()
            .filter(|m| m.version > database)
            .map(|m| format!("{} {}", m.version, m.description))
            .collect();
        let (oldest_compatible, requires_ferry) = if self.has_table("schema_compat").await? {
            let sql = self.sql("SELECT oldest_compatible, requires_ferry FROM schema_compat");
            on_pool!(self, pool => sqlx::query_as(sql).fetch_one(pool).await)?
        } else {
            (1, "0.1.0".to_owned())
        };
        Ok(SchemaState {
            database,
            binary,
            oldest_compatible,
            requires_ferry,
            pending,
        })
    }

    async fn applied_migration(&self) -> Result<i64> {
        if !self.has_table("_sqlx_migrations").await? {
            return Ok(0);
        }
        let sql = self.sql("SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations WHERE success");
        let (version,): (i64,) = on_pool!(self, pool => sqlx::query_as(sql).fetch_one(pool).await)?;
        Ok(version)
    }

    async fn has_table(&self, name: &str) -> Result<bool> {
        let sql = match self.backend {
            Backend::Postgres(..) => "SELECT to_regclass($1) IS NOT NULL",
            Backend::Sqlite(_) => {
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = $1)"
            }
        };
        let (exists,): (bool,) =
            on_pool!(self, pool => sqlx::query_as(self.sql(sql)).bind(name).fetch_one(pool).await)?;
        Ok(exists)
    }
}

impl SchemaState {
    /// Whether this binary may use the database as it is.
    pub fn check(&self) -> Result<(), SchemaError> {
        if self.database == 0 {
            Err(SchemaError::Empty)
        } else if self.database < self.binary {
            Err(SchemaError::Behind {
                database: self.database,
                binary: self.binary,
                ferry: FERRY_VERSION,
            })
        } else if self.binary < self.oldest_compatible {
            Err(SchemaError::TooOld {
                database: self.database,
                binary: self.binary,
                requires: self.requires_ferry.clone(),
                ferry: FERRY_VERSION,
            })
        } else {
            Ok(())
        }
    }
}

impl From<SchemaError> for StoreError {
    fn from(e: SchemaError) -> Self {
        StoreError::Schema(e)
    }
}
