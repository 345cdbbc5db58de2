//! The `larder` command as a user runs it: a real process, real files.

use std::process::Command;

fn larder() -> Command {
    Command::new(env!("CARGO_BIN_EXE_larder"))
}

#[test]
fn bench_writes_more_than_memory_verifies_reopens_and_reports_json() {
    let root = tempfile::tempdir().unwrap();
    let out = larder()
        .args([
            "bench",
            "--json",
            "--count",
            "96",
            "--value-size",
            "256KiB",
            "--memory",
            "8MiB",
            "--tasks",
            "4",
        ])
        .arg("--root")
        .arg(root.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let working_set = 96 * (256 << 10);
    assert_eq!(s["working_set_bytes"], working_set);
    assert_eq!(s["bytes_verified"], 2 * working_set);
    assert_eq!(s["recovered_objects"], 96);
    assert!(s["evicted_to_ssd"].as_u64().unwrap() > 0, "{s}");
    assert!(s["first_read"]["ssd"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(
        s["read_after_reopen"]["ssd"].as_u64().unwrap() + s["read_after_reopen"]["memory"].as_u64().unwrap(),
        96
    );
    let phases: Vec<&str> =
        s["phases"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(phases.len(), 6, "{phases:?}");
    // The bench cleans up after itself under a root it was given.
    let left: Vec<_> = std::fs::read_dir(root.path().join("larder-bench/1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, ["LOCK"]);
}

#[test]
fn a_missing_root_fails_with_a_message_naming_it() {
    let out =
        larder().args(["bench", "--count", "4", "--root", "/nonexistent/larder-root"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/larder-root") && err.contains("does not exist"), "{err}");
}

#[test]
fn a_config_file_is_read_and_bad_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("bench.toml");
    std::fs::write(
        &good,
        format!("count = 8\nvalue_size = \"64KiB\"\nmemory = \"4MiB\"\nroot = {:?}\n", dir.path()),
    )
    .unwrap();
    let out = larder().args(["bench", "--json", "--config"]).arg(&good).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((s["count"].as_u64(), s["value_size"].as_u64()), (Some(8), Some(64 << 10)));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "cuont = 8\n").unwrap();
    let out = larder().args(["bench", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown field"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn keep_leaves_the_data_for_a_second_run_which_starts_from_nothing() {
    let root = tempfile::tempdir().unwrap();
    let run = || {
        let out = larder()
            .args(["bench", "--json", "--keep", "--count", "16", "--value-size", "64KiB", "--memory", "2MiB"])
            .arg("--root")
            .arg(root.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    run();
    let buckets = std::fs::read_dir(root.path().join("larder-bench/1"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".bucket"))
        .count();
    assert!(buckets > 0, "--keep left no data");
    // The second run finds the first one's objects, clears them, and still verifies.
    assert_eq!(run()["recovered_objects"], 16);
}
