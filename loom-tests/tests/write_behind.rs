//! The write-behind handoff: producers, the bucket writer, and flush.
#![cfg(larder_loom)]

use larder_engine::disk::queue::WriteBehind;
use loom::sync::{Arc, Mutex};
use loom::thread;

/// The writer: takes items, "writes" them to disk, then reports them settled — or, if
/// `settle_first` (the bug), reports before writing.
fn writer(q: &WriteBehind<u32>, disk: &Mutex<Vec<u32>>, settle_first: bool) {
    loop {
        let taken = q.take(usize::MAX, None);
        if let Some(&(last, _)) = taken.items.last() {
            let items: Vec<u32> = taken.items.iter().map(|(_, v)| *v).collect();
            if settle_first {
                q.settle(last + 1);
                disk.lock().unwrap().extend(items);
            } else {
                disk.lock().unwrap().extend(items);
                q.settle(last + 1);
            }
        }
        if taken.closed {
            return;
        }
    }
}

fn model(settle_first: bool) {
    loom::model(move || {
        let q = Arc::new(WriteBehind::new(1 << 20));
        let disk = Arc::new(Mutex::new(Vec::new()));
        let w = {
            let (q, d) = (Arc::clone(&q), Arc::clone(&disk));
            thread::spawn(move || writer(&q, &d, settle_first))
        };
        let other = {
            let q = Arc::clone(&q);
            thread::spawn(move || {
                q.push(2, 1).unwrap();
            })
        };
        q.push(1, 1).unwrap();
        q.wait_settled().unwrap();
        assert!(disk.lock().unwrap().contains(&1), "flush returned before an earlier put was durable");
        other.join().unwrap();
        q.close();
        w.join().unwrap();
        assert_eq!(disk.lock().unwrap().len(), 2, "an accepted item was lost");
    });
}

#[test]
fn flush_returns_only_after_everything_accepted_before_it_is_durable() {
    model(false);
}

/// The bug the model must catch: settling before the data is on disk.
#[test]
#[should_panic(expected = "flush returned before an earlier put was durable")]
fn settling_before_writing_is_caught() {
    model(true);
}
