//! Readers racing retirement of a published bucket.
#![cfg(larder_loom)]

use larder_engine::disk::protocol::{Bucket, Phase, Unlink};
use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::thread;

/// A file that records its unlinks.
#[derive(Debug, Default)]
struct File {
    deleted: AtomicBool,
    unlinks: AtomicUsize,
}

#[derive(Debug, Clone)]
struct Unlinker(Arc<File>);

impl Unlink for Unlinker {
    fn unlink(&self) {
        self.0.deleted.store(true, Ordering::SeqCst);
        self.0.unlinks.fetch_add(1, Ordering::SeqCst);
    }
}

/// Reads "the file": it must exist for as long as the guard is held.
fn read(bucket: &Arc<Bucket<Unlinker>>, file: &File) {
    if let Some(guard) = Bucket::read(bucket) {
        assert!(!file.deleted.load(Ordering::SeqCst), "read of an unlinked file");
        thread::yield_now();
        assert!(!file.deleted.load(Ordering::SeqCst), "file unlinked under a reader");
        drop(guard);
    }
}

#[test]
fn unlinked_exactly_once_after_the_last_reader() {
    loom::model(|| {
        let file = Arc::new(File::default());
        let bucket = Bucket::create(Unlinker(Arc::clone(&file))).publish();
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (b, f) = (Arc::clone(&bucket), Arc::clone(&file));
                thread::spawn(move || read(&b, &f))
            })
            .collect();
        bucket.retire();
        for r in readers {
            r.join().unwrap();
        }
        assert_eq!(file.unlinks.load(Ordering::SeqCst), 1, "unlinked other than once");
        assert_eq!(bucket.state(), (Phase::Gone, 0));
    });
}

/// The classic bug the one-word design avoids: phase and reader count in separate
/// atomics. The model must catch it.
#[derive(Debug, Default)]
struct NaiveBucket {
    retiring: AtomicBool,
    readers: AtomicUsize,
    file: File,
}

impl NaiveBucket {
    fn read(&self) {
        if self.retiring.load(Ordering::SeqCst) {
            return;
        }
        self.readers.fetch_add(1, Ordering::SeqCst);
        assert!(!self.file.deleted.load(Ordering::SeqCst), "read of an unlinked file");
        if self.readers.fetch_sub(1, Ordering::SeqCst) == 1 && self.retiring.load(Ordering::SeqCst) {
            self.unlink();
        }
    }

    fn retire(&self) {
        self.retiring.store(true, Ordering::SeqCst);
        if self.readers.load(Ordering::SeqCst) == 0 {
            self.unlink();
        }
    }

    fn unlink(&self) {
        self.file.deleted.store(true, Ordering::SeqCst);
        self.file.unlinks.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
#[should_panic(expected = "unlink")] // read of an unlinked file, or unlinked other than once
fn a_broken_bucket_with_split_state_is_caught() {
    loom::model(|| {
        let bucket = Arc::new(NaiveBucket::default());
        let reader = {
            let b = Arc::clone(&bucket);
            thread::spawn(move || b.read())
        };
        bucket.retire();
        reader.join().unwrap();
        assert_eq!(bucket.file.unlinks.load(Ordering::SeqCst), 1, "unlinked other than once");
    });
}
