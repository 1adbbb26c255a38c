//! Test support shared by ferry's crates: a private PostgreSQL server ([`pg`]) and harnesses
//! that run the real `ferry` binaries as processes ([`harness`]).

pub mod harness;
pub mod pg;
