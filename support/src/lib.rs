//! Runtime pieces Skein's binaries share, kept out of the API types crate: leader election
//! through a Lease ([`leader`]), the mesh CA and certificate issuance ([`pki`]), and process
//! helpers (shutdown signals, the identity a replica goes by: [`process`]).
#![forbid(unsafe_code)]

pub mod leader;
pub mod pki;
pub mod process;
