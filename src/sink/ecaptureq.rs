//! `--ecaptureq ws://HOST:PORT/`: a WebSocket server that streams logs and
//! events as eCapture's `LogEntry` Protobuf messages, so that the eCaptureQ
//! GUI and other clients of that API work with ecapture. The messages are
//! eCapture's `protobuf/proto/v1/ecaptureq.proto` (package `event`), field
//! for field; each goes in one binary frame.
//!
//! Clients never slow the capture: each has a bounded queue, and what does
//! not fit is dropped and counted. A client that connects gets the first
//! logs of the run (the hooking lines, as eCapture keeps them) and a
//! heartbeat, then everything from then on, and a heartbeat every
//! HEARTBEAT_INTERVAL.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use prost::Message;
use tracing::warn;

use super::text::write_http2;
use super::{Payload, Record, Sink};
use crate::audit::Activity;
use crate::event::Direction;
use crate::proto::http1::StartLine;
use crate::proto::http2::Kind;

/// `LogType`.
const LOG_TYPE_HEARTBEAT: i32 = 0;
const LOG_TYPE_PROCESS_LOG: i32 = 1;
const LOG_TYPE_EVENT: i32 = 2;

/// `Event.type`: what the payload is.
const TYPE_UNKNOWN: u32 = 0;
const TYPE_HTTP1_REQUEST: u32 = 1;
const TYPE_HTTP2_REQUEST: u32 = 2;
const TYPE_HTTP1_RESPONSE: u32 = 3;
const TYPE_HTTP2_RESPONSE: u32 = 4;

/// `message Event`.
#[derive(Clone, PartialEq, Message)]
pub struct Event {
    #[prost(int64, tag = "1")]
    pub timestamp: i64,
    #[prost(string, tag = "2")]
    pub uuid: String,
    #[prost(string, tag = "3")]
    pub src_ip: String,
    #[prost(uint32, tag = "4")]
    pub src_port: u32,
    #[prost(string, tag = "5")]
    pub dst_ip: String,
    #[prost(uint32, tag = "6")]
    pub dst_port: u32,
    #[prost(int64, tag = "7")]
    pub pid: i64,
    #[prost(string, tag = "8")]
    pub pname: String,
    #[prost(uint32, tag = "9")]
    pub r#type: u32,
    #[prost(uint32, tag = "10")]
    pub length: u32,
    #[prost(bytes = "vec", tag = "11")]
    pub payload: Vec<u8>,
}

/// `message Heartbeat`.
#[derive(Clone, PartialEq, Message)]
pub struct Heartbeat {
    #[prost(int64, tag = "1")]
    pub timestamp: i64,
    #[prost(int64, tag = "2")]
    pub count: i64,
    #[prost(string, tag = "3")]
    pub message: String,
}

/// `message LogEntry`, with its `oneof payload`.
#[derive(Clone, PartialEq, Message)]
pub struct LogEntry {
    #[prost(int32, tag = "1")]
    pub log_type: i32,
    #[prost(oneof = "EntryPayload", tags = "2, 3, 4")]
    pub payload: Option<EntryPayload>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum EntryPayload {
    #[prost(message, tag = "2")]
    EventPayload(Event),
    #[prost(message, tag = "3")]
    HeartbeatPayload(Heartbeat),
    #[prost(string, tag = "4")]
    RunLog(String),
}

/// Messages waiting for one client; past this, its messages are dropped.
const CLIENT_QUEUE: usize = 4096;
/// Log entries kept for clients that connect later (eCapture keeps 128).
const KEPT_LOGS: usize = 128;
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
/// How often the accepting thread looks for the end of the capture.
const ACCEPT_POLL: Duration = Duration::from_millis(100);
/// A client that stops reading is given up on after this long.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

struct Hub {
    clients: Mutex<Vec<SyncSender<Arc<Vec<u8>>>>>,
    kept_logs: Mutex<Vec<Arc<Vec<u8>>>>,
    events: AtomicU64,
    dropped: AtomicU64,
    stopping: AtomicBool,
}

impl Hub {
    fn heartbeat(&self) -> Vec<u8> {
        LogEntry {
            log_type: LOG_TYPE_HEARTBEAT,
            payload: Some(EntryPayload::HeartbeatPayload(Heartbeat {
                timestamp: now_seconds(),
                count: self.events.load(Ordering::Relaxed) as i64,
                message: format!("ecapture {}", env!("CARGO_PKG_VERSION")),
            })),
        }
        .encode_to_vec()
    }

    fn broadcast(&self, message: Vec<u8>) {
        let message = Arc::new(message);
        let Ok(mut clients) = self.clients.lock() else { return };
        clients.retain(|client| match client.try_send(Arc::clone(&message)) {
            Ok(()) => true,
            Err(mpsc::TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(mpsc::TrySendError::Disconnected(_)) => false,
        });
    }

    fn log(&self, line: &str) {
        let entry = LogEntry {
            log_type: LOG_TYPE_PROCESS_LOG,
            payload: Some(EntryPayload::RunLog(line.to_string())),
        }
        .encode_to_vec();
        if let Ok(mut kept) = self.kept_logs.lock()
            && kept.len() < KEPT_LOGS
        {
            kept.push(Arc::new(entry.clone()));
        }
        self.broadcast(entry);
    }
}

/// The running server.
pub struct EcaptureQ {
    hub: Arc<Hub>,
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

impl EcaptureQ {
    /// Listens on `url` (ws://HOST:PORT/).
    pub fn start(url: &str) -> Result<Arc<EcaptureQ>> {
        let Some(rest) = url.strip_prefix("ws://") else {
            bail!("--ecaptureq {url:?}: give ws://HOST:PORT/");
        };
        let address = rest.split('/').next().unwrap_or_default();
        let listener = TcpListener::bind(address)
            .with_context(|| format!("--ecaptureq: cannot listen on {address}; give a free ws://HOST:PORT/"))?;
        listener.set_nonblocking(true)?;
        let hub = Arc::new(Hub {
            clients: Mutex::new(Vec::new()),
            kept_logs: Mutex::new(Vec::new()),
            events: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        });
        let accepting = Arc::clone(&hub);
        let acceptor = std::thread::Builder::new()
            .name("ecaptureq".into())
            .spawn(move || accept_clients(&listener, &accepting))?;
        Ok(Arc::new(EcaptureQ {
            hub,
            acceptor: Mutex::new(Some(acceptor)),
        }))
    }

    /// One log line, to every client and to those that connect later.
    pub fn log(&self, line: &str) {
        self.hub.log(line.trim_end());
    }

    /// The sink that sends events.
    pub fn sink(self: &Arc<EcaptureQ>) -> EcaptureQSink {
        EcaptureQSink {
            hub: Arc::clone(&self.hub),
        }
    }

    /// Stops accepting and sending; says what clients missed.
    pub fn finish(&self) {
        self.hub.stopping.store(true, Ordering::Relaxed);
        if let Some(acceptor) = self.acceptor.lock().ok().and_then(|mut a| a.take()) {
            let _ = acceptor.join();
        }
        if let Ok(mut clients) = self.hub.clients.lock() {
            // Their threads send what is queued, then end.
            clients.clear();
        }
        let dropped = self.hub.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            warn!("{dropped} eCaptureQ messages were dropped: a client read slower than the capture");
        }
    }
}

fn now_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() as i64)
}

fn accept_clients(listener: &TcpListener, hub: &Arc<Hub>) {
    let mut last_heartbeat = std::time::Instant::now();
    while !hub.stopping.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let (queue, messages) = mpsc::sync_channel(CLIENT_QUEUE);
                if let Ok(kept) = hub.kept_logs.lock() {
                    for log in kept.iter() {
                        let _ = queue.try_send(Arc::clone(log));
                    }
                }
                // A first heartbeat says at once that the server is alive.
                let _ = queue.try_send(Arc::new(hub.heartbeat()));
                if let Ok(mut clients) = hub.clients.lock() {
                    clients.push(queue);
                }
                let _ = std::thread::Builder::new()
                    .name("ecaptureq-client".into())
                    .spawn(move || serve_client(stream, &messages));
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(ACCEPT_POLL),
            Err(err) => {
                warn!("--ecaptureq: accepting a client failed: {err}");
                std::thread::sleep(ACCEPT_POLL);
            }
        }
        if last_heartbeat.elapsed() >= HEARTBEAT_INTERVAL {
            last_heartbeat = std::time::Instant::now();
            hub.broadcast(hub.heartbeat());
        }
    }
}

/// Completes the client's WebSocket handshake and sends it every message
/// queued for it, until it goes away or the capture ends.
fn serve_client(stream: TcpStream, messages: &Receiver<Arc<Vec<u8>>>) {
    if stream.set_nonblocking(false).is_err()
        || stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err()
        || stream.set_read_timeout(Some(WRITE_TIMEOUT)).is_err()
    {
        return;
    }
    let Ok(mut socket) = tungstenite::accept(stream) else {
        return;
    };
    for message in messages {
        if socket
            .send(tungstenite::Message::binary(message.as_ref().clone()))
            .is_err()
        {
            return;
        }
    }
    let _ = socket.close(None);
    let _ = socket.flush();
}

/// Events as `LogEntry` messages of `LOG_TYPE_EVENT`.
pub struct EcaptureQSink {
    hub: Arc<Hub>,
}

impl EcaptureQSink {
    fn send(&self, event: Event) {
        self.hub.events.fetch_add(1, Ordering::Relaxed);
        let entry = LogEntry {
            log_type: LOG_TYPE_EVENT,
            payload: Some(EntryPayload::EventPayload(event)),
        };
        self.hub.broadcast(entry.encode_to_vec());
    }
}

fn seconds(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() as i64)
}

impl Sink for EcaptureQSink {
    fn emit(&mut self, record: &Record) -> io::Result<()> {
        let meta = &record.meta;
        let (kind, payload) = match &record.payload {
            Payload::Http(part) => {
                let kind = match part.start {
                    StartLine::Request { .. } => TYPE_HTTP1_REQUEST,
                    StartLine::Response { .. } => TYPE_HTTP1_RESPONSE,
                };
                let mut bytes = part.head().to_vec();
                bytes.extend_from_slice(part.body());
                (kind, bytes)
            }
            Payload::Http2(part) => {
                let kind = match part.kind {
                    Kind::Request { .. } => TYPE_HTTP2_REQUEST,
                    Kind::Response { .. } => TYPE_HTTP2_RESPONSE,
                    Kind::Unknown => TYPE_UNKNOWN,
                };
                let mut text = Vec::new();
                write_http2(&mut text, part, false, None);
                (kind, text)
            }
            Payload::Messages(messages) => (TYPE_UNKNOWN, messages.text().into_bytes()),
            Payload::Raw(bytes) => (TYPE_UNKNOWN, bytes.clone()),
        };
        // Source and destination as the bytes went: the traced process
        // sent them, or received them.
        let (source, destination) = match (meta.sockets, meta.direction) {
            (Some(pair), Direction::Egress) => (Some(pair.local), Some(pair.remote)),
            (Some(pair), Direction::Ingress) => (Some(pair.remote), Some(pair.local)),
            (None, _) => (None, None),
        };
        let direction = match meta.direction {
            Direction::Egress => 0,
            Direction::Ingress => 1,
        };
        self.send(Event {
            timestamp: seconds(meta.timestamp),
            uuid: format!("{}_{}_{}_{}_{direction}", meta.pid, meta.tid, meta.comm, meta.fd),
            src_ip: source.map(|a| a.ip().to_string()).unwrap_or_default(),
            src_port: source.map_or(0, |a| u32::from(a.port())),
            dst_ip: destination.map(|a| a.ip().to_string()).unwrap_or_default(),
            dst_port: destination.map_or(0, |a| u32::from(a.port())),
            pid: i64::from(meta.pid),
            pname: meta.comm.to_string(),
            r#type: kind,
            length: u32::try_from(payload.len()).unwrap_or(u32::MAX),
            payload,
        });
        Ok(())
    }

    fn activity(&mut self, activity: &Activity) -> io::Result<()> {
        let (time, pid, tid, comm, text) = match activity {
            Activity::Command(command) => (command.time, command.pid, command.pid, &command.comm, &command.line),
            Activity::Query(query) => (query.time, query.pid, query.tid, &query.comm, &query.text),
        };
        self.send(Event {
            timestamp: seconds(time),
            uuid: format!("{pid}_{tid}_{comm}_0_0"),
            pid: i64::from(pid),
            pname: comm.to_string(),
            r#type: TYPE_UNKNOWN,
            length: u32::try_from(text.len()).unwrap_or(u32::MAX),
            payload: text.clone(),
            ..Default::default()
        });
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes of a LogEntry as protoc's encoder lays them out, written
    /// out by hand from the schema: field numbers and wire types.
    #[test]
    fn log_entries_encode_as_the_schema_says() {
        let entry = LogEntry {
            log_type: LOG_TYPE_PROCESS_LOG,
            payload: Some(EntryPayload::RunLog("hi".into())),
        };
        assert_eq!(entry.encode_to_vec(), [0x08, 0x01, 0x22, 0x02, b'h', b'i']);
        let event = LogEntry {
            log_type: LOG_TYPE_EVENT,
            payload: Some(EntryPayload::EventPayload(Event {
                pid: 7,
                r#type: TYPE_HTTP1_REQUEST,
                payload: b"GET".to_vec(),
                length: 3,
                ..Default::default()
            })),
        };
        // log_type 2; field 2, 11 bytes: pid (7) 7, type (9) 1, length (10) 3, payload (11) "GET".
        assert_eq!(
            event.encode_to_vec(),
            [
                0x08, 0x02, 0x12, 0x0b, 0x38, 0x07, 0x48, 0x01, 0x50, 0x03, 0x5a, 0x03, b'G', b'E', b'T'
            ]
        );
        assert_eq!(LogEntry::decode(&event.encode_to_vec()[..]).unwrap(), event);
    }
}
