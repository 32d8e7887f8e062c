//! Exact accounting: many threads per CPU write at once, and every byte each
//! call moved is in the capture, in its own record, or counted lost.

use std::collections::HashMap;
use std::process::Command;

use crate::support::*;

/// Linked against the system OpenSSL.
const OPENSSL_LIBS: &[&str] = &["-lssl", "-lcrypto", "-lpthread"];
const PAIRS: usize = 16;
const MESSAGES: usize = 200;
/// As in tests/peers/tls_threads.c.
const SIZES: [usize; 15] = [
    100, 1, 63, 64, 65, 129, 1000, 1500, 4097, 8191, 16383, 16384, 16385, 20000, 40000,
];

/// Message `m` of pair `pair`, as tls_threads writes it.
fn message(pair: usize, m: usize) -> String {
    let size = if m == 0 {
        SIZES[0]
    } else {
        SIZES[(pair * 7 + m) % SIZES.len()]
    };
    format!("P{pair:02}M{m:05}.").chars().cycle().take(size).collect()
}

/// A record's payload: what follows its header line, less the separator.
fn payload(record: &str) -> &str {
    let body = record.split_once('\n').map_or("", |(_, body)| body);
    body.strip_suffix("\n\n").unwrap_or(body)
}

#[test]
fn many_threads_per_cpu_every_byte_in_its_own_record() {
    if !e2e_enabled() {
        return;
    }
    let (cert, key) = certificate();
    let peer = build_c_peer("tls_threads", &peer_script("tls_threads.c"), OPENSSL_LIBS);
    // The peer moves about 50 MB in a tenth of a second: a ring buffer that
    // holds it all, so that nothing is lost and every byte can be checked.
    let capture = Capture::start(&["tls", "--mapsize", "65536"]);
    let said = run_peer(
        "tls_threads",
        Command::new(&peer)
            .arg(cert)
            .arg(key)
            .args([PAIRS.to_string(), MESSAGES.to_string()]),
    );
    let out = capture.stop();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stderr.contains(" 0 records lost,") && out.stderr.contains(", 0 bytes lost"),
        "{}",
        out.stderr
    );
    let written: usize = (0..PAIRS)
        .flat_map(|p| (0..MESSAGES).map(move |m| message(p, m).len()))
        .sum();
    assert_eq!(said.trim(), format!("ok {written}"));

    // Each SSL_write is one record holding exactly its message.
    let mut sent = HashMap::new();
    // What each server thread read, joined in the order it was read.
    let mut received: HashMap<String, String> = HashMap::new();
    let mut short = 0;
    for record in records(&out.stdout)
        .into_iter()
        .filter(|r| r.contains(" Comm:tls_threads "))
    {
        let header = record.lines().next().unwrap();
        let body = payload(record);
        if header.contains(" Sent ") && body.len() < 10 {
            // Too short to name its message.
            assert_eq!(body, "P", "{record}");
            short += 1;
        } else if header.contains(" Sent ") {
            let token = &body[..10];
            let pair: usize = token.get(1..3).and_then(|p| p.parse().ok()).unwrap_or(usize::MAX);
            let m: usize = token.get(4..9).and_then(|m| m.parse().ok()).unwrap_or(usize::MAX);
            assert!(
                pair < PAIRS && m < MESSAGES && body == message(pair, m),
                "a record mixes bytes: {}",
                truncate(record)
            );
            assert!(header.contains(&format!(" Sent {} bytes data", body.len())), "{header}");
            assert!(sent.insert((pair, m), ()).is_none(), "message {pair}/{m} twice");
        } else {
            // fd numbers come back for later connections; the client's port does not.
            let peer = header.split(" from ").nth(1).expect("a named socket").to_string();
            received.entry(peer).or_default().push_str(body);
        }
    }
    let expected_short = (0..PAIRS)
        .flat_map(|p| (0..MESSAGES).map(move |m| message(p, m).len()))
        .filter(|&len| len < 10)
        .count();
    assert_eq!(
        (sent.len(), short),
        (PAIRS * MESSAGES - expected_short, expected_short),
        "writes captured"
    );
    assert_eq!(received.len(), PAIRS, "server connections captured");
    for stream in received.values() {
        let pair: usize = stream[1..3].parse().unwrap();
        let expected: String = (0..MESSAGES).map(|m| message(pair, m)).collect();
        assert!(
            *stream == expected,
            "pair {pair}: the bytes read differ from those sent"
        );
    }
}

/// A record header's time, in microseconds since the epoch's day start
/// (enough to order records of one run).
fn header_micros(header: &str) -> u64 {
    let clock = &header[11..26]; // HH:MM:SS.ffffff
    let field = |range: std::ops::Range<usize>| clock[range].parse::<u64>().unwrap();
    ((field(0..2) * 60 + field(3..5)) * 60 + field(6..8)) * 1_000_000 + field(9..15)
}

/// A TLS ping-pong: for every round trip, the client's write, the server's
/// read of it, the server's answer and the client's read of that carry
/// times in that order, whatever order the records were printed in.
#[test]
fn a_reply_never_carries_a_time_before_its_request() {
    if !e2e_enabled() {
        return;
    }
    let (cert, key) = certificate();
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/tls_pingpong.c");
    let peer = build_c_peer("tls_pingpong", &source, OPENSSL_LIBS);
    let capture = Capture::start(&["tls"]);
    run_peer("tls_pingpong", Command::new(&peer).arg(cert).arg(key).args(["64", "1"]));
    let out = capture.stop();
    assert!(
        out.status.success() && out.stderr.contains(" 0 records lost,"),
        "{}",
        out.stderr
    );
    // Per thread and direction, the times of its records in the order made.
    let mut times: HashMap<(String, &str), Vec<u64>> = HashMap::new();
    for record in records(&out.stdout)
        .into_iter()
        .filter(|r| r.contains(" Comm:tls_pingpong "))
    {
        let header = record.lines().next().unwrap();
        let tid = header
            .split_whitespace()
            .find(|w| w.starts_with("TID:"))
            .unwrap()
            .to_string();
        let verb = if header.contains(" Sent ") { "sent" } else { "received" };
        times.entry((tid, verb)).or_default().push(header_micros(header));
    }
    let threads: Vec<String> = {
        let mut tids: Vec<String> = times.keys().map(|(tid, _)| tid.clone()).collect();
        tids.sort();
        tids.dedup();
        tids
    };
    assert_eq!(threads.len(), 2, "a client and a server thread: {threads:?}");
    // The client sends first.
    let first = |tid: &String| times[&(tid.clone(), "sent")][0];
    let (client, server) = if first(&threads[0]) <= first(&threads[1]) {
        (&threads[0], &threads[1])
    } else {
        (&threads[1], &threads[0])
    };
    let series = |tid: &String, verb| &times[&(tid.clone(), verb)];
    let round_trips = series(client, "received").len();
    assert!(round_trips > 1000, "{round_trips} round trips");
    for trip in 0..round_trips {
        let steps = [
            series(client, "sent")[trip],
            series(server, "received")[trip],
            series(server, "sent")[trip],
            series(client, "received")[trip],
        ];
        assert!(
            steps.is_sorted(),
            "round trip {trip}: write, read, reply, read at {steps:?} µs"
        );
    }
}

/// Records lost because ecapture's output stalled are said to be so: its
/// stdout is a pipe nobody reads for a few seconds while a Go ping-pong of
/// 16 KiB records fills the ring buffer.
#[test]
fn records_lost_behind_a_stalled_output_are_blamed_on_it() {
    if !e2e_enabled() {
        return;
    }
    let pingpong = build_go_peer("go_pingpong", "../../bench/go_pingpong.go", &[]);
    let (cert, key) = certificate();
    let dir = scratch_dir();
    let fifo = dir.path().join("stdout");
    let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    // Opens the pipe at once (ecapture's open waits for it), reads nothing
    // for 4 s, then everything.
    let _reader = Guard::spawn(
        "slow reader",
        Command::new("sh")
            .arg("-c")
            .arg("exec < \"$1\"; sleep 4; exec cat > /dev/null")
            .arg("sh")
            .arg(&fifo),
    );
    let capture = Capture::start_with_stdout(&["gotls", "--elfpath", pingpong.to_str().unwrap()], fifo);
    run_within(
        "go_pingpong",
        Command::new(&pingpong).arg(cert).arg(key).args(["16384", "1"]),
        PEER_TIMEOUT,
    );
    let explained = capture.wait_for_log("lost so far", PEER_TIMEOUT);
    let out = capture.stop();
    assert!(explained && out.status.success(), "{}", out.stderr);
    let warning = out.stderr.lines().find(|line| line.contains("lost so far")).unwrap();
    assert!(
        warning.contains("without sleeping: its output, or its own work, is slower than the traffic"),
        "{warning}"
    );
}
