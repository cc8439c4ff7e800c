//! Compiles the C workloads the integration tests trace. The attribution workload is built twice,
//! with and without frame pointers, from two shared libraries, a C++ one and a main binary.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

fn compile(compiler: &str, args: &[&str], output: &Path, sources: &[&str]) {
    // Sources, not the linker flags among them (a missing "file" would run this script again at
    // every build).
    for source in sources.iter().filter(|s| !s.starts_with('-')) {
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

/// Runs a binutils tool in `dir`.
fn run(dir: &Path, tool: &str, args: &[&str]) {
    let status = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .status()
        .unwrap_or_else(|err| {
            panic!("{tool} (binutils) is needed to build the test workloads: {err}")
        });
    assert!(status.success(), "{tool} {args:?} failed");
}

/// The GNU build id of `path` in hex, as `readelf -n` prints it.
fn build_id(path: &Path) -> String {
    let out = Command::new("readelf")
        .arg("-n")
        .arg(path)
        .output()
        .expect("readelf (binutils) runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| line.trim().strip_prefix("Build ID: ").map(str::to_string))
        .unwrap_or_else(|| panic!("{} has no build id", path.display()))
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
    // The symbols workload: a library whose static functions and inlined code are named only by
    // its separate debug file (the library is stripped to .dynsym and links the debug file), found
    // next to it (symbols-link) or by build id in a debug directory (symbols-buildid/debug).
    for variant in ["link", "buildid"] {
        let dir = out.join(format!("symbols-{variant}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("output dir");
        let lib = dir.join("libsym.so");
        compile(
            &cc,
            &["-O1", "-g", "-fPIC", "-shared", "-Wl,--build-id"],
            &lib,
            &["workloads/symbols/libsym.c"],
        );
        let dir_arg = format!("-L{}", dir.display());
        compile(
            &cc,
            &["-O1", &dir_arg, "-Wl,-rpath,$ORIGIN"],
            &dir.join("symbols_main"),
            &["workloads/symbols/main.c", "-lsym"],
        );
        run(
            &dir,
            "objcopy",
            &["--only-keep-debug", "libsym.so", "libsym.so.debug"],
        );
        run(&dir, "objcopy", &["--strip-all", "libsym.so"]);
        run(
            &dir,
            "objcopy",
            &["--add-gnu-debuglink=libsym.so.debug", "libsym.so"],
        );
        if variant == "buildid" {
            let id = build_id(&lib);
            let target = dir
                .join("debug/.build-id")
                .join(&id[..2])
                .join(format!("{}.debug", &id[2..]));
            std::fs::create_dir_all(target.parent().expect("a parent")).expect("debug dir");
            std::fs::rename(dir.join("libsym.so.debug"), &target).expect("debug file moved");
        }
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
