//! Replays every committed corpus file through its target's body, as an ordinary test.
//!
//! One test replays all targets in turn: `message_decode` measures allocations with a
//! process-wide counter, which other test threads running alongside would disturb.

use std::fs;
use std::path::Path;

fn replay(target: &str, body: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    let mut files = 0;
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("corpus entry").path();
        let data = fs::read(&path).expect("corpus file");
        body(&data);
        files += 1;
    }
    files
}

#[test]
fn every_corpus_file_replays_cleanly() {
    for (target, body) in [
        ("descriptor_decode", larder_fuzz::descriptor_decode as fn(&[u8])),
        ("message_decode", larder_fuzz::message_decode),
        ("bucket_decode", larder_fuzz::bucket_decode),
        ("master_ops", larder_fuzz::master_ops),
        ("net_decode", larder_fuzz::net_decode),
        ("endpoint_decode", larder_fuzz::endpoint_decode),
    ] {
        let files = replay(target, body);
        assert!(files > 0, "no corpus files for {target}");
        eprintln!("{target}: replayed {files} files");
    }
}
