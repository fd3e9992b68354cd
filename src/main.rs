//! The `loopback-scaler` command line.

fn main() {
    println!("loopback-scaler");
}
