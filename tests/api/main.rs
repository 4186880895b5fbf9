//! keybound's integration tests: one binary (one link step), one module per area. Each test
//! gets its own database; most run once on SQLite and once on PostgreSQL (see
//! `helpers::on_both_backends!`).

mod helpers;

mod admin_auth;
mod alerts;
mod api_keys;
mod audit;
mod cli_keys;
mod devices;
mod envelope;
mod health;
mod lab;
mod persistence;
mod proofs;
mod scan;
mod secrets;
mod token;
