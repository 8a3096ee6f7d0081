//! `cargo run --manifest-path flatbuffers/codegen/Cargo.toml [-- --check]`
//!
//! Runs flatc 23.5.26 (built from source by the `flatc` crate) on every
//! schema in `flatbuffers/schema/` and writes the Rust into
//! `flatbuffers/src/generated/`. With `--check` it writes into a temporary
//! directory instead and fails if anything differs from what is committed.

use std::path::{Path, PathBuf};
use std::process::{exit, Command};

fn main() {
    let check = std::env::args().any(|a| a == "--check");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("codegen lives in flatbuffers/")
        .to_path_buf();
    let committed = root.join("src/generated");
    let out = if check {
        std::env::temp_dir().join(format!("shardlog-codegen-{}", std::process::id()))
    } else {
        committed.clone()
    };
    std::fs::create_dir_all(&out).expect("create output directory");
    let mut schemas: Vec<PathBuf> = std::fs::read_dir(root.join("schema"))
        .expect("read flatbuffers/schema")
        .map(|e| e.expect("schema entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "fbs"))
        .collect();
    schemas.sort();
    let status = Command::new(flatc::flatc())
        .args(["--rust", "--gen-all", "-o"])
        .arg(&out)
        .args(&schemas)
        .status()
        .expect("run flatc");
    if !status.success() {
        eprintln!("flatc failed: {status}");
        exit(1);
    }
    if !check {
        println!("regenerated {}", committed.display());
        return;
    }
    let mut differs = false;
    for entry in std::fs::read_dir(&out).expect("read generated") {
        let path = entry.expect("generated entry").path();
        let name = path.file_name().expect("file name");
        let fresh = std::fs::read(&path).expect("read fresh");
        let old = std::fs::read(committed.join(name)).unwrap_or_default();
        if fresh != old {
            eprintln!("{} is stale: run `cargo run --manifest-path flatbuffers/codegen/Cargo.toml` and commit", name.to_string_lossy());
            differs = true;
        }
    }
    let _ = std::fs::remove_dir_all(&out);
    if differs {
        exit(1);
    }
    println!("generated code matches the schemas");
}
