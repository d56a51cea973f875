//! The scoring benchmark as an example (no Cargo.toml change needed):
//! `cargo run -p shared --release --example score_bench`. The code lives in benches/score.rs.

#[path = "../benches/score.rs"]
mod bench;

fn main() {
    bench::main();
}
