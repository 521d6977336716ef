//! The page in `web/` is built into the binary (rust-embed). Rebuild when any file there
//! changes or is added, not only when an already-embedded file changes.
fn main() {
    println!("cargo:rerun-if-changed=../web");
}
