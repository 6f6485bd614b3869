//! The OpenID Connect protocol, as plain functions: build a request, read a reply.

pub mod authorize;
pub mod callback;
pub mod id_token;
pub mod pkce;
pub mod token;
