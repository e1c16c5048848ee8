//! Rebuilds the crate when a migration is added: `embed_migrations!` (src/store/migrations.rs)
//! tracks the files it embedded, not a new directory, so an incremental build would ship a
//! binary without the new migration.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
