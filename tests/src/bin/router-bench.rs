//! `router-bench`: placeholder.
fn main() {}
