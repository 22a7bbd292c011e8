//! What registry-proxy's tests and benchmarks share, by concern: real
//! servers as processes ([`processes`]), images pushed and pulled
//! ([`images`], [`skopeo`]), Podman and containerd ([`clients`]), a proxy in this process ([`in_process`]),
//! tiny upstream fakes ([`fakes`]), certificates ([`tls`]), load
//! ([`load`]) and what benchmarks read about processes ([`measure`]).
//! A crate of its own, so that each test uses what it needs without
//! compiling (and silencing) the rest.

pub mod clients;
pub mod fakes;
pub mod images;
pub mod in_process;
pub mod load;
pub mod measure;
pub mod processes;
pub mod skopeo;
pub mod tls;

pub use images::*;
pub use in_process::*;
pub use load::*;
pub use measure::*;
pub use processes::*;
