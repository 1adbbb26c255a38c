//! Test support shared by ferry's crates: a private PostgreSQL server ([`pg`]), harnesses
//! that run the real `ferry` binaries as processes ([`harness`]), on loopback or on a slow link
//! of their own ([`netns`]), and the check that no lease ever had two holders ([`leases`]).

pub mod harness;
pub mod leases;
pub mod netns;
pub mod pg;
