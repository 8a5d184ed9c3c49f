//! Prints what `fieldtune doctor` would: `cargo run -p fieldtune-engine --example doctor [ORT_LIB]`.

use fieldtune_engine::{doctor_report, select_engine, EnginePreference, OrtOptions};

fn main() {
    let lib = std::env::args_os().nth(1).map(std::path::PathBuf::from);
    println!("{}", doctor_report(lib.as_deref()));
    match select_engine(
        EnginePreference::Auto,
        OrtOptions {
            lib,
            ..Default::default()
        },
    ) {
        Ok(e) => println!("selected: {}", e.describe()),
        Err(e) => println!("no engine: {e}"),
    }
}
