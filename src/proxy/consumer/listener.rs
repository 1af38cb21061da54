//! Accepting client connections and handling each: up to [`MAX_ATTEMPTS`] instances are tried
//! before the client connection is closed.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span, warn};

use super::Consumer;
use super::attempt::{Client, Next, attempt, conclude};

/// Most instances tried for one client connection.
const MAX_ATTEMPTS: usize = 4;

/// Serves one listener until the consumer's cancellation or `stop` fires (a drain stops
/// accepting while open connections go on).
pub(crate) async fn serve_listener(
    listener: TcpListener,
    consumer: Arc<Consumer>,
    stop: CancellationToken,
) {
    let mut next_id: u64 = 0;
    loop {
        let (tcp, client) = tokio::select! {
            () = consumer.cancel.cancelled() => return,
            () = stop.cancelled() => return,
            acc = listener.accept() => match acc {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: back off briefly instead of spinning.
                    warn!(service = %consumer.service, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        next_id += 1;
        let span = info_span!("conn", service = %consumer.service, %client, conn = next_id, peer = tracing::field::Empty);
        consumer
            .tracker
            .spawn(handle_client(tcp, consumer.clone()).instrument(span));
    }
}

/// Serves one client connection: picks instances until one carries it or none is left.
async fn handle_client(tcp: TcpStream, consumer: Arc<Consumer>) {
    let _active = consumer.activity.enter();
    let _ = tcp.set_nodelay(true);
    let mut tcp = Client {
        tcp: Some(tcp),
        accepted: Instant::now(),
    };
    let deadline = tcp.accepted + consumer.wait;
    let mut tried = HashSet::new();
    // Wait for a first instance; after a failure, use what is known now, unless the failure
    // says a new instance may come (a node draining or lost: a restart).
    let mut until = deadline;
    while tried.len() < MAX_ATTEMPTS {
        let Some(pick) = consumer.choose(&tried, until).await else {
            break;
        };
        if !tried.is_empty() {
            consumer.count(&consumer.metrics.consumer.retries);
        }
        tracing::Span::current().record("peer", tracing::field::display(pick.peer_label()));
        tried.insert(pick.tried());
        let Some((winner, outcome)) = attempt(&consumer, &mut tcp, &mut tried, pick).await else {
            return;
        };
        until = match conclude(&consumer, &mut tcp, &winner, outcome).await {
            Next::Done => return,
            Next::Another => Instant::now(),
            Next::AwaitAnother => deadline,
        };
    }
    consumer.count(&consumer.metrics.consumer.dropped);
    if tried.is_empty() {
        warn!(wait = ?consumer.wait, "no instance of {} found within the wait bound; closing the client connection", consumer.service);
    } else {
        warn!(
            tried = tried.len(),
            "every instance of {} failed; closing the client connection", consumer.service
        );
    }
}
