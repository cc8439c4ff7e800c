//! Compiles the C workloads the integration tests trace. The attribution workload is built twice,
//! with and without frame pointers, from two shared libraries, a C++ one and a main binary.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

fn compile(compiler: &str, args: &[&str], output: &Path, sources: &[&str]) {
    for source in sources {
        println!("cargo:rerun-if-changed={source}");
    }
    let status = Command::new(compiler)
        .args(args)
        .arg("-o")
        .arg(output)
        .args(sources)
        .status()
        .unwrap_or_else(|err| panic!("{compiler} is needed to build the test workloads: {err}"));
    assert!(status.success(), "compiling {sources:?} failed");
}

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cc = env::var("CC").unwrap_or_else(|_| "cc".into());
    let cxx = env::var("CXX").unwrap_or_else(|_| "c++".into());
    for name in [
        "memops",
        "fixed_plan",
        "grower",
        "leaker",
        "churn",
        "shapes",
    ] {
        compile(
            &cc,
            &["-O1", "-g", "-fno-omit-frame-pointer"],
            &out.join(name),
            &[&format!("workloads/{name}.c")],
        );
    }
    // A statically linked workload: its malloc is in the executable, not in a libc.
    compile(
        &cc,
        &["-O1", "-g", "-static"],
        &out.join("memops_static"),
        &["workloads/memops.c"],
    );
    for (variant, fp) in [
        ("fp", "-fno-omit-frame-pointer"),
        ("nofp", "-fomit-frame-pointer"),
    ] {
        let dir = out.join(format!("attrib-{variant}"));
        std::fs::create_dir_all(&dir).expect("output dir");
        let shared = ["-O1", "-g", fp, "-fPIC", "-shared"];
        compile(
            &cc,
            &shared,
            &dir.join("libleak.so"),
            &["workloads/attrib/libleak.c"],
        );
        compile(
            &cc,
            &shared,
            &dir.join("libclean.so"),
            &["workloads/attrib/libclean.c"],
        );
        compile(
            &cxx,
            &shared,
            &dir.join("libcxx.so"),
            &["workloads/attrib/libcxx.cpp"],
        );
        let dir_arg = format!("-L{}", dir.display());
        compile(
            &cc,
            &[
                "-O1",
                "-g",
                fp,
                &dir_arg,
                "-Wl,-rpath,$ORIGIN",
                "-Wl,--no-as-needed",
            ],
            &dir.join("attrib_main"),
            &["workloads/attrib/main.c", "-lleak", "-lclean", "-lcxx"],
        );
    }
    // The unwinding workload: two shared libraries, two plugins loaded at run time and a main,
    // without frame pointers (CFI only), and without unwind tables but with frame pointers (the
    // kernel unwinder's fallback).
    for (variant, flags) in [
        ("cfi", &["-O2", "-g", "-fomit-frame-pointer"][..]),
        (
            "nocfi",
            &[
                "-O2",
                "-fno-omit-frame-pointer",
                "-fno-asynchronous-unwind-tables",
                "-fno-unwind-tables",
            ][..],
        ),
    ] {
        let dir = out.join(format!("unwind-{variant}"));
        std::fs::create_dir_all(&dir).expect("output dir");
        let shared: Vec<&str> = flags.iter().copied().chain(["-fPIC", "-shared"]).collect();
        compile(
            &cc,
            &shared,
            &dir.join("libuwwrap.so"),
            &["workloads/unwind/wrap.c"],
        );
        let dir_arg = format!("-L{}", dir.display());
        let with_wrap: Vec<&str> = shared
            .iter()
            .copied()
            .chain([dir_arg.as_str(), "-Wl,-rpath,$ORIGIN"])
            .collect();
        compile(
            &cc,
            &with_wrap,
            &dir.join("libuwa.so"),
            &["workloads/unwind/liba.c", "-luwwrap"],
        );
        for (name, defines) in [
            ("libplug1.so", &["-DPLUG_FN=plug_one"][..]),
            ("libplug2.so", &["-DPLUG_FN=plug_two", "-DPAD"][..]),
        ] {
            let args: Vec<&str> = shared
                .iter()
                .copied()
                .chain(defines.iter().copied())
                .collect();
            compile(&cc, &args, &dir.join(name), &["workloads/unwind/plug.c"]);
        }
        let main: Vec<&str> = flags
            .iter()
            .copied()
            .chain([dir_arg.as_str(), "-Wl,-rpath,$ORIGIN", "-Wl,--no-as-needed"])
            .collect();
        compile(
            &cc,
            &main,
            &dir.join("unwind_main"),
            &["workloads/unwind/main.c", "-luwa", "-luwwrap", "-ldl"],
        );
    }
    // The unwinding benchmark's workload, with and without frame pointers.
    for (name, fp) in [
        ("deep_fp", "-fno-omit-frame-pointer"),
        ("deep_nofp", "-fomit-frame-pointer"),
    ] {
        compile(
            &cc,
            &["-O2", fp],
            &out.join(name),
            &["workloads/unwind/deep.c"],
        );
    }
}
