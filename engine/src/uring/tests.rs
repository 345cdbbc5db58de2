//! The machine against a scripted kernel.

use alloc::vec;
use alloc::vec::Vec;

use proptest::prelude::*;

use super::machine::*;

const F: FileId = FileId(0);

fn read(buf: u32, offset: u64, len: usize) -> IoRequest {
    IoRequest::Read { file: F, offset, buf: BufId(buf), buf_offset: 0, len }
}

fn write(buf: u32, offset: u64, len: usize) -> IoRequest {
    IoRequest::Write { file: F, offset, buf: BufId(buf), buf_offset: 0, len }
}

fn submissions(m: &mut IoMachine) -> Vec<Submission> {
    core::iter::from_fn(|| m.poll_submission()).collect()
}

fn completions(m: &mut IoMachine) -> Vec<Completion> {
    core::iter::from_fn(|| m.poll_completion()).collect()
}

#[test]
fn transition_table_is_exhaustive() {
    use OpEvent::*;
    use OpState::*;
    for state in [Queued, InFlight, InFlightCancelled] {
        for event in [Submit, Resubmit, Complete, Cancel] {
            let expected = match (state, event) {
                (Queued, Submit) => Ok(Some(InFlight)),
                (Queued, Cancel) => Ok(None),
                (InFlight, Resubmit) => Ok(Some(Queued)),
                (InFlight, Complete) => Ok(None),
                (InFlight, Cancel) => Ok(Some(InFlightCancelled)),
                (InFlightCancelled, Complete | Resubmit) => Ok(None),
                (InFlightCancelled, Cancel) => Ok(Some(InFlightCancelled)),
                (s, e) => Err((s, e)),
            };
            assert_eq!(transition(state, event), expected, "{state:?} + {event:?}");
        }
    }
}

#[test]
fn batches_larger_than_the_queue_depth_wait_in_the_backlog() {
    let mut m = IoMachine::new(4, 8);
    let ids: Vec<OpId> = (0..10).map(|i| m.push(read(i, u64::from(i) * 4096, 4096))).collect();
    let first = submissions(&mut m);
    assert_eq!(first.len(), 4, "the queue depth caps what is in flight");
    assert_eq!((m.in_flight(), m.backlog_len()), (4, 6));
    m.handle_completion(first[0].user_data, 4096).unwrap();
    assert_eq!(submissions(&mut m).len(), 1, "one completion frees one place");
    // Submissions keep the order of pushes.
    assert_eq!(first.iter().map(|s| OpId::from_user_data(s.user_data)).collect::<Vec<_>>(), ids[..4]);
}

#[test]
fn a_full_submission_queue_leaves_the_rest_queued() {
    // The driver stops taking submissions when its ring is full; nothing is lost.
    let mut m = IoMachine::new(64, 8);
    for i in 0..5 {
        m.push(read(i, 0, 10));
    }
    let taken = [m.poll_submission().unwrap(), m.poll_submission().unwrap()];
    assert_eq!(m.backlog_len(), 3);
    for s in taken {
        m.handle_completion(s.user_data, 10).unwrap();
    }
    assert_eq!(submissions(&mut m).len(), 3);
}

#[test]
fn short_reads_are_resubmitted_for_the_remainder() {
    let mut m = IoMachine::new(8, 8);
    let id = m.push(IoRequest::Read { file: F, offset: 1000, buf: BufId(1), buf_offset: 10, len: 100 });
    let s = m.poll_submission().unwrap();
    m.handle_completion(s.user_data, 40).unwrap();
    assert!(completions(&mut m).is_empty());
    let again = m.poll_submission().unwrap();
    assert_eq!(
        again.request,
        IoRequest::Read { file: F, offset: 1040, buf: BufId(1), buf_offset: 50, len: 60 }
    );
    m.handle_completion(again.user_data, 60).unwrap();
    assert_eq!(
        completions(&mut m),
        [Completion { id, file: F, buf: Some(BufId(1)), outcome: Outcome::Done { bytes: 100, eof: false } }]
    );
    assert!(m.is_idle());
}

#[test]
fn short_writes_are_resubmitted_for_the_remainder() {
    let mut m = IoMachine::new(8, 8);
    m.push(write(2, 0, 8192));
    let s = m.poll_submission().unwrap();
    m.handle_completion(s.user_data, 4096).unwrap();
    let again = m.poll_submission().unwrap();
    assert_eq!(
        again.request,
        IoRequest::Write { file: F, offset: 4096, buf: BufId(2), buf_offset: 4096, len: 4096 }
    );
    m.handle_completion(again.user_data, 4096).unwrap();
    assert_eq!(completions(&mut m)[0].outcome, Outcome::Done { bytes: 8192, eof: false });
}

#[test]
fn a_read_that_meets_end_of_file_reports_it() {
    let mut m = IoMachine::new(8, 8);
    m.push(read(0, 0, 100));
    let s = m.poll_submission().unwrap();
    m.handle_completion(s.user_data, 30).unwrap();
    let s = m.poll_submission().unwrap();
    m.handle_completion(s.user_data, 0).unwrap();
    assert_eq!(completions(&mut m)[0].outcome, Outcome::Done { bytes: 30, eof: true });
}

#[test]
fn eintr_and_eagain_are_retried_up_to_a_limit() {
    let mut m = IoMachine::new(8, 2);
    m.push(read(0, 0, 10));
    for errno in [Errno::EINTR, Errno::EAGAIN] {
        let s = m.poll_submission().unwrap();
        m.handle_completion(s.user_data, -errno.0).unwrap();
        assert!(completions(&mut m).is_empty(), "{errno:?} is retried");
    }
    let s = m.poll_submission().unwrap();
    m.handle_completion(s.user_data, -Errno::EAGAIN.0).unwrap();
    assert_eq!(completions(&mut m)[0].outcome, Outcome::Failed { errno: Errno::EAGAIN, bytes: 0 });
}

#[test]
fn progress_resets_the_retry_budget() {
    let mut m = IoMachine::new(8, 1);
    m.push(read(0, 0, 30));
    for result in [-Errno::EINTR.0, 10, -Errno::EINTR.0, 10, -Errno::EINTR.0, 10] {
        let s = m.poll_submission().unwrap();
        m.handle_completion(s.user_data, result).unwrap();
    }
    assert_eq!(completions(&mut m)[0].outcome, Outcome::Done { bytes: 30, eof: false });
}

#[test]
fn errors_arrive_per_operation_with_their_errno() {
    let mut m = IoMachine::new(8, 8);
    let a = m.push(write(0, 0, 100));
    let b = m.push(write(1, 100, 100));
    let subs = submissions(&mut m);
    m.handle_completion(subs[0].user_data, 50).unwrap();
    m.handle_completion(subs[1].user_data, -28).unwrap(); // ENOSPC
    let resub = m.poll_submission().unwrap();
    m.handle_completion(resub.user_data, -5).unwrap(); // EIO
    let done = completions(&mut m);
    assert_eq!(done.len(), 2);
    assert!(done.contains(&Completion {
        id: b,
        file: F,
        buf: Some(BufId(1)),
        outcome: Outcome::Failed { errno: Errno(28), bytes: 0 }
    }));
    assert!(done.contains(&Completion {
        id: a,
        file: F,
        buf: Some(BufId(0)),
        outcome: Outcome::Failed { errno: Errno(5), bytes: 50 }
    }));
}

#[test]
fn a_write_that_makes_no_progress_fails() {
    let mut m = IoMachine::new(8, 8);
    m.push(write(0, 0, 100));
    let s = m.poll_submission().unwrap();
    m.handle_completion(s.user_data, 0).unwrap();
    assert_eq!(completions(&mut m)[0].outcome, Outcome::Failed { errno: Errno::EIO, bytes: 0 });
}

#[test]
fn syncs_complete_without_bytes() {
    let mut m = IoMachine::new(8, 8);
    m.push(IoRequest::Fdatasync { file: F });
    m.push(IoRequest::Fsync { file: F });
    for s in submissions(&mut m) {
        m.handle_completion(s.user_data, 0).unwrap();
    }
    let done = completions(&mut m);
    assert!(done.iter().all(|c| c.buf.is_none() && c.outcome == Outcome::Done { bytes: 0, eof: false }));
}

#[test]
fn zero_length_transfers_complete_at_once() {
    let mut m = IoMachine::new(8, 8);
    m.push(read(0, 0, 0));
    assert!(m.poll_submission().is_none());
    assert_eq!(completions(&mut m)[0].outcome, Outcome::Done { bytes: 0, eof: false });
}

#[test]
fn cancelling_before_submission_completes_at_once_and_never_submits() {
    let mut m = IoMachine::new(8, 8);
    let a = m.push(read(0, 0, 10));
    let b = m.push(read(1, 0, 10));
    m.cancel(a).unwrap();
    assert_eq!(
        completions(&mut m),
        [Completion { id: a, file: F, buf: Some(BufId(0)), outcome: Outcome::Cancelled }]
    );
    let subs = submissions(&mut m);
    assert_eq!(subs.len(), 1);
    assert_eq!(OpId::from_user_data(subs[0].user_data), b);
}

#[test]
fn cancelling_in_flight_keeps_the_buffer_until_the_kernel_answers() {
    let mut m = IoMachine::new(8, 8);
    let a = m.push(read(7, 0, 100));
    let s = m.poll_submission().unwrap();
    m.cancel(a).unwrap();
    m.cancel(a).unwrap(); // cancelling twice is harmless
    assert!(completions(&mut m).is_empty(), "the kernel may still write into buffer 7");
    // Even a short read is not resubmitted for a cancelled operation.
    m.handle_completion(s.user_data, 40).unwrap();
    assert_eq!(
        completions(&mut m),
        [Completion { id: a, file: F, buf: Some(BufId(7)), outcome: Outcome::Cancelled }]
    );
    assert!(m.poll_submission().is_none());
    assert!(m.is_idle());
}

#[test]
fn cancelling_between_pieces_completes_at_once() {
    let mut m = IoMachine::new(8, 8);
    let a = m.push(read(3, 0, 100));
    let s = m.poll_submission().unwrap();
    m.handle_completion(s.user_data, 50).unwrap(); // the remainder is queued again
    m.cancel(a).unwrap();
    assert_eq!(completions(&mut m)[0].outcome, Outcome::Cancelled);
    assert!(m.poll_submission().is_none());
}

#[test]
fn stale_and_unknown_ids_are_refused() {
    let mut m = IoMachine::new(8, 8);
    let a = m.push(read(0, 0, 10));
    let s = m.poll_submission().unwrap();
    m.handle_completion(s.user_data, 10).unwrap();
    assert_eq!(m.handle_completion(s.user_data, 10), Err(MachineError::UnknownOp(a)));
    assert_eq!(m.cancel(a), Err(MachineError::UnknownOp(a)));
    let b = m.push(read(0, 0, 10)); // reuses the slot with a new generation
    assert_ne!(a, b);
    assert_eq!(m.handle_completion(b.to_user_data(), 10), Err(MachineError::NotSubmitted(b)));
    assert_eq!(
        m.handle_completion(u64::MAX, 0),
        Err(MachineError::UnknownOp(OpId::from_user_data(u64::MAX)))
    );
}

/// A kernel that transfers a random part of what was asked, or fails retryably.
fn kernel_result(s: &Submission, pick: u8) -> i32 {
    let len = match s.request {
        IoRequest::Read { len, .. } | IoRequest::Write { len, .. } => len,
        _ => 0,
    };
    match pick % 8 {
        0 => -Errno::EINTR.0,
        1 => -Errno::EAGAIN.0,
        2 if len > 1 => (len / 2) as i32,
        _ => len as i32,
    }
}

/// Retries in a row before an operation fails, in the property test.
const MAX_RETRIES: u32 = 16;

proptest! {
    #[test]
    fn every_operation_completes_exactly_once_within_the_depth(
        lens in prop::collection::vec(1usize..10_000, 1..60),
        depth in 1u32..16,
        picks in prop::collection::vec(any::<u8>(), 1..2000),
        cancel_every in 2usize..20,
    ) {
        // Retries are bounded: picks that are all EINTR/EAGAIN would otherwise keep an op
        // the cancels never reach retrying for ever (this hung a run once).
        let mut m = IoMachine::new(depth, MAX_RETRIES);
        let ids: Vec<OpId> = lens.iter().enumerate().map(|(i, len)| m.push(read(i as u32, 0, *len))).collect();
        let mut held: Vec<Submission> = vec![];
        let mut picks = picks.into_iter().cycle();
        let mut done: Vec<Completion> = vec![];
        let mut step = 0usize;
        while !m.is_idle() {
            step += 1;
            while let Some(s) = m.poll_submission() {
                held.push(s);
            }
            prop_assert!(m.in_flight() <= depth);
            prop_assert_eq!(m.in_flight() as usize, held.len());
            if step % cancel_every == 0 {
                let _ = m.cancel(ids[step % ids.len()]);
            }
            if let Some(s) = held.pop() {
                let pick = picks.next().unwrap();
                m.handle_completion(s.user_data, kernel_result(&s, pick)).unwrap();
            }
            done.extend(core::iter::from_fn(|| m.poll_completion()));
        }
        prop_assert_eq!(done.len(), ids.len());
        for (id, len) in ids.iter().zip(&lens) {
            let c = done.iter().filter(|c| c.id == *id).collect::<Vec<_>>();
            prop_assert_eq!(c.len(), 1);
            let whole = Outcome::Done { bytes: *len, eof: false };
            let gave_up = matches!(
                c[0].outcome,
                Outcome::Failed { errno, .. } if errno == Errno::EINTR || errno == Errno::EAGAIN
            );
            prop_assert!(c[0].outcome == Outcome::Cancelled || c[0].outcome == whole || gave_up, "{:?}", c[0]);
        }
    }
}

#[test]
fn an_operation_the_kernel_interrupts_every_time_fails_after_its_retries() {
    let mut m = IoMachine::new(2, MAX_RETRIES);
    let id = m.push(read(0, 0, 100));
    let mut attempts = 0;
    while let Some(s) = m.poll_submission() {
        attempts += 1;
        m.handle_completion(s.user_data, -Errno::EINTR.0).unwrap();
    }
    assert_eq!(attempts, MAX_RETRIES + 1, "the first try and every retry");
    let done = m.poll_completion().unwrap();
    assert_eq!(done.id, id);
    assert!(matches!(done.outcome, Outcome::Failed { errno, bytes: 0 } if errno == Errno::EINTR), "{done:?}");
    assert!(m.is_idle());
}
