//! The C test program (`tests/c/larder_test.c`) built against the static library with
//! `-Wall -Werror`, run plainly and under AddressSanitizer.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `target/<profile>/deps`, where cargo builds `liblarder_ffi.a` for this test (the copy
/// in `target/<profile>` is refreshed only by `cargo build`, not by `cargo test`).
fn deps_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    exe.parent().expect("target/<profile>/deps/<test>").to_path_buf()
}

fn build_and_run(name: &str, extra_flags: &[&str]) {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let library = deps_dir().join("liblarder_ffi.a");
    assert!(library.exists(), "{} was not built", library.display());
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let program = scratch.path().join(name);
    let compiled = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g"])
        .args(extra_flags)
        .arg("-I")
        .arg(crate_dir.join("include"))
        .arg(crate_dir.join("tests/c/larder_test.c"))
        .arg(&library)
        .args(["-lpthread", "-ldl", "-lm", "-lrt", "-o"])
        .arg(&program)
        .status()
        .expect("cc runs");
    assert!(compiled.success(), "the C test program does not compile cleanly");
    let data = scratch.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let out = Command::new(&program)
        .arg(&data)
        .env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        .env_remove("LARDER_STORAGE_ROOT")
        .env_remove("LARDER_MASTER")
        .output()
        .expect("the C test program runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the C test program failed ({}):\n{stderr}", out.status);
    assert!(String::from_utf8_lossy(&out.stdout).contains("all checks passed"));
}

#[test]
fn the_c_program_passes() {
    build_and_run("larder_test", &[]);
}

#[test]
fn the_c_program_passes_under_address_sanitizer() {
    build_and_run("larder_test_asan", &["-fsanitize=address", "-fno-omit-frame-pointer"]);
}
