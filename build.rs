//! Rebuilds the crate when a migration is added or edited: `sqlx::migrate!` embeds the files of
//! `migrations/` at compile time, and Cargo would not otherwise notice that they changed.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
