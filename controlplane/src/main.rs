//! `skein-controlplane` binary.

fn main() {}
