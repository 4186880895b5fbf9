//! keybound's integration tests: one binary (one link step), one module per area. Each test
//! gets its own database; most run once on SQLite and once on PostgreSQL (see
//! `helpers::on_both_backends!`).

mod helpers;

mod abuse;
mod admin_auth;
mod alerts;
mod api_keys;
mod attestation;
#[path = "../../src/attestation/testing.rs"]
mod attestation_gen;
mod audit;
mod cli_external;
mod cli_keys;
mod cluster;
mod containment;
mod cors;
mod dependencies;
mod devices;
mod enrollment;
mod envelope;
mod fuzz;
mod health;
mod integrity;
mod interop;
mod introspect;
mod lifecycle;
mod master_key;
mod oauth;
mod openapi;
mod persistence;
mod proofs;
mod redaction;
mod refresh_tokens;
mod scan;
mod sdk;
mod secrets;
mod signing_keys;
mod status_lists;
mod timeouts;
mod tls;
mod token;
mod webhook;
