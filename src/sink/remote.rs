//! Events and logs sent over the network (`--eventaddr`, `--logaddr`):
//! `tcp://HOST:PORT` or `ws://HOST:PORT/PATH`. The capture never waits for
//! the network: what it writes goes to a bounded queue, and a thread of its
//! own connects, sends, and reconnects when the receiver goes away. What
//! cannot be queued or sent is counted and reported.

use std::io::{self, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use tracing::warn;

/// Where `--eventaddr` or `--logaddr` sends what it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    File(PathBuf),
    Tcp { address: String },
    WebSocket { url: String, address: String },
}

impl Destination {
    /// A file path, `tcp://HOST:PORT`, or `ws://HOST:PORT/PATH`.
    pub fn parse(text: &str) -> Result<Destination> {
        let host_and_port = |rest: &str, scheme: &str| -> Result<String> {
            let address = rest.split('/').next().unwrap_or_default();
            match address.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(address.to_string()),
                _ => bail!("{text:?}: give {scheme}://HOST:PORT"),
            }
        };
        if let Some(rest) = text.strip_prefix("tcp://") {
            Ok(Destination::Tcp {
                address: host_and_port(rest, "tcp")?,
            })
        } else if let Some(rest) = text.strip_prefix("ws://") {
            Ok(Destination::WebSocket {
                url: text.to_string(),
                address: host_and_port(rest, "ws")?,
            })
        } else if text.contains("://") {
            bail!("{text:?}: only a file path, tcp://HOST:PORT or ws://HOST:PORT/PATH is supported");
        } else {
            Ok(Destination::File(PathBuf::from(text)))
        }
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::File(path) => write!(f, "{}", path.display()),
            Destination::Tcp { address } => write!(f, "tcp://{address}"),
            Destination::WebSocket { url, .. } => f.write_str(url),
        }
    }
}

/// Bytes that may wait for the network; past this, messages are dropped.
const MAX_QUEUED_BYTES: usize = 16 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A receiver that stops reading is given up on after this long.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Between failed connections, messages are dropped rather than each one
/// waiting for a connection attempt.
const RECONNECT_INTERVAL: Duration = Duration::from_millis(500);
/// How long the end of the capture waits for what is queued to go out.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// What the sending thread and the writers share.
struct Shared {
    destination: Destination,
    queued_bytes: AtomicUsize,
    dropped_messages: AtomicU64,
    dropped_bytes: AtomicU64,
}

impl Shared {
    fn drop_message(&self, bytes: usize) {
        self.dropped_messages.fetch_add(1, Ordering::Relaxed);
        self.dropped_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// A network destination: a queue, and the thread that empties it.
pub struct Remote {
    shared: Arc<Shared>,
    queue: Mutex<Option<SyncSender<Vec<u8>>>>,
    sender: Mutex<Option<JoinHandle<()>>>,
}

impl Remote {
    /// Starts the thread that sends to `destination` (tcp or ws).
    pub fn start(destination: Destination) -> io::Result<Arc<Remote>> {
        let shared = Arc::new(Shared {
            destination,
            queued_bytes: AtomicUsize::new(0),
            dropped_messages: AtomicU64::new(0),
            dropped_bytes: AtomicU64::new(0),
        });
        // Counted in bytes below; the message count bound only keeps the
        // channel's own memory small.
        let (queue, messages) = mpsc::sync_channel(65536);
        let thread_shared = Arc::clone(&shared);
        let sender = std::thread::Builder::new()
            .name("remote-output".into())
            .spawn(move || send_all(&thread_shared, &messages))?;
        Ok(Arc::new(Remote {
            shared,
            queue: Mutex::new(Some(queue)),
            sender: Mutex::new(Some(sender)),
        }))
    }

    /// Queues one message; drops it, counted, when the queue is full.
    fn enqueue(&self, message: Vec<u8>) {
        if message.is_empty() {
            return;
        }
        let len = message.len();
        if self.shared.queued_bytes.load(Ordering::Relaxed) + len > MAX_QUEUED_BYTES {
            self.shared.drop_message(len);
            return;
        }
        let sent = match self.queue.lock().ok().as_deref() {
            Some(Some(queue)) => queue.try_send(message).is_ok(),
            _ => false,
        };
        if sent {
            self.shared.queued_bytes.fetch_add(len, Ordering::Relaxed);
        } else {
            self.shared.drop_message(len);
        }
    }

    /// A writer whose every flush sends what was written since as one
    /// message: whole records, for a receiver that reads messages.
    pub fn writer(self: &Arc<Remote>) -> RemoteWriter {
        RemoteWriter {
            remote: Arc::clone(self),
            pending: Vec::new(),
        }
    }

    /// Sends what is queued (waiting up to DRAIN_TIMEOUT), stops the
    /// thread, and says what could not be sent.
    pub fn finish(&self) {
        if let Ok(mut queue) = self.queue.lock() {
            queue.take();
        }
        let sender = self.sender.lock().ok().and_then(|mut sender| sender.take());
        if let Some(sender) = sender {
            let deadline = Instant::now() + DRAIN_TIMEOUT;
            while !sender.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            // A thread stuck on the network is left behind; the process ends.
            if sender.is_finished() {
                let _ = sender.join();
            }
        }
        let dropped = self.shared.dropped_messages.load(Ordering::Relaxed);
        if dropped > 0 {
            warn!(
                "{dropped} messages ({} bytes) could not be sent to {}: it was unreachable, or slower than the capture",
                self.shared.dropped_bytes.load(Ordering::Relaxed),
                self.shared.destination
            );
        }
    }
}

/// Writes into one message, sent at each flush.
pub struct RemoteWriter {
    remote: Arc<Remote>,
    pending: Vec<u8>,
}

impl Write for RemoteWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.pending.len() + buf.len() > MAX_QUEUED_BYTES {
            self.flush()?;
        }
        self.pending.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.remote.enqueue(std::mem::take(&mut self.pending));
        Ok(())
    }
}

impl Drop for RemoteWriter {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// A connection to the destination.
enum Connection {
    Tcp(TcpStream),
    WebSocket(Box<tungstenite::WebSocket<TcpStream>>),
}

impl Connection {
    fn open(destination: &Destination) -> io::Result<Connection> {
        let (Destination::Tcp { address } | Destination::WebSocket { address, .. }) = destination else {
            return Err(io::Error::other("a file is not sent over the network"));
        };
        let mut last_error = io::Error::other(format!("{address} resolves to no address"));
        for socket_address in address.to_socket_addrs()? {
            match TcpStream::connect_timeout(&socket_address, CONNECT_TIMEOUT) {
                Ok(stream) => {
                    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
                    stream.set_read_timeout(Some(WRITE_TIMEOUT))?;
                    stream.set_nodelay(true)?;
                    return match destination {
                        Destination::WebSocket { url, .. } => tungstenite::client::client(url.as_str(), stream)
                            .map(|(socket, _)| Connection::WebSocket(Box::new(socket)))
                            .map_err(io::Error::other),
                        _ => Ok(Connection::Tcp(stream)),
                    };
                }
                Err(err) => last_error = err,
            }
        }
        Err(last_error)
    }

    fn send(&mut self, message: Vec<u8>) -> io::Result<()> {
        match self {
            Connection::Tcp(stream) => stream.write_all(&message),
            Connection::WebSocket(socket) => {
                let message = match String::from_utf8(message) {
                    Ok(text) => tungstenite::Message::text(text),
                    Err(err) => tungstenite::Message::binary(err.into_bytes()),
                };
                socket.send(message).map_err(io::Error::other)
            }
        }
    }
}

/// The sending thread: each message goes out on the connection, opened (or
/// opened again) as needed; messages that find no connection are dropped.
fn send_all(shared: &Shared, messages: &Receiver<Vec<u8>>) {
    let mut connection: Option<Connection> = None;
    let mut next_attempt = Instant::now();
    let mut reported = false;
    for message in messages {
        let len = message.len();
        shared.queued_bytes.fetch_sub(len, Ordering::Relaxed);
        if connection.is_none() && Instant::now() >= next_attempt {
            match Connection::open(&shared.destination) {
                Ok(opened) => {
                    connection = Some(opened);
                    reported = false;
                }
                Err(err) => {
                    next_attempt = Instant::now() + RECONNECT_INTERVAL;
                    if !reported {
                        warn!("cannot send to {}: {err}; retrying", shared.destination);
                        reported = true;
                    }
                }
            }
        }
        let Some(open) = connection.as_mut() else {
            shared.drop_message(len);
            continue;
        };
        if let Err(err) = open.send(message) {
            warn!("sending to {} failed: {err}; reconnecting", shared.destination);
            connection = None;
            shared.drop_message(len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_files_tcp_or_websockets() {
        assert_eq!(
            Destination::parse("out.log").unwrap(),
            Destination::File(PathBuf::from("out.log"))
        );
        assert_eq!(
            Destination::parse("tcp://127.0.0.1:9000").unwrap(),
            Destination::Tcp {
                address: "127.0.0.1:9000".into()
            }
        );
        assert_eq!(
            Destination::parse("ws://localhost:28257/events").unwrap(),
            Destination::WebSocket {
                url: "ws://localhost:28257/events".into(),
                address: "localhost:28257".into()
            }
        );
        for bad in [
            "tcp://nohost",
            "tcp://:80",
            "ws://h:99999/x",
            "udp://h:1",
            "https://h:1/",
        ] {
            assert!(Destination::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn what_finds_no_receiver_is_counted() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let remote = Remote::start(Destination::parse(&format!("tcp://127.0.0.1:{port}")).unwrap()).unwrap();
        let mut writer = remote.writer();
        for _ in 0..1000 {
            writer.write_all(b"record\n").unwrap();
            writer.flush().unwrap();
        }
        drop(writer);
        remote.finish();
        assert_eq!(remote.shared.dropped_messages.load(Ordering::Relaxed), 1000);
    }
}
