//! `gen-proto FDS OUT_DIR`: Rust for flwr's Fleet API (fleet.proto and the files it
//! imports) from a FileDescriptorSet, with prost-build (no protoc needed).
use std::collections::BTreeSet;

use prost::Message;
use prost_types::FileDescriptorSet;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, fds, out] = &args[..] else {
        eprintln!("usage: gen-proto FDS OUT_DIR");
        std::process::exit(2);
    };
    let bytes = std::fs::read(fds).unwrap_or_else(|e| panic!("{fds}: {e}"));
    let set = FileDescriptorSet::decode(&bytes[..]).unwrap_or_else(|e| panic!("{fds}: {e}"));
    // fleet.proto and its imports only: the control/serverappio services are not the client's.
    let mut keep = BTreeSet::new();
    let mut todo = vec!["flwr/proto/fleet.proto".to_string()];
    while let Some(name) = todo.pop() {
        if keep.insert(name.clone()) {
            let f = set.file.iter().find(|f| f.name() == name).unwrap_or_else(|| panic!("{fds}: no {name}"));
            todo.extend(f.dependency.iter().cloned());
        }
    }
    let file = set.file.into_iter().filter(|f| keep.contains(f.name())).collect();
    prost_build::Config::new()
        // No doc comments: the .proto comments are in the .fds; the file stays under 700 lines.
        .disable_comments(["."])
        .out_dir(out)
        .compile_fds(FileDescriptorSet { file })
        .unwrap_or_else(|e| panic!("prost-build: {e}"));
    println!("{out}: generated from {}", keep.into_iter().collect::<Vec<_>>().join(", "));
}
