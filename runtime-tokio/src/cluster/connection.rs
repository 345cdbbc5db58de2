//! One accepted connection of the master: the socket and the engine's
//! [`ServerConnection`], with requests handed to the master's actor in batches.

use larder_engine::net::{Hello, RefusalReason, ServerConfig, ServerConnection, ServerEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use std::sync::Arc;

use super::clock::EngineClock;
use super::metrics::MasterMetrics;

/// What a connection tells the actor.
#[derive(Debug)]
pub(crate) enum ToActor {
    /// A Hello that passed the connection's checks: may the node join?
    Hello {
        conn: u64,
        hello: Hello,
        outbound: mpsc::UnboundedSender<Outbound>,
        reply: oneshot::Sender<Result<(), RefusalReason>>,
    },
    /// Requests, in the order they arrived.
    Requests { conn: u64, batch: Vec<(u64, Vec<u8>)> },
    /// The peer carried out a command.
    CommandAck { conn: u64, id: u64 },
    /// The connection is gone.
    Closed { conn: u64 },
}

/// What the actor tells a connection.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// Responses to send.
    Responses(Vec<(u64, Vec<u8>)>),
    /// A command to push.
    Command(u64, Vec<u8>),
    /// Refuse the peer and close (it broke the connection's binding).
    Refuse(RefusalReason),
}

enum Wake {
    Read(std::io::Result<usize>),
    Wrote(std::io::Result<usize>),
    Outbound(Option<Outbound>),
    Timer,
}

/// Serves one connection until it closes.
pub(crate) async fn serve(
    socket: TcpStream,
    conn: u64,
    config: ServerConfig,
    clock: EngineClock,
    actor: mpsc::Sender<ToActor>,
    metrics: Arc<MasterMetrics>,
) {
    let _ = socket.set_nodelay(true);
    let peer = socket.peer_addr().ok();
    let (mut reader, mut writer) = socket.into_split();
    let (outbound_tx, mut outbound) = mpsc::unbounded_channel();
    let mut machine = ServerConnection::new(config, clock.now());
    let mut buf = vec![0u8; 256 << 10];
    let (mut out, mut written) = (Vec::new(), 0usize);
    let mut joined = false;
    loop {
        let mut batch = Vec::new();
        while let Some(event) = machine.poll_event() {
            match event {
                ServerEvent::Hello(hello) => {
                    let (reply, answer) = oneshot::channel();
                    let outbound = outbound_tx.clone();
                    if actor.send(ToActor::Hello { conn, hello, outbound, reply }).await.is_err() {
                        return;
                    }
                    match answer.await {
                        Ok(Ok(())) => {
                            joined = true;
                            machine.accept(clock.now());
                        }
                        Ok(Err(reason)) => machine.refuse(reason),
                        Err(_) => return,
                    }
                }
                ServerEvent::Request { id, body } => batch.push((id, body)),
                ServerEvent::CommandAck { id, .. } => {
                    let _ = actor.send(ToActor::CommandAck { conn, id }).await;
                }
                ServerEvent::Closed(reason) => {
                    tracing::info!("connection from {peer:?} closed: {reason:?}");
                    metrics.closed(reason);
                }
            }
        }
        if !batch.is_empty() && actor.send(ToActor::Requests { conn, batch }).await.is_err() {
            return;
        }
        if written == out.len() {
            out.clear();
            written = 0;
            let _ = machine.poll_transmit(&mut out);
        }
        if machine.is_closed() && written == out.len() {
            break;
        }
        let deadline = clock.deadline(machine.poll_timeout());
        let has_output = written < out.len();
        let reading = !machine.is_closed();
        let wake = tokio::select! {
            read = reader.read(&mut buf), if reading => Wake::Read(read),
            wrote = writer.write(&out[written..]), if has_output => Wake::Wrote(wrote),
            next = outbound.recv() => Wake::Outbound(next),
            () = tokio::time::sleep_until(deadline) => Wake::Timer,
        };
        let now = clock.now();
        match wake {
            Wake::Read(Ok(0) | Err(_)) => machine.handle_eof(now),
            Wake::Read(Ok(n)) => machine.handle_bytes(now, &buf[..n]),
            Wake::Wrote(Ok(n)) if n > 0 => written += n,
            Wake::Wrote(_) => break,
            Wake::Outbound(Some(first)) => {
                let mut next = Some(first);
                while let Some(message) = next {
                    deliver(&mut machine, message);
                    next = outbound.try_recv().ok();
                }
            }
            Wake::Outbound(None) => machine.handle_close(),
            Wake::Timer => machine.handle_timeout(now),
        }
    }
    let _ = writer.shutdown().await;
    if joined {
        let _ = actor.send(ToActor::Closed { conn }).await;
    }
}

fn deliver(machine: &mut ServerConnection, message: Outbound) {
    match message {
        Outbound::Responses(responses) => {
            for (id, body) in responses {
                if let Err(e) = machine.send_response(id, &body) {
                    tracing::debug!("response {id} not sent: {e}");
                }
            }
        }
        Outbound::Command(id, body) => {
            if let Err(e) = machine.send_command(id, &body) {
                tracing::debug!("command {id} not sent: {e}");
            }
        }
        Outbound::Refuse(reason) => machine.refuse(reason),
    }
}
