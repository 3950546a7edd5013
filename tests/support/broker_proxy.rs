//! A TCP proxy between a client and the broker that can stop passing on
//! what the broker says: after the next publisher confirm (`basic.ack`) it
//! forwards, everything the broker sends waits in the proxy until released.
//! The client's own frames still reach the broker, so a publish goes out
//! and its confirm never comes back: the broker has stopped answering, for
//! one connection and no other test.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// An AMQP 0-9-1 frame: a header (type, channel, size), the payload and an end octet.
const FRAME_HEADER: usize = 7;
const METHOD_FRAME: u8 = 1;
/// `basic.ack`: class 60, method 80.
const BASIC_ACK: [u8; 4] = [0, 60, 0, 80];

pub struct BrokerProxy {
    port: u16,
    hold_after_ack: Arc<AtomicBool>,
    /// True while the broker's frames are held.
    held: watch::Sender<bool>,
}

impl BrokerProxy {
    /// Listens on a free local port and forwards each connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let hold_after_ack = Arc::new(AtomicBool::new(false));
        let (held, _) = watch::channel(false);
        let forwarding = (hold_after_ack.clone(), held.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(broker) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (hold_after_ack, held) = forwarding.clone();
                tokio::spawn(forward(client, broker, hold_after_ack, held));
            }
        });
        Ok(Self {
            port,
            hold_after_ack,
            held,
        })
    }

    /// `amqp_url` (which names 127.0.0.1:5672) pointed at this proxy.
    pub fn amqp_url(&self, amqp_url: &str) -> anyhow::Result<String> {
        let direct = "127.0.0.1:5672";
        anyhow::ensure!(
            amqp_url.contains(direct),
            "{amqp_url} does not name {direct}"
        );
        Ok(amqp_url.replacen(direct, &format!("127.0.0.1:{}", self.port), 1))
    }

    /// Holds everything the broker sends once the next confirm has passed.
    pub fn hold_after_next_confirm(&self) {
        self.hold_after_ack.store(true, Ordering::SeqCst);
    }

    /// Waits until the broker's frames are held.
    pub async fn holding(&self, within: Duration) -> anyhow::Result<()> {
        let mut held = self.held.subscribe();
        tokio::time::timeout(within, held.wait_for(|held| *held))
            .await
            .map_err(|_| anyhow::anyhow!("no confirm passed the proxy within {within:?}"))??;
        Ok(())
    }

    /// Passes on what was held, and everything after it.
    pub fn release(&self) {
        self.held.send_replace(false);
    }
}

async fn forward(
    client: TcpStream,
    broker: TcpStream,
    hold_after_ack: Arc<AtomicBool>,
    held: watch::Sender<bool>,
) {
    let (mut client_reads, mut client_writes) = client.into_split();
    let (mut broker_reads, mut broker_writes) = broker.into_split();
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_reads, &mut broker_writes).await;
        let _ = broker_writes.shutdown().await;
    });
    let mut holding = held.subscribe();
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let Ok(read) = broker_reads.read(&mut chunk).await else {
            return;
        };
        if read == 0 {
            return;
        }
        pending.extend_from_slice(&chunk[..read]);
        // Whole frames only, so that a hold falls between two of them.
        while let Some(length) = whole_frame(&pending) {
            if holding.wait_for(|held| !*held).await.is_err() {
                return;
            }
            let frame: Vec<u8> = pending.drain(..length).collect();
            if client_writes.write_all(&frame).await.is_err() {
                return;
            }
            if is_confirm(&frame) && hold_after_ack.swap(false, Ordering::SeqCst) {
                held.send_replace(true);
            }
        }
    }
}

/// The length of the first frame in `bytes` when all of it is there.
fn whole_frame(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < FRAME_HEADER {
        return None;
    }
    let size = u32::from_be_bytes([bytes[3], bytes[4], bytes[5], bytes[6]]) as usize;
    let length = FRAME_HEADER + size + 1;
    (bytes.len() >= length).then_some(length)
}

fn is_confirm(frame: &[u8]) -> bool {
    frame[0] == METHOD_FRAME && frame[FRAME_HEADER..].starts_with(&BASIC_ACK)
}
