//! The browser-side state: sealed cookies for the session and for login transactions.

pub mod aead;
pub mod cache;
pub mod chunks;
pub mod contents;
pub mod cookie;
pub mod deny;
pub mod kept_id_token;
pub mod seal;
pub mod transaction;
pub mod wire;
pub mod xchacha20;

pub use contents::{NoSession, Session};
pub use seal::KeyRing;
pub use transaction::{LoginTransaction, TransactionError};
