//! Helpers of the CLI's integration tests: the repository root and the `fieldtune` binary run
//! from it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod field_node;
pub mod superlink;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

/// Runs the `fieldtune` binary with `args` from the repository root (warnings only in its log).
pub fn fieldtune(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fieldtune"))
        .args(args)
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// A run's stdout and stderr as text.
pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Runs the `fieldtune` binary with `args` from the repository root, logging at `level`.
pub fn fieldtune_log(args: &[&str], level: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fieldtune"))
        .args(args)
        .current_dir(root())
        .env("RUST_LOG", level)
        .output()
        .unwrap()
}

/// `adapt`'s arguments for the shipped MNIST CNN with its anchors, adapting to `unlabeled` and
/// writing `out`, followed by `extra`.
pub fn mnist_adapt_args<'a>(unlabeled: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "adapt",
        "--model",
        "models/mnist-cnn",
        "--labeled",
        "models/mnist-cnn/anchors",
        "--unlabeled",
        unlabeled,
        "--out",
        out,
    ];
    args.extend_from_slice(extra);
    args
}
