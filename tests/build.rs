//! Compiles the C workloads the integration tests trace, with and without frame pointers.

use std::{env, path::PathBuf, process::Command};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    for name in ["memops", "fixed_plan"] {
        let source = format!("workloads/{name}.c");
        println!("cargo:rerun-if-changed={source}");
        let status = Command::new(env::var("CC").unwrap_or_else(|_| "cc".into()))
            .args(["-O1", "-g", "-fno-omit-frame-pointer", "-o"])
            .arg(out.join(name))
            .arg(&source)
            .status()
            .expect("a C compiler (cc) is needed to build the test workloads");
        assert!(status.success(), "compiling {source} failed");
    }
}
