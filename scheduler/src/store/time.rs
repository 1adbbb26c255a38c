//! Binding timestamps the same way on both backends.
//!
//! PostgreSQL stores `timestamptz`. SQLite has no time type; ferry's SQLite schema stores UTC
//! text `YYYY-MM-DD HH:MM:SS.SSS`, the format SQLite's own `strftime` writes, so values written
//! by ferry, by SQL defaults and by users' `datetime('now')` all sort and compare correctly.

use chrono::{DateTime, Utc};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo};
use sqlx::sqlite::{SqliteArgumentsBuffer, SqliteTypeInfo};
use sqlx::{Encode, Postgres, Sqlite, Type};

/// A timestamp parameter. (Reading needs no wrapper: sqlx decodes both forms.)
#[derive(Debug, Clone, Copy)]
pub struct DbTime(pub DateTime<Utc>);

/// The text form of a timestamp in ferry's SQLite schema.
pub fn sqlite_text(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
}

impl Type<Postgres> for DbTime {
    fn type_info() -> PgTypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }
}

impl Encode<'_, Postgres> for DbTime {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        Encode::<Postgres>::encode_by_ref(&self.0, buf)
    }
}

impl Type<Sqlite> for DbTime {
    fn type_info() -> SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
}

impl Encode<'_, Sqlite> for DbTime {
    fn encode_by_ref(&self, buf: &mut SqliteArgumentsBuffer) -> Result<IsNull, BoxDynError> {
        Encode::<Sqlite>::encode(sqlite_text(self.0), buf)
    }
}
