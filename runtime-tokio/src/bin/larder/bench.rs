//! The `larder bench` run: phases, progress bars, verification and the summary.

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use larder_tokio::{Store, StoreStats};
use serde::Serialize;

use super::config::BenchConfig;

/// The cluster directory the bench works in, so that it never touches a real
/// cluster's data under the same root.
const BENCH_CLUSTER: &str = "larder-bench";

/// One timed phase.
#[derive(Debug, Serialize)]
pub(crate) struct Phase {
    pub(crate) name: &'static str,
    pub(crate) seconds: f64,
    /// Value bytes moved (0 for phases that move none).
    pub(crate) bytes: u64,
    pub(crate) mb_per_s: Option<f64>,
}

/// Where reads were served from in a read phase.
#[derive(Debug, Serialize, Default, Clone, Copy)]
pub(crate) struct Hits {
    pub(crate) memory: u64,
    pub(crate) ssd: u64,
    pub(crate) promoted_to_memory: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct Summary {
    pub(crate) value_size: usize,
    pub(crate) count: u64,
    pub(crate) working_set_bytes: u64,
    pub(crate) memory_bytes: u64,
    pub(crate) storage_root: String,
    pub(crate) tasks: usize,
    pub(crate) phases: Vec<Phase>,
    pub(crate) first_read: Hits,
    pub(crate) read_after_reopen: Hits,
    pub(crate) evicted_to_ssd: u64,
    /// Puts that found memory full of objects not yet on SSD and waited.
    pub(crate) puts_waited_for_ssd: u64,
    pub(crate) recovered_objects: u64,
    pub(crate) bytes_verified: u64,
    pub(crate) bytes_on_ssd: u64,
    pub(crate) buckets: u64,
    pub(crate) io_driver: String,
    pub(crate) direct_io: bool,
    /// The cluster's master, with `--master`; none for the embedded store (whose second
    /// read is after a close and reopen, where a cluster's is a plain second read).
    pub(crate) master: Option<String>,
}

/// Runs the bench; an error if anything fails or any byte read back is wrong.
pub(crate) async fn run(mut config: BenchConfig) -> Result<(), String> {
    if config.cluster.is_some() {
        return super::cluster_bench::run(config).await;
    }
    config.store.cluster = BENCH_CLUSTER.into();
    let root = config.store.storage_root.clone().expect("the bench always has a root");
    let result = phases(&config).await;
    if config.temporary_root {
        let _ = std::fs::remove_dir_all(&root);
    }
    let summary = result?;
    if config.json {
        println!("{}", serde_json::to_string_pretty(&summary).expect("summary serializes"));
    } else {
        print_table(&summary);
    }
    Ok(())
}

async fn phases(c: &BenchConfig) -> Result<Summary, String> {
    let total = c.count * c.value_size as u64;
    let bars = MultiProgress::new();
    let mut phases = Vec::new();

    let store = Arc::new(larder_tokio::open(c.store.clone()).await.map_err(|e| format!("opening: {e}"))?);
    let (after_writes, first_read) =
        closing_on_error(&store, write_and_read(&store, c, &bars, &mut phases).await).await?;
    let start = Instant::now();
    store.close().await.map_err(|e| format!("close: {e}"))?;
    phases.push(phase("close", start.elapsed(), 0));
    drop(store);

    let start = Instant::now();
    let store = Arc::new(larder_tokio::open(c.store.clone()).await.map_err(|e| format!("reopening: {e}"))?);
    phases.push(phase("reopen (recovery)", start.elapsed(), 0));
    let recovered = store.stats().recovered;
    let reread = async {
        if recovered != c.count {
            return Err(format!("reopening recovered {recovered} of {} objects", c.count));
        }
        let (read_after_reopen, elapsed) = read_all(&store, c, &bars, "read after reopen").await?;
        phases.push(phase("read after reopen, verified", elapsed, total));
        let end = store.stats();
        if !c.keep {
            store.remove_all(true).await.map_err(|e| e.to_string())?;
        }
        Ok((read_after_reopen, end))
    };
    let (read_after_reopen, end) = closing_on_error(&store, reread.await).await?;
    store.close().await.map_err(|e| e.to_string())?;

    let tier = after_writes.tier.expect("persistence is on");
    Ok(Summary {
        value_size: c.value_size,
        count: c.count,
        working_set_bytes: total,
        memory_bytes: c.store.memory_bytes,
        storage_root: c.store.storage_root.as_ref().map(|r| r.display().to_string()).unwrap_or_default(),
        tasks: c.tasks,
        phases,
        first_read,
        read_after_reopen,
        evicted_to_ssd: after_writes.evicted_to_disk,
        puts_waited_for_ssd: after_writes.put_waits,
        recovered_objects: recovered,
        bytes_verified: 2 * total,
        bytes_on_ssd: end.tier.map_or(tier.bytes, |t| t.bytes),
        buckets: tier.buckets,
        io_driver: format!("{:?}", tier.driver),
        direct_io: tier.direct_io,
        master: None,
    })
}

/// Puts everything, flushes, reads everything back; the stats after the writes and
/// where the reads were served from.
async fn write_and_read(
    store: &Arc<Store>,
    c: &BenchConfig,
    bars: &MultiProgress,
    phases: &mut Vec<Phase>,
) -> Result<(StoreStats, Hits), String> {
    let total = c.count * c.value_size as u64;
    if store.stats().recovered > 0 {
        // Data of an earlier bench kept with --keep: start from nothing.
        store.remove_all(true).await.map_err(|e| e.to_string())?;
    }
    let start = Instant::now();
    for_all(store, c, bars.add(bar(c.count, "put")), |store, i, len| async move {
        store.put(&key(i), &value(i, len)).await.map_err(|e| format!("put {i}: {e}"))
    })
    .await?;
    phases.push(phase("put (memory; SSD behind)", start.elapsed(), total));
    let start = Instant::now();
    store.flush().await.map_err(|e| format!("flush: {e}"))?;
    phases.push(phase("flush (all durable on SSD)", start.elapsed(), 0));
    let after_writes = store.stats();
    let (first_read, elapsed) = read_all(store, c, bars, "read + verify").await?;
    phases.push(phase("read back, verified", elapsed, total));
    Ok((after_writes, first_read))
}

/// On an error, closes the store (so that its files are released before the caller
/// deletes a temporary root) and passes the error on.
async fn closing_on_error<T>(store: &Store, result: Result<T, String>) -> Result<T, String> {
    if result.is_err() {
        let _ = store.close().await;
    }
    result
}

/// Reads every object back with `tasks` in flight, comparing every byte.
async fn read_all(
    store: &Arc<Store>,
    c: &BenchConfig,
    bars: &MultiProgress,
    label: &'static str,
) -> Result<(Hits, Duration), String> {
    let before = store.stats();
    let start = Instant::now();
    for_all(store, c, bars.add(bar(c.count, label)), |store, i, len| async move {
        let got = store.get(&key(i)).await.map_err(|e| format!("get {i}: {e}"))?;
        verify(i, len, &got)
    })
    .await?;
    let elapsed = start.elapsed();
    Ok((hits(&before, &store.stats()), elapsed))
}

fn hits(before: &StoreStats, after: &StoreStats) -> Hits {
    Hits {
        memory: after.memory_hits - before.memory_hits,
        ssd: after.disk_hits - before.disk_hits,
        promoted_to_memory: after.promotions - before.promotions,
    }
}

/// Runs `op(store, i, value_size)` for every object, on `tasks` tasks (task `t` takes
/// `t, t + tasks, …`), ticking `bar`. The store is the embedded one or a cluster's client.
pub(crate) async fn for_all<S, F, Fut>(
    store: &Arc<S>,
    c: &BenchConfig,
    bar: ProgressBar,
    op: F,
) -> Result<(), String>
where
    S: Send + Sync + 'static,
    F: Fn(Arc<S>, u64, usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..c.tasks as u64 {
        let (store, op, bar) = (Arc::clone(store), op.clone(), bar.clone());
        let (count, step, len) = (c.count, c.tasks as u64, c.value_size);
        tasks.spawn(async move {
            let mut i = t;
            while i < count {
                op(Arc::clone(&store), i, len).await?;
                bar.inc(1);
                i += step;
            }
            Ok::<(), String>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| format!("a task failed: {e}"))??;
    }
    bar.finish();
    Ok(())
}

pub(crate) fn bar(len: u64, label: &'static str) -> ProgressBar {
    let style = ProgressStyle::with_template("{prefix:>18} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
        .expect("valid template")
        .progress_chars("=> ");
    ProgressBar::new(len).with_style(style).with_prefix(label)
}

pub(crate) fn phase(name: &'static str, elapsed: Duration, bytes: u64) -> Phase {
    let seconds = elapsed.as_secs_f64();
    Phase { name, seconds, bytes, mb_per_s: (bytes > 0).then(|| bytes as f64 / seconds / 1e6) }
}

pub(crate) fn key(i: u64) -> Vec<u8> {
    format!("larder-bench/{i:012}").into_bytes()
}

/// Checks that `got` is object `i`'s value, every byte, against the generator word by
/// word (nothing is allocated, the bytes are walked once).
pub(crate) fn verify(i: u64, len: usize, got: &[u8]) -> Result<(), String> {
    let wrong = || Err(format!("object {i} read back wrong bytes"));
    if got.len() != len {
        return wrong();
    }
    let mut words = Words::new(i);
    let mut chunks = got.chunks_exact(8);
    // Compared as integers: a slice comparison per word would be a call per 8 bytes.
    for chunk in chunks.by_ref() {
        if u64::from_le_bytes(chunk.try_into().expect("8 bytes")) != words.next_word() {
            return wrong();
        }
    }
    let tail = chunks.remainder();
    if tail != &words.next_word().to_le_bytes()[..tail.len()] {
        return wrong();
    }
    Ok(())
}

/// Object `i`'s bytes: a fast generator seeded by `i`, so verification needs no copy.
pub(crate) fn value(i: u64, len: usize) -> Vec<u8> {
    // Written a word at a time into place (not pushed), so that making the values is
    // not what the bench measures.
    let mut out = vec![0u8; len.next_multiple_of(8)];
    let mut words = Words::new(i);
    for word in out.chunks_exact_mut(8) {
        word.copy_from_slice(&words.next_word().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The words of object `i`'s value, in order (splitmix64 seeded by `i`).
struct Words(u64);

impl Words {
    fn new(i: u64) -> Self {
        Self(i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    fn next_word(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

pub(crate) fn print_table(s: &Summary) {
    println!(
        "larder bench: {} values of {} ({} MB working set) through a {} MB memory segment, {} tasks",
        s.count,
        human(s.value_size as u64),
        s.working_set_bytes / 1_000_000,
        s.memory_bytes / 1_000_000,
        s.tasks
    );
    match &s.master {
        Some(master) => println!("cluster: master {master}; SSD on the cluster's nodes"),
        None => {
            println!("storage root: {} (I/O: {}, O_DIRECT: {})", s.storage_root, s.io_driver, s.direct_io)
        }
    }
    println!();
    println!("{:<30} {:>10} {:>12}", "phase", "seconds", "MB/s");
    for p in &s.phases {
        let rate = p.mb_per_s.map_or(String::from("-"), |r| format!("{r:.0}"));
        println!("{:<30} {:>10.3} {:>12}", p.name, p.seconds, rate);
    }
    println!();
    let h = |x: &Hits| {
        format!("{} from memory, {} from SSD ({} promoted back)", x.memory, x.ssd, x.promoted_to_memory)
    };
    println!("first read:        {}", h(&s.first_read));
    let second = if s.master.is_some() { "second read:      " } else { "after reopen:     " };
    println!("{second} {}", h(&s.read_after_reopen));
    println!(
        "evicted to SSD:    {} objects ({} puts waited for the SSD)",
        s.evicted_to_ssd, s.puts_waited_for_ssd
    );
    println!("recovered:         {} objects", s.recovered_objects);
    println!("on SSD:            {} MB in {} buckets", s.bytes_on_ssd / 1_000_000, s.buckets);
    println!("verified:          {} MB, every byte", s.bytes_verified / 1_000_000);
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_takes_exactly_the_generated_bytes() {
        for len in [1, 7, 8, 9, 4096, 4099] {
            let v = value(3, len);
            assert_eq!(verify(3, len, &v), Ok(()));
            assert!(verify(4, len, &v).is_err(), "another object's bytes");
            assert!(verify(3, len + 1, &v).is_err(), "a short read");
            for at in [0, len / 2, len - 1] {
                let mut bad = v.clone();
                bad[at] ^= 1;
                assert!(verify(3, len, &bad).is_err(), "a flipped byte at {at} of {len}");
            }
        }
    }
}
