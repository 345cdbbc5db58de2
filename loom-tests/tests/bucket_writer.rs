//! A bucket writer failing at each step, with a reader and a retirer racing it.
#![cfg(larder_loom)]

use larder_engine::disk::protocol::{Bucket, Phase, Retired, Unlink};
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::{Arc, Mutex};
use loom::thread;

#[derive(Debug, Default)]
struct File {
    unlinks: AtomicUsize,
}

#[derive(Debug, Clone)]
struct Unlinker(Arc<File>);

impl Unlink for Unlinker {
    fn unlink(&self) {
        self.0.unlinks.fetch_add(1, Ordering::SeqCst);
    }
}

/// The steps of writing a bucket: write the data, fdatasync, rename into place, fsync
/// the directory, publish. `fail_at` makes step `fail_at` fail (5: none does).
fn write(
    fail_at: usize,
    slot: &Mutex<Option<Arc<Bucket<Unlinker>>>>,
    file: &Arc<File>,
    published: &AtomicUsize,
) {
    let guard = Bucket::create(Unlinker(Arc::clone(file)));
    // The bucket is shared from the start (worst case): it must stay invisible anyway.
    *slot.lock().unwrap() = Some(Arc::clone(guard.bucket()));
    for step in 0..4 {
        if step == fail_at {
            return; // the guard drops: the failure path
        }
        thread::yield_now();
    }
    if fail_at == 4 {
        return;
    }
    guard.publish();
    published.store(1, Ordering::SeqCst);
}

fn model(fail_at: usize) {
    loom::model(move || {
        let file = Arc::new(File::default());
        let slot = Arc::new(Mutex::new(None));
        let published = Arc::new(AtomicUsize::new(0));
        let writer = {
            let (s, f, p) = (Arc::clone(&slot), Arc::clone(&file), Arc::clone(&published));
            thread::spawn(move || write(fail_at, &s, &f, &p))
        };
        let reader = {
            let (s, p) = (Arc::clone(&slot), Arc::clone(&published));
            thread::spawn(move || {
                let bucket = s.lock().unwrap().clone();
                if let Some(guard) = bucket.as_ref().and_then(Bucket::read) {
                    assert!(fail_at == 5, "a failed write became readable");
                    assert_eq!(p.load(Ordering::SeqCst), 1, "readable before publish returned");
                    drop(guard);
                }
            })
        };
        let bucket = slot.lock().unwrap().clone();
        let retired = bucket.as_ref().map(|b| b.retire());
        writer.join().unwrap();
        reader.join().unwrap();
        let unlinks = file.unlinks.load(Ordering::SeqCst);
        if fail_at < 5 {
            assert_eq!(unlinks, 1, "a failed write must be unlinked exactly once");
            let b = slot.lock().unwrap().clone().unwrap();
            assert_eq!(b.state(), (Phase::Gone, 0));
        } else {
            // Retiring succeeded only if it came after the publish; then exactly once.
            let expected = usize::from(matches!(retired, Some(Retired::Unlinked | Retired::Deferred { .. })));
            assert_eq!(unlinks, expected);
        }
    });
}

#[test]
fn failing_before_any_step() {
    model(0);
}

#[test]
fn failing_after_writing_data() {
    model(1);
}

#[test]
fn failing_after_fdatasync() {
    model(2);
}

#[test]
fn failing_after_rename() {
    model(3);
}

#[test]
fn failing_after_directory_fsync() {
    model(4);
}

#[test]
fn succeeding() {
    model(5);
}

/// Misuse the model must catch: an error path that deletes the file itself and then
/// also drops the guard (which deletes it again).
#[test]
#[should_panic(expected = "unlinked other than once")]
fn a_double_unlink_on_the_error_path_is_caught() {
    loom::model(|| {
        let file = Arc::new(File::default());
        let unlinker = Unlinker(Arc::clone(&file));
        let guard = Bucket::create(unlinker.clone());
        let t = thread::spawn(move || {
            unlinker.unlink(); // the bug: a manual cleanup
            drop(guard);
        });
        t.join().unwrap();
        assert_eq!(file.unlinks.load(Ordering::SeqCst), 1, "unlinked other than once");
    });
}
