//! The OpenID Connect protocol, as plain functions: build a request, read a reply.

pub mod auth_params;
pub mod authorize;
pub mod callback;
pub mod challenge;
pub mod client_auth;
pub mod discovery;
pub mod dpop;
pub mod id_token;
pub mod idp_request;
pub mod jwe;
pub mod jwks;
pub mod jws;
pub mod logout_token;
mod montgomery;
mod p256_field;
pub mod p256_key;
mod p256_scalar;
pub mod par;
pub mod pkce;
pub mod rsa_key;
pub mod signing_key;
pub mod token;
