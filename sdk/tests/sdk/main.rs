//! The SDK's integration tests, one binary (see STYLE practice 11). Everything talks to
//! servers on 127.0.0.1 started inside the test.

mod helpers;

#[cfg(feature = "axum")]
mod extractor;

mod client;
mod client_session;
mod revocations;
mod status;
mod verifier;
