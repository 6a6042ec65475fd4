//! The `moat` command.
fn main() {}
