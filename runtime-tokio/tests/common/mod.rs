//! Real `larder master` and `larder node` processes for the cluster tests.
#![allow(dead_code)] // each test file uses its own part

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration as StdDuration;

/// Only a guard against a hung test; no assertion depends on it.
pub(crate) const HANG_GUARD: StdDuration = StdDuration::from_secs(60);

/// A child process killed when dropped.
#[derive(Debug)]
pub(crate) struct Process {
    child: Child,
}

impl Process {
    /// Stops it (SIGSTOP): alive, but silent to everyone, as if cut off.
    pub(crate) fn pause(&self) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("a live child");
        rustix::process::kill_process(pid, rustix::process::Signal::STOP).expect("SIGSTOP");
    }

    /// Lets a paused process go on (SIGCONT).
    pub(crate) fn resume(&self) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("a live child");
        rustix::process::kill_process(pid, rustix::process::Signal::CONT).expect("SIGCONT");
    }

    /// Kills it with SIGKILL and reaps it.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawns `larder ARGS` and reads its stdout until `ready` has seen what it waits for.
fn spawn(args: &[&str], ready: impl FnMut(&str) -> bool) -> Process {
    spawn_command(Command::new(env!("CARGO_BIN_EXE_larder")), args, ready)
}

/// Spawns `command ARGS` (a `larder`, or `ip netns exec NS larder`) and reads its
/// stdout until `ready` has seen what it waits for.
fn spawn_command(mut command: Command, args: &[&str], mut ready: impl FnMut(&str) -> bool) -> Process {
    let mut child = command.args(args).stdout(Stdio::piped()).spawn().expect("larder starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("larder printed where it serves").unwrap();
        if ready(&line) {
            break;
        }
    }
    Process { child }
}

/// A `larder master` process.
#[derive(Debug)]
pub(crate) struct MasterProcess {
    pub(crate) process: Process,
    pub(crate) addr: SocketAddr,
    pub(crate) metrics: SocketAddr,
}

impl MasterProcess {
    /// Starts `larder master --cluster larder` on `listen` with metrics on a free port.
    pub(crate) fn start(listen: &str, extra: &[&str]) -> Self {
        let mut args = vec!["master", "--listen", listen, "--metrics", "127.0.0.1:0", "--cluster", "larder"];
        args.extend_from_slice(extra);
        let (mut addr, mut metrics) = (None, None);
        let process = spawn(&args, |line| {
            if let Some(a) = line.strip_prefix("larder master listening on ") {
                addr = Some(a.parse().unwrap());
            } else if let Some(m) = line.strip_prefix("larder master metrics on http://") {
                metrics = Some(m.trim_end_matches("/metrics").parse().unwrap());
            }
            addr.is_some() && metrics.is_some()
        });
        Self { process, addr: addr.unwrap(), metrics: metrics.unwrap() }
    }

    pub(crate) fn kill(&mut self) {
        self.process.kill();
    }

    /// The value of metric `name` (a line `name value`), if present.
    pub(crate) fn metric(&self, name: &str) -> Option<f64> {
        let text = http_get(self.metrics, "/metrics");
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    /// Polls metric `name` until it equals `value`: waits for the master's state, not
    /// for a time.
    pub(crate) fn wait_for_metric(&self, name: &str, value: f64) {
        let give_up = std::time::Instant::now() + HANG_GUARD;
        while self.metric(name) != Some(value) {
            assert!(
                std::time::Instant::now() < give_up,
                "{name} never became {value}: {:?}",
                self.metric(name)
            );
            std::thread::sleep(StdDuration::from_millis(50));
        }
    }
}

/// A `larder node` process.
#[derive(Debug)]
pub(crate) struct NodeProcess {
    pub(crate) process: Process,
    pub(crate) node: u64,
    pub(crate) addr: SocketAddr,
    /// Records its SSD tier recovered at start.
    pub(crate) recovered: usize,
}

impl NodeProcess {
    /// Starts `larder node` for the master at `master`, with `memory` and its node
    /// directory under `root`.
    pub(crate) fn start(master: SocketAddr, memory: &str, root: &Path) -> Self {
        Self::start_with(master, memory, root, &[])
    }

    /// [`NodeProcess::start`] with more flags.
    pub(crate) fn start_with(master: SocketAddr, memory: &str, root: &Path, extra: &[&str]) -> Self {
        Self::start_by(Command::new(env!("CARGO_BIN_EXE_larder")), master, memory, Some(root), extra)
    }

    /// A node with no SSD tier: what it holds lives only in its memory.
    pub(crate) fn start_memory_only(master: SocketAddr, memory: &str) -> Self {
        Self::start_by(Command::new(env!("CARGO_BIN_EXE_larder")), master, memory, None, &[])
    }

    /// [`NodeProcess::start_with`] inside network namespace `netns`.
    pub(crate) fn start_in_netns(
        netns: &str,
        master: SocketAddr,
        memory: &str,
        root: &Path,
        extra: &[&str],
    ) -> Self {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", netns, env!("CARGO_BIN_EXE_larder")]);
        Self::start_by(command, master, memory, Some(root), extra)
    }

    fn start_by(
        command: Command,
        master: SocketAddr,
        memory: &str,
        root: Option<&Path>,
        extra: &[&str],
    ) -> Self {
        let master = master.to_string();
        let mut args = vec!["node", "--master", &master, "--memory", memory, "--cluster", "larder"];
        if let Some(root) = root {
            args.extend(["--root", root.to_str().unwrap()]);
        }
        args.extend_from_slice(extra);
        let (mut node, mut addr, mut recovered) = (None, None, None);
        let process = spawn_command(command, &args, |line| {
            let Some(rest) = line.strip_prefix("larder node ") else { return false };
            let (id, at) = rest.split_once(" serving on ").unwrap();
            let (at, rest) = at.split_once(" (").unwrap();
            node = Some(id.parse().unwrap());
            addr = Some(at.parse().unwrap());
            recovered = Some(rest.split_once(' ').unwrap().0.parse().unwrap());
            true
        });
        Self { process, node: node.unwrap(), addr: addr.unwrap(), recovered: recovered.unwrap() }
    }

    pub(crate) fn kill(&mut self) {
        self.process.kill();
    }
}

/// `GET path` over HTTP/1.0.
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(HANG_GUARD)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: larder\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

/// A free port below the kernel's ephemeral range: no connection (a client's redials
/// included) can take it while a server restarts on it.
pub(crate) fn unused_fixed_port() -> u16 {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let low: u16 = range.split_whitespace().next().and_then(|p| p.parse().ok()).unwrap_or(32768);
    // Tests of one process run side by side: each call starts past the ports handed out
    // before (a port found free is not bound until its master starts).
    static HANDED_OUT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let start = 20_000 + (std::process::id() % 5_000) as u16;
    loop {
        let offset = HANDED_OUT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = start.checked_add(offset).filter(|p| *p < low).expect("a free port");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A value of `len` bytes that differs for every `seed`.
pub(crate) fn value(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Compares bytes without printing megabytes when they differ.
#[track_caller]
pub(crate) fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let first = got.iter().zip(want).position(|(a, b)| a != b);
        panic!("{what}: {} bytes read, {} put, first difference at {first:?}", got.len(), want.len());
    }
}
