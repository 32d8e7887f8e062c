//! pcapng output: a section header, one interface description, Decryption
//! Secrets Blocks carrying NSS key log lines, and enhanced packet blocks whose
//! comments name the owning process. Wireshark and tshark decrypt the TLS in
//! such a file with no separate key file.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SECTION_HEADER: u32 = 0x0A0D_0D0A;
const INTERFACE_DESCRIPTION: u32 = 0x0000_0001;
const ENHANCED_PACKET: u32 = 0x0000_0006;
const DECRYPTION_SECRETS: u32 = 0x0000_000A;
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;
const SECRETS_TLS_KEY_LOG: u32 = 0x544C_534B;

const OPT_END: u16 = 0;
const OPT_COMMENT: u16 = 1;
const SHB_USER_APPLICATION: u16 = 4;
const IF_NAME: u16 = 2;
const IF_TSRESOL: u16 = 9;
/// Timestamps in nanoseconds (10^-9).
const NANOSECONDS: u8 = 9;

pub struct PcapngWriter<W: Write> {
    out: W,
    /// Reused block buffer: writing a packet allocates nothing.
    block: Vec<u8>,
}

impl<W: Write> PcapngWriter<W> {
    /// Writes the section header and the description of the one interface.
    pub fn new(out: W, interface: &str, link_type: u16, snap_len: u32) -> io::Result<Self> {
        let mut writer = PcapngWriter {
            out,
            block: Vec::with_capacity(64 * 1024),
        };
        writer.start(SECTION_HEADER);
        writer.put_u32(BYTE_ORDER_MAGIC);
        writer.put_u16(1);
        writer.put_u16(0);
        writer.block.extend_from_slice(&u64::MAX.to_le_bytes()); // section length unknown
        writer.option(
            SHB_USER_APPLICATION,
            concat!("ecapture ", env!("CARGO_PKG_VERSION")).as_bytes(),
        );
        writer.end_options();
        writer.finish()?;

        writer.start(INTERFACE_DESCRIPTION);
        writer.put_u16(link_type);
        writer.put_u16(0);
        writer.put_u32(snap_len);
        writer.option(IF_NAME, interface.as_bytes());
        writer.option(IF_TSRESOL, &[NANOSECONDS]);
        writer.end_options();
        writer.finish()?;
        Ok(writer)
    }

    /// Key log lines that decrypt the packets written after them.
    pub fn write_secrets(&mut self, keylog_lines: &str) -> io::Result<()> {
        self.start(DECRYPTION_SECRETS);
        self.put_u32(SECRETS_TLS_KEY_LOG);
        self.put_u32(keylog_lines.len() as u32);
        self.put_padded(keylog_lines.as_bytes());
        self.finish()
    }

    pub fn write_packet(
        &mut self,
        time: SystemTime,
        data: &[u8],
        wire_len: u32,
        comment: Option<&str>,
    ) -> io::Result<()> {
        let nanos = time.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
        self.start(ENHANCED_PACKET);
        self.put_u32(0); // interface id
        self.put_u32((nanos >> 32) as u32);
        self.put_u32(nanos as u32);
        self.put_u32(data.len() as u32);
        self.put_u32(wire_len);
        self.put_padded(data);
        if let Some(comment) = comment {
            self.option(OPT_COMMENT, comment.as_bytes());
            self.end_options();
        }
        self.finish()
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn start(&mut self, block_type: u32) {
        self.block.clear();
        self.put_u32(block_type);
        self.put_u32(0); // total length, patched in finish
    }

    fn finish(&mut self) -> io::Result<()> {
        let total = (self.block.len() + 4) as u32;
        self.block[4..8].copy_from_slice(&total.to_le_bytes());
        self.put_u32(total);
        self.out.write_all(&self.block)
    }

    fn option(&mut self, code: u16, value: &[u8]) {
        self.put_u16(code);
        self.put_u16(value.len() as u16);
        self.put_padded(value);
    }

    fn end_options(&mut self) {
        self.put_u16(OPT_END);
        self.put_u16(0);
    }

    fn put_padded(&mut self, bytes: &[u8]) {
        self.block.extend_from_slice(bytes);
        let padding = (4 - bytes.len() % 4) % 4;
        self.block.extend_from_slice(&[0; 3][..padding]);
    }

    fn put_u16(&mut self, value: u16) {
        self.block.extend_from_slice(&value.to_le_bytes());
    }

    fn put_u32(&mut self, value: u32) {
        self.block.extend_from_slice(&value.to_le_bytes());
    }
}

/// Packets wait this long before they are written, so that the secrets of a
/// handshake, which arrive once it completes, go into the file ahead of the
/// handshake's own packets (tshark reads the file in one pass).
const HOLD: Duration = Duration::from_millis(1000);

struct HeldPacket {
    arrived: Instant,
    time: SystemTime,
    data: Vec<u8>,
    wire_len: u32,
    comment: Option<String>,
    /// Without a comment: the connection whose owner may be known by the
    /// time the packet is written.
    flow: Option<Vec<u8>>,
}

/// The packet side of pcap mode: filter, hold, write.
pub struct PacketFile<W: Write> {
    writer: PcapngWriter<W>,
    filter: Option<pcap::BpfProgram>,
    held: VecDeque<HeldPacket>,
    pub packets_written: u64,
}

impl<W: Write> PacketFile<W> {
    /// `filter`, a compiled pcap filter, is for when the kernel could not run it.
    pub fn new(
        out: W,
        interface: &str,
        link_type: u16,
        snap_len: u32,
        filter: Option<pcap::BpfProgram>,
    ) -> anyhow::Result<Self> {
        let writer = PcapngWriter::new(out, interface, link_type, snap_len)?;
        Ok(PacketFile {
            writer,
            filter,
            held: VecDeque::new(),
            packets_written: 0,
        })
    }

    /// A packet, with its comment, or else its flow for `release` to name.
    pub fn push(
        &mut self,
        time: SystemTime,
        data: &[u8],
        wire_len: u32,
        comment: Option<String>,
        flow: Option<Vec<u8>>,
    ) {
        if self.filter.as_ref().is_some_and(|f| !f.filter(data)) {
            return;
        }
        // Each CPU has its own perf buffer, drained in turn: restore the order
        // of the wire, which Wireshark's decryption follows record by record.
        let position = self.held.len() - self.held.iter().rev().take_while(|held| held.time > time).count();
        self.held.insert(
            position,
            HeldPacket {
                arrived: Instant::now(),
                time,
                data: data.to_vec(),
                wire_len,
                flow: if comment.is_none() { flow } else { None },
                comment,
            },
        );
    }

    pub fn write_secrets(&mut self, keylog_lines: &str) -> io::Result<()> {
        self.writer.write_secrets(keylog_lines)
    }

    /// Writes the packets held long enough; all of them when `everything`.
    /// A packet still without a comment gets its flow's from `name_flow`.
    pub fn release(&mut self, everything: bool, name_flow: &mut dyn FnMut(&[u8]) -> Option<String>) -> io::Result<()> {
        while let Some(packet) = self.held.front() {
            if !everything && packet.arrived.elapsed() < HOLD {
                break;
            }
            let packet = self.held.pop_front().expect("front exists");
            let comment = packet.comment.or_else(|| name_flow(packet.flow.as_deref()?));
            self.writer
                .write_packet(packet.time, &packet.data, packet.wire_len, comment.as_deref())?;
            self.packets_written += 1;
        }
        self.writer.flush()
    }
}

/// Ethernet, for the tests' captures on loopback.
#[cfg(test)]
const LINKTYPE_ETHERNET: u16 = 1;

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_parser::pcapng::{Block, PcapNGOption};
    use pcap_parser::traits::PcapNGPacketBlock;

    #[test]
    fn blocks_parse_back_with_an_independent_parser() {
        let mut file = Vec::new();
        let mut writer = PcapngWriter::new(&mut file, "lo", LINKTYPE_ETHERNET, 65535).unwrap();
        writer.write_secrets("CLIENT_RANDOM aa bb\n").unwrap();
        let when = UNIX_EPOCH + Duration::new(1_764_078_306, 123_456_789);
        writer
            .write_packet(when, b"\x00\x01\x02\x03\x04", 60, Some("pid=42 comm=curl"))
            .unwrap();
        writer.write_packet(when, b"abcd", 4, None).unwrap();

        let (rest, section) = pcap_parser::parse_pcapng(&file).map(|(r, s)| (r.len(), s)).unwrap();
        assert_eq!(rest, 0);
        let blocks = &section.sections[0].blocks;
        assert!(matches!(blocks[0], Block::SectionHeader(_)));
        let Block::InterfaceDescription(idb) = &blocks[1] else {
            panic!("{:?}", blocks[1])
        };
        assert_eq!(idb.if_tsresol, NANOSECONDS);
        let Block::DecryptionSecrets(dsb) = &blocks[2] else {
            panic!("{:?}", blocks[2])
        };
        assert_eq!(dsb.secrets_type, pcap_parser::pcapng::SecretsType::TlsKeyLog);
        assert_eq!(dsb.data, b"CLIENT_RANDOM aa bb\n");
        let Block::EnhancedPacket(epb) = &blocks[3] else {
            panic!("{:?}", blocks[3])
        };
        assert_eq!(epb.packet_data(), b"\x00\x01\x02\x03\x04");
        assert_eq!(epb.origlen, 60);
        assert_eq!(
            ((epb.ts_high as u64) << 32) | epb.ts_low as u64,
            1_764_078_306_123_456_789
        );
        let comment = epb.options.iter().find_map(|o| match o {
            PcapNGOption { code, value, .. } if code.0 == OPT_COMMENT => Some(value.to_vec()),
            _ => None,
        });
        assert_eq!(comment.as_deref(), Some(&b"pid=42 comm=curl"[..]));
        assert!(matches!(&blocks[4], Block::EnhancedPacket(p) if p.packet_data() == b"abcd"));
    }
}

#[cfg(test)]
mod packet_file_tests {
    use super::*;
    use pcap_parser::pcapng::{Block, PcapNGOption};

    /// An Ethernet/IPv4/TCP frame from 127.0.0.1:`sport` to 127.0.0.1:`dport`.
    fn tcp_frame(sport: u16, dport: u16) -> Vec<u8> {
        let mut frame = vec![0u8; 14];
        frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let mut ip = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1];
        ip[2..4].copy_from_slice(&40u16.to_be_bytes());
        frame.extend_from_slice(&ip);
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&sport.to_be_bytes());
        tcp[2..4].copy_from_slice(&dport.to_be_bytes());
        tcp[12] = 0x50;
        frame.extend_from_slice(&tcp);
        frame
    }

    /// Also: a packet whose owner was unknown when it was captured (a SYN)
    /// is named from its flow when it is written.
    #[test]
    fn packets_are_written_in_wire_order_and_named_late() {
        let mut out = Vec::new();
        let mut file = PacketFile::new(&mut out, "lo", LINKTYPE_ETHERNET, 65535, None).unwrap();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        for (port, micros) in [(1, 10), (3, 30), (2, 20), (4, 40)] {
            let flow = Some(vec![port as u8]);
            file.push(
                start + Duration::from_micros(micros),
                &tcp_frame(port, 443),
                54,
                None,
                flow,
            );
        }
        file.release(true, &mut |flow| (flow[0] != 4).then(|| format!("pid={}", flow[0])))
            .unwrap();
        drop(file);
        let (_, capture) = pcap_parser::parse_pcapng(&out).unwrap();
        let packets: Vec<(u16, Option<String>)> = capture.sections[0]
            .blocks
            .iter()
            .filter_map(|b| match b {
                Block::EnhancedPacket(epb) => Some((
                    u16::from_be_bytes([epb.data[34], epb.data[35]]),
                    epb.options.iter().find_map(|o| match o {
                        // The value as stored, padded to 4 bytes; len is the comment's.
                        PcapNGOption { code, len, value } if code.0 == OPT_COMMENT => {
                            Some(String::from_utf8_lossy(&value[..usize::from(*len)]).into_owned())
                        }
                        _ => None,
                    }),
                )),
                _ => None,
            })
            .collect();
        let named = |port: u16| (port, (port != 4).then(|| format!("pid={port}")));
        assert_eq!(packets, [named(1), named(2), named(3), named(4)]);
    }

    #[test]
    fn filter_keeps_matching_packets_and_secrets_precede_held_packets() {
        let mut out = Vec::new();
        let filter = crate::probe::kernel_filter::compile("tcp port 8443", pcap::Linktype::ETHERNET).unwrap();
        let mut file = PacketFile::new(&mut out, "lo", LINKTYPE_ETHERNET, 65535, Some(filter)).unwrap();
        file.push(
            SystemTime::now(),
            &tcp_frame(40000, 8443),
            54,
            Some("pid=1 comm=curl".into()),
            None,
        );
        file.push(SystemTime::now(), &tcp_frame(40000, 9999), 54, None, None);
        file.write_secrets("CLIENT_RANDOM aa bb\n").unwrap();
        file.release(false, &mut |_| None).unwrap();
        assert_eq!(file.packets_written, 0, "packets are held");
        file.release(true, &mut |_| None).unwrap();
        assert_eq!(file.packets_written, 1, "the filter dropped port 9999");
        drop(file);
        let (_, capture) = pcap_parser::parse_pcapng(&out).unwrap();
        let kinds: Vec<&str> = capture.sections[0]
            .blocks
            .iter()
            .map(|b| match b {
                pcap_parser::pcapng::Block::DecryptionSecrets(_) => "dsb",
                pcap_parser::pcapng::Block::EnhancedPacket(_) => "epb",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["other", "other", "dsb", "epb"]);
        assert!(crate::probe::kernel_filter::compile("tcp port banana", pcap::Linktype::ETHERNET).is_err());
    }
}
