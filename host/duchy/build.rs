// Rebuild when a migration changes: `sqlx::migrate!` embeds host/duchy/migrations at compile
// time.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
