//! Exact accounting: many threads per CPU write at once, and every byte each
//! call moved is in the capture, in its own record, or counted lost.

use std::collections::HashMap;
use std::process::Command;

use crate::support::*;

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
    let peer = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tls_threads");
    run_peer(
        "cc",
        Command::new("cc")
            .args(["-O1", "-o"])
            .arg(&peer)
            .arg(peer_script("tls_threads.c"))
            .args(["-lssl", "-lcrypto", "-lpthread"]),
    );
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
