//! JSON lines (`--json`): one object per record or key log line, then one
//! for the summary, for scripts, jq and log pipelines. The field names are
//! an interface: the README documents them, and they change only by adding
//! fields.

use std::io::{self, Write};
use std::time::SystemTime;

use serde::Serialize;

use super::text::UtcClock;
use super::{Payload, Record, Sink};
use crate::audit::{Activity, DatabaseQuery, QueryOutcome, ShellCommand};
use crate::capture::Summary;
use crate::event::Direction;
use crate::proto::http1::{HttpPart, StartLine};
use crate::proto::http2::{Http2Part, Kind};

pub struct JsonSink<W: Write> {
    out: W,
    module: &'static str,
    truncate: Option<usize>,
    clock: UtcClock,
}

/// The fields every event's object starts with.
#[derive(Serialize)]
struct Origin {
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    module: &'static str,
    pid: u32,
    /// The thread, where the event is a thread's (not a shell's commands).
    #[serde(skip_serializing_if = "Option::is_none")]
    tid: Option<u32>,
    uid: u32,
    comm: String,
}

#[derive(Serialize)]
struct RecordLine<'a> {
    /// `type`: "http" for a parsed HTTP/1 message or part, "data" otherwise.
    #[serde(flatten)]
    origin: Origin,
    /// None when the socket is unknown.
    fd: Option<i32>,
    /// "sent" or "received", as the traced process saw it.
    direction: &'static str,
    local: Option<String>,
    remote: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http: Option<HttpFields<'a>>,
    /// A database protocol's messages, one line each (the body has them too).
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<&'a [String]>,
    /// Bytes the record took on the wire.
    length: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    /// The body, hex-encoded, when it is not UTF-8 text.
    #[serde(skip_serializing_if = "Option::is_none")]
    body_hex: Option<String>,
    /// Whether `-t` cut the body.
    truncated: bool,
}

#[derive(Serialize)]
struct HttpFields<'a> {
    /// "request" or "response"; "unknown" for an HTTP/2 stream whose
    /// headers went by before the capture.
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    /// Name and value pairs in the order sent (HTTP/2's pseudo-header
    /// fields first); empty past the first part.
    headers: Vec<(String, String)>,
    /// The HTTP/2 stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<u32>,
    /// HTTP/2 trailer fields, in the last part.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    trailers: &'a [(String, String)],
    /// A gRPC body's messages completed in this part.
    #[serde(skip_serializing_if = "Option::is_none")]
    grpc: Option<Vec<GrpcLine>>,
    /// 1 for the part with the head; a message too large or slow to hold
    /// whole comes in numbered parts.
    part: u32,
    last: bool,
    /// How the body was decoded (chunked, gzip...), or why it is incomplete.
    notes: &'a [String],
}

#[derive(Serialize)]
struct GrpcLine {
    compressed: bool,
    /// As its length prefix says.
    length: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<String>,
    /// The message, hex-encoded, when it is not UTF-8 text.
    #[serde(skip_serializing_if = "Option::is_none")]
    data_hex: Option<String>,
    /// Whether what is here is less than its length (kept or `-t`).
    truncated: bool,
}

#[derive(Serialize)]
struct KeylogLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    module: &'static str,
    pid: u32,
    comm: &'a str,
    /// As in a key log file: CLIENT_RANDOM, CLIENT_TRAFFIC_SECRET_0...
    label: &'a str,
    client_random: &'a str,
    secret: &'a str,
}

/// A command an interactive shell ran.
#[derive(Serialize)]
struct CommandLine {
    /// `time`: when its first line was read.
    #[serde(flatten)]
    origin: Origin,
    /// The lines as typed, joined by line breaks (invalid UTF-8 replaced).
    line: String,
    /// None when the command was still running, or the shell went away.
    status: Option<i32>,
    /// From its last line read until the shell asked for the next command.
    duration_us: u64,
    /// Whether part of the input could not be captured.
    missing: bool,
    /// Whether `-t` cut the line.
    truncated: bool,
}

/// A command a database server ran.
#[derive(Serialize)]
struct QueryLine<'a> {
    /// `time`: when the server started it.
    #[serde(flatten)]
    origin: Origin,
    connection: Option<u64>,
    user: Option<&'a str>,
    client: Option<&'a str>,
    database: Option<&'a str>,
    /// "query", "prepare", "execute"...
    command: &'a str,
    /// The text, when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    /// The text, hex-encoded, when it is not (binary arguments).
    #[serde(skip_serializing_if = "Option::is_none")]
    text_hex: Option<String>,
    /// Bytes of the text that could not be captured.
    missing_bytes: u64,
    /// "ok", "error", or "unknown" (still running, or its end was lost).
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<QueryError<'a>>,
    duration_us: u64,
    /// Whether `-t` cut the text.
    truncated: bool,
}

#[derive(Serialize)]
struct QueryError<'a> {
    /// The server's error number; null where it has none (PostgreSQL).
    code: Option<i32>,
    sqlstate: &'a str,
    message: &'a str,
}

#[derive(Serialize)]
struct SummaryLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    module: &'static str,
    #[serde(flatten)]
    summary: &'a Summary,
}

impl<W: Write> JsonSink<W> {
    pub fn new(out: W, module: &'static str, truncate: Option<usize>) -> Self {
        JsonSink {
            out,
            module,
            truncate,
            clock: UtcClock::default(),
        }
    }

    /// Ends the stream with the capture's summary.
    pub fn write_summary(&mut self, summary: &Summary) -> io::Result<()> {
        let line = SummaryLine {
            kind: "summary",
            time: self.clock.format(SystemTime::now()),
            module: self.module,
            summary,
        };
        self.write_line(&line)?;
        self.out.flush()
    }

    fn write_command(&mut self, command: &ShellCommand) -> io::Result<()> {
        let shown = &command.line[..command.line.len().min(self.truncate.unwrap_or(usize::MAX))];
        let line = CommandLine {
            origin: Origin {
                kind: "command",
                time: self.clock.format(command.time),
                module: self.module,
                pid: command.pid,
                tid: None,
                uid: command.uid,
                comm: command.comm.to_string(),
            },
            line: String::from_utf8_lossy(shown).into_owned(),
            status: command.status,
            duration_us: u64::try_from(command.duration.as_micros()).unwrap_or(u64::MAX),
            missing: command.missing,
            truncated: shown.len() < command.line.len(),
        };
        self.write_line(&line)
    }

    fn write_query(&mut self, query: &DatabaseQuery) -> io::Result<()> {
        let shown = &query.text[..query.text.len().min(self.truncate.unwrap_or(usize::MAX))];
        let (text, text_hex) = match std::str::from_utf8(shown) {
            Ok(text) => (Some(text.to_string()), None),
            Err(_) => (None, Some(hex::encode(shown))),
        };
        let (status, error) = match &query.outcome {
            QueryOutcome::Ok => ("ok", None),
            QueryOutcome::Error {
                code,
                sqlstate,
                message,
            } => (
                "error",
                Some(QueryError {
                    code: *code,
                    sqlstate,
                    message,
                }),
            ),
            QueryOutcome::Unknown => ("unknown", None),
        };
        let line = QueryLine {
            origin: Origin {
                kind: "query",
                time: self.clock.format(query.time),
                module: self.module,
                pid: query.pid,
                tid: Some(query.tid),
                uid: query.uid,
                comm: query.comm.to_string(),
            },
            connection: query.connection,
            user: query.user.as_deref(),
            client: query.client.as_deref(),
            database: query.database.as_deref(),
            command: &query.kind,
            text,
            text_hex,
            missing_bytes: query.missing,
            status,
            error,
            duration_us: u64::try_from(query.duration.as_micros()).unwrap_or(u64::MAX),
            truncated: shown.len() < query.text.len(),
        };
        self.write_line(&line)
    }

    fn write_line(&mut self, line: &impl Serialize) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, line)?;
        self.out.write_all(b"\n")
    }
}

impl<W: Write> Sink for JsonSink<W> {
    fn emit(&mut self, record: &Record) -> io::Result<()> {
        let meta = &record.meta;
        let joined;
        let (body, http, messages) = match &record.payload {
            Payload::Http(part) => (part.body(), Some(http_fields(part)), None),
            Payload::Http2(part) => (&part.body[..], Some(http2_fields(part, self.truncate)), None),
            Payload::Messages(messages) => {
                joined = messages.text();
                (joined.as_bytes(), None, Some(messages))
            }
            Payload::Raw(bytes) => (&bytes[..], None, None),
        };
        let shown = &body[..body.len().min(self.truncate.unwrap_or(usize::MAX))];
        let (text, hex) = text_or_hex(shown);
        let line = RecordLine {
            origin: Origin {
                kind: match (&http, messages) {
                    (Some(_), _) => "http",
                    (None, Some(messages)) => messages.protocol.key(),
                    (None, None) => "data",
                },
                time: self.clock.format(meta.timestamp),
                module: self.module,
                pid: meta.pid,
                tid: Some(meta.tid),
                uid: meta.uid,
                comm: meta.comm.to_string(),
            },
            fd: (meta.fd >= 0).then_some(meta.fd),
            direction: match meta.direction {
                Direction::Egress => "sent",
                Direction::Ingress => "received",
            },
            local: meta.sockets.map(|pair| pair.local.to_string()),
            remote: meta.sockets.map(|pair| pair.remote.to_string()),
            http,
            messages: messages.map(|messages| &messages.lines[..]),
            length: record.payload.wire_len(),
            body: text,
            body_hex: hex,
            truncated: shown.len() < body.len(),
        };
        self.write_line(&line)
    }

    fn activity(&mut self, activity: &Activity) -> io::Result<()> {
        match activity {
            Activity::Command(command) => self.write_command(command),
            Activity::Query(query) => self.write_query(query),
        }
    }

    fn secrets(&mut self, pid: u32, comm: &str, lines: &str) -> io::Result<()> {
        for line in lines.lines() {
            let mut fields = line.split(' ');
            let (Some(label), Some(client_random), Some(secret)) = (fields.next(), fields.next(), fields.next()) else {
                continue;
            };
            let line = KeylogLine {
                kind: "keylog",
                time: self.clock.format(SystemTime::now()),
                module: self.module,
                pid,
                comm,
                label,
                client_random,
                secret,
            };
            self.write_line(&line)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Bytes as UTF-8 text, or else as hex.
fn text_or_hex(bytes: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (Some(text.to_string()), None),
        Err(_) => (None, Some(hex::encode(bytes))),
    }
}

fn http2_fields(part: &Http2Part, truncate: Option<usize>) -> HttpFields<'_> {
    let (kind, method, path, status) = match &part.kind {
        Kind::Request { method, path } => ("request", Some(method.as_str()), Some(path.clone()), None),
        Kind::Response { status } => ("response", None, None, Some(*status)),
        Kind::Unknown => ("unknown", None, None, None),
    };
    let grpc = part.grpc.iter().map(|message| {
        let shown = &message.data[..message.data.len().min(truncate.unwrap_or(usize::MAX))];
        let (data, data_hex) = text_or_hex(shown);
        GrpcLine {
            compressed: message.compressed,
            length: message.length,
            data,
            data_hex,
            truncated: shown.len() < message.length as usize,
        }
    });
    HttpFields {
        kind,
        method,
        path,
        status,
        version: Some("HTTP/2".into()),
        headers: part.headers.clone(),
        stream: Some(part.stream),
        trailers: &part.trailers,
        grpc: (!part.grpc.is_empty()).then(|| grpc.collect()),
        part: part.number,
        last: part.last,
        notes: &part.notes,
    }
}

/// The start line and headers of a message's first part, as httparse reads
/// them; the parser already took the head, so it parses.
fn http_fields(part: &HttpPart) -> HttpFields<'_> {
    let mut fields = HttpFields {
        kind: "request",
        method: None,
        path: None,
        status: None,
        version: None,
        headers: Vec::new(),
        stream: None,
        trailers: &[],
        grpc: None,
        part: part.number,
        last: part.last,
        notes: &part.notes,
    };
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let version = |minor: Option<u8>| minor.map(|minor| format!("HTTP/1.{minor}"));
    let parsed_headers: &[httparse::Header<'_>] = match part.start {
        StartLine::Request { method } => {
            fields.method = Some(method);
            let mut request = httparse::Request::new(&mut headers);
            if request.parse(part.head()).is_ok() {
                fields.path = request.path.map(str::to_string);
                fields.version = version(request.version);
            }
            request.headers
        }
        StartLine::Response { status } => {
            fields.kind = "response";
            fields.status = Some(status);
            let mut response = httparse::Response::new(&mut headers);
            if response.parse(part.head()).is_ok() {
                fields.version = version(response.version);
            }
            response.headers
        }
    };
    fields.headers = parsed_headers
        .iter()
        .take_while(|header| !header.name.is_empty())
        .map(|header| {
            (
                header.name.to_string(),
                String::from_utf8_lossy(header.value).into_owned(),
            )
        })
        .collect();
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{BufferPool, EventData, EventMeta};
    use crate::proto::http1::{Http1Session, Parsed};
    use serde_json::Value;

    fn meta(direction: Direction) -> EventMeta {
        EventMeta {
            direction,
            ..crate::sink::text::tests::meta()
        }
    }

    /// What `payloads` print as, one parsed line each.
    fn lines(records: &[Record], truncate: Option<usize>) -> Vec<Value> {
        let mut out = Vec::new();
        let mut sink = JsonSink::new(&mut out, "tls", truncate);
        for record in records {
            sink.emit(record).unwrap();
        }
        sink.write_summary(&Summary {
            events: 2,
            ..Summary::default()
        })
        .unwrap();
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    fn http(direction: usize, wire: &[u8]) -> Payload {
        let mut parsed = Vec::new();
        let time = SystemTime::UNIX_EPOCH;
        let mut session = Http1Session::default();
        if direction == 1 {
            session.push(
                0,
                EventData::Record(b"GET / HTTP/1.1\r\n\r\n"),
                time,
                &mut BufferPool::default(),
                &mut parsed,
            );
            parsed.clear();
        }
        session.push(
            direction,
            EventData::Record(wire),
            time,
            &mut BufferPool::default(),
            &mut parsed,
        );
        match parsed.pop() {
            Some(Parsed::Http(part)) => Payload::Http(part),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn http2_messages_carry_their_stream_trailers_and_grpc_messages() {
        let record = Record {
            meta: meta(Direction::Ingress),
            payload: crate::sink::text::tests::grpc_response(),
        };
        for (truncate, hello) in [(None, "hello"), (Some(2), "he")] {
            let lines = lines(std::slice::from_ref(&record), truncate);
            let http = &lines[0]["http"];
            assert_eq!(
                (&lines[0]["type"], &lines[0]["body"]),
                (&Value::from("http"), &Value::from(""))
            );
            assert_eq!(
                (&http["version"], &http["kind"], &http["status"]),
                (&Value::from("HTTP/2"), &Value::from("response"), &Value::from(200))
            );
            assert_eq!(http["stream"], 3);
            assert_eq!(http["headers"][0], serde_json::json!([":status", "200"]));
            assert_eq!(http["trailers"], serde_json::json!([["grpc-status", "0"]]));
            assert_eq!(
                http["grpc"],
                serde_json::json!([
                    {"compressed": false, "length": 5, "data": hello, "truncated": truncate.is_some()},
                    {"compressed": true, "length": 3, "data_hex": if truncate.is_some() { "ff00" } else { "ff0001" }, "truncated": truncate.is_some()},
                ])
            );
        }
    }

    #[test]
    fn requests_responses_and_raw_bytes_are_one_object_each() {
        let records = [
            Record {
                meta: meta(Direction::Egress),
                payload: http(0, b"GET /x?y=1 HTTP/1.1\r\nHost: example\r\nAccept: */*\r\n\r\n"),
            },
            Record {
                meta: meta(Direction::Ingress),
                payload: http(1, b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nnope\n"),
            },
            Record {
                meta: EventMeta {
                    fd: -1,
                    sockets: None,
                    ..meta(Direction::Egress)
                },
                payload: Payload::Raw(vec![0xff, 0x00, 0x41]),
            },
        ];
        let [request, response, raw, summary] = &lines(&records, None)[..] else {
            panic!("four lines")
        };
        assert_eq!(request["type"], "http");
        assert_eq!(request["time"], "2025-11-25T13:45:06.123456Z");
        assert_eq!(request["module"], "tls");
        assert_eq!((request["pid"].as_u64(), request["tid"].as_u64()), (Some(10), Some(11)));
        assert_eq!(
            (&request["comm"], &request["fd"]),
            (&Value::from("curl"), &Value::from(5))
        );
        assert_eq!(request["direction"], "sent");
        assert_eq!(request["local"], "127.0.0.1:40000");
        assert_eq!(request["remote"], "127.0.0.1:8443");
        let fields = &request["http"];
        assert_eq!(
            (&fields["kind"], &fields["method"]),
            (&Value::from("request"), &Value::from("GET"))
        );
        assert_eq!(
            (&fields["path"], &fields["version"]),
            (&Value::from("/x?y=1"), &Value::from("HTTP/1.1"))
        );
        assert_eq!(
            fields["headers"],
            serde_json::json!([["Host", "example"], ["Accept", "*/*"]])
        );
        assert_eq!(
            (&fields["part"], &fields["last"]),
            (&Value::from(1), &Value::from(true))
        );
        assert_eq!(response["direction"], "received");
        assert_eq!(
            (&response["http"]["kind"], &response["http"]["status"]),
            (&Value::from("response"), &Value::from(404))
        );
        assert_eq!(response["body"], "nope\n");
        assert_eq!(raw["type"], "data");
        assert_eq!((&raw["fd"], &raw["local"]), (&Value::Null, &Value::Null));
        assert_eq!(
            (&raw["body_hex"], &raw["length"]),
            (&Value::from("ff0041"), &Value::from(3))
        );
        assert!(raw.get("body").is_none() && raw.get("http").is_none());
        assert_eq!(
            (&summary["type"], &summary["events"]),
            (&Value::from("summary"), &Value::from(2))
        );
        assert_eq!(summary["lost_records"], 0);
    }

    #[test]
    fn each_key_log_line_is_an_object() {
        let mut out = Vec::new();
        let mut sink = JsonSink::new(&mut out, "gotls", None);
        sink.secrets(
            7,
            "client",
            "CLIENT_RANDOM 0a0b 0c0d\nSERVER_TRAFFIC_SECRET_0 0a0b 0e0f\n",
        )
        .unwrap();
        let printed: Vec<Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(printed.len(), 2);
        assert_eq!(
            (&printed[0]["type"], &printed[0]["module"]),
            (&Value::from("keylog"), &Value::from("gotls"))
        );
        assert_eq!(
            (&printed[0]["pid"], &printed[0]["comm"]),
            (&Value::from(7), &Value::from("client"))
        );
        assert_eq!(
            (
                &printed[1]["label"],
                &printed[1]["client_random"],
                &printed[1]["secret"]
            ),
            (
                &Value::from("SERVER_TRAFFIC_SECRET_0"),
                &Value::from("0a0b"),
                &Value::from("0e0f")
            )
        );
    }

    #[test]
    fn truncation_cuts_the_body_and_says_so() {
        let record = Record {
            meta: meta(Direction::Egress),
            payload: Payload::Raw(b"0123456789".to_vec()),
        };
        let printed = lines(&[record], Some(4));
        assert_eq!(
            (&printed[0]["body"], &printed[0]["truncated"]),
            (&Value::from("0123"), &Value::from(true))
        );
        assert_eq!(printed[0]["length"], 10);
    }
}
