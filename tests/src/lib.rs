//! Test support shared by ferry's crates: a private PostgreSQL server ([`pg`]) and harnesses
//! that run the real `ferry` binaries as processes ([`harness`]), on loopback or on a slow link
//! of their own ([`netns`]).

pub mod harness;
pub mod netns;
pub mod pg;
