//! From ring buffer records to events: decoding the C layout, and joining the
//! records of a call the kernel had to split.

use foldhash::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime};

use crate::probe::RawDataHeader;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The process wrote the bytes.
    Egress,
    /// The process read the bytes.
    Ingress,
}

/// The two ends of a TCP connection, as the traced process sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocketPair {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// A task's name as the kernel gives it: at most 15 bytes, NUL-padded. Kept
/// inline, so that events carry it without allocating.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Comm([u8; 16]);

impl Comm {
    pub fn from_kernel(comm: &[i8]) -> Comm {
        Comm::from_bytes(comm.iter().map(|&c| c as u8))
    }

    /// The first 15 bytes, NUL-terminated as the kernel keeps them.
    fn from_bytes(name: impl Iterator<Item = u8>) -> Comm {
        let mut bytes = [0; 16];
        for (slot, b) in bytes.iter_mut().zip(name.take(15)) {
            *slot = b;
        }
        Comm(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        let len = self.0.iter().position(|&b| b == 0).unwrap_or(self.0.len());
        &self.0[..len]
    }
}

impl From<&str> for Comm {
    fn from(name: &str) -> Comm {
        Comm::from_bytes(name.bytes())
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// Who moved the bytes, on which connection, and in which direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventMeta {
    pub timestamp: SystemTime,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub comm: Comm,
    pub fd: i32,
    /// The library's session object; with pid, it names the TLS session.
    pub conn_id: u64,
    pub direction: Direction,
    pub sockets: Option<SocketPair>,
}

/// One read or write call, whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataEvent<'a> {
    pub meta: EventMeta,
    pub data: EventData<'a>,
}

/// A call's bytes: still in the ring buffer when one record carried them
/// all, so that whoever keeps them copies them once, where they are needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventData<'a> {
    Record(&'a [u8]),
    Joined(Vec<u8>),
}

impl EventData<'_> {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            EventData::Record(bytes) => bytes,
            EventData::Joined(bytes) => bytes,
        }
    }

    /// The bytes in a buffer of their own, taken from `pool` when they are
    /// still in the ring buffer.
    pub fn into_vec(self, pool: &mut BufferPool) -> Vec<u8> {
        match self {
            EventData::Record(bytes) => {
                let mut buffer = pool.take();
                buffer.extend_from_slice(bytes);
                buffer
            }
            EventData::Joined(buffer) => buffer,
        }
    }

    /// Done with the bytes: a buffer goes back to `pool`.
    pub fn release(self, pool: &mut BufferPool) {
        if let EventData::Joined(buffer) = self {
            pool.recycle(buffer);
        }
    }
}

/// Buffers of events already written out, for the next ones.
#[derive(Default)]
pub struct BufferPool {
    spare: Vec<Vec<u8>>,
    /// The spare buffers' capacity, in bytes.
    spare_bytes: usize,
}

/// Spare buffers kept: enough for a burst, bounded in memory.
const SPARE_BUFFERS: usize = 64;
const SPARE_BYTES: usize = 8 << 20;
/// Buffers larger than this are not kept for reuse.
const RECYCLED_CAPACITY: usize = 1 << 20;

impl BufferPool {
    pub fn take(&mut self) -> Vec<u8> {
        let buffer = self.spare.pop().unwrap_or_default();
        self.spare_bytes -= buffer.capacity();
        buffer
    }

    /// Takes back a buffer that has been written out.
    pub fn recycle(&mut self, mut buffer: Vec<u8>) {
        // The rare huge buffer (a large HTTP body) is given back to the allocator.
        let capacity = buffer.capacity();
        if capacity > 0
            && capacity <= RECYCLED_CAPACITY
            && self.spare.len() < SPARE_BUFFERS
            && self.spare_bytes + capacity <= SPARE_BYTES
        {
            buffer.clear();
            self.spare_bytes += capacity;
            self.spare.push(buffer);
        }
    }
}

/// One ring buffer record: part of a call's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk<'a> {
    pub meta: EventMeta,
    pub total_len: u64,
    pub offset: u64,
    pub data: &'a [u8],
}

const HEADER_LEN: usize = std::mem::size_of::<RawDataHeader>();

/// Decodes records into events without allocating.
pub struct RecordDecoder {
    /// The header, copied out of the record to be read aligned.
    header: RawDataHeader,
    /// Wall-clock time at monotonic zero, for bpf_ktime_get_ns() stamps.
    boot_time: SystemTime,
}

impl Default for RecordDecoder {
    fn default() -> Self {
        RecordDecoder {
            header: RawDataHeader::default(),
            boot_time: monotonic_epoch(),
        }
    }
}

impl RecordDecoder {
    /// The wall-clock time of a bpf_ktime_get_ns() stamp.
    pub fn wall_clock(&self, monotonic_ns: u64) -> SystemTime {
        self.boot_time + Duration::from_nanos(monotonic_ns)
    }

    /// Returns None for a record too short to hold its own header.
    pub fn decode<'a>(&mut self, record: &'a [u8]) -> Option<Chunk<'a>> {
        plain::copy_from_bytes(&mut self.header, record).ok()?;
        let raw = &self.header;
        // The record may be reserved for more payload than it holds.
        let data = record.get(HEADER_LEN..HEADER_LEN + raw.data_len as usize)?;
        Some(Chunk {
            meta: EventMeta {
                timestamp: self.wall_clock(raw.timestamp_ns),
                pid: raw.pid,
                tid: raw.tid,
                uid: raw.uid,
                comm: Comm::from_kernel(&raw.comm),
                fd: raw.fd,
                conn_id: raw.conn_id,
                direction: if raw.direction == 0 {
                    Direction::Egress
                } else {
                    Direction::Ingress
                },
                sockets: socket_pair(
                    raw.conn.family,
                    raw.conn.local_addr,
                    raw.conn.local_port,
                    raw.conn.remote_addr,
                    raw.conn.remote_port,
                ),
            },
            total_len: raw.total_len,
            offset: raw.chunk_offset,
            data,
        })
    }
}

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

fn socket_pair(
    family: u16,
    local: [u8; 16],
    local_port: u16,
    remote: [u8; 16],
    remote_port: u16,
) -> Option<SocketPair> {
    let ip = |bytes: [u8; 16]| -> Option<IpAddr> {
        match family {
            AF_INET => Some(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).into()),
            // Dual-stack sockets carry IPv4 peers as ::ffff:a.b.c.d.
            AF_INET6 => Some(Ipv6Addr::from(bytes).to_canonical()),
            _ => None,
        }
    };
    Some(SocketPair {
        local: SocketAddr::new(ip(local)?, local_port),
        remote: SocketAddr::new(ip(remote)?, remote_port),
    })
}

/// Wall-clock time at which CLOCK_MONOTONIC (bpf_ktime_get_ns) was zero.
pub fn monotonic_epoch() -> SystemTime {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let since_boot = Duration::new(now.tv_sec as u64, now.tv_nsec as u32);
    SystemTime::now() - since_boot
}

/// Joins the records of each call. The kernel sends a call's records back to
/// back from one thread, so a record that does not continue its thread's
/// call means records were lost in between. A call larger than JOIN_LIMIT
/// is handed on in pieces of that size: what is held stays bounded
/// whatever one call moves.
#[derive(Default)]
pub struct Reassembler {
    partial: HashMap<u32, Partial>,
    /// Calls abandoned because a record in the middle never arrived.
    pub broken_calls: u64,
}

/// A call's bytes not handed on yet.
struct Partial {
    meta: EventMeta,
    data: Vec<u8>,
    /// The offset in the call of the next record.
    next: u64,
}

pub const JOIN_LIMIT: usize = 256 * 1024;

impl Reassembler {
    /// A call's bytes once all its records are in; a call of one record
    /// leaves its bytes in the ring buffer.
    pub fn push<'a>(&mut self, chunk: Chunk<'a>, pool: &mut BufferPool) -> Option<DataEvent<'a>> {
        if chunk.offset == 0 && chunk.data.len() as u64 == chunk.total_len {
            self.abandon(chunk.meta.tid, pool);
            return Some(DataEvent {
                meta: chunk.meta,
                data: EventData::Record(chunk.data),
            });
        }
        let tid = chunk.meta.tid;
        let size = chunk.data.len() as u64;
        if chunk.offset == 0 {
            self.abandon(tid, pool);
            let mut data = pool.take();
            data.reserve(chunk.total_len.min(JOIN_LIMIT as u64) as usize);
            data.extend_from_slice(chunk.data);
            let (meta, next) = (chunk.meta, size);
            self.partial.insert(tid, Partial { meta, data, next });
            return None;
        }
        let Some(partial) = self.partial.get_mut(&tid) else {
            self.broken_calls += 1;
            return None;
        };
        if partial.next != chunk.offset || partial.meta.conn_id != chunk.meta.conn_id {
            self.abandon(tid, pool);
            return None;
        }
        partial.data.extend_from_slice(chunk.data);
        partial.next += size;
        if partial.next >= chunk.total_len {
            let Partial { meta, data, .. } = self.partial.remove(&tid)?;
            return Some(DataEvent {
                meta,
                data: EventData::Joined(data),
            });
        }
        if partial.data.len() >= JOIN_LIMIT {
            let data = std::mem::replace(&mut partial.data, pool.take());
            return Some(DataEvent {
                meta: partial.meta,
                data: EventData::Joined(data),
            });
        }
        None
    }

    /// Drops the thread's unfinished call, if it has one, counting it broken.
    fn abandon(&mut self, tid: u32, pool: &mut BufferPool) {
        if let Some(abandoned) = self.partial.remove(&tid) {
            self.broken_calls += 1;
            pool.recycle(abandoned.data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(tid: u32, conn_id: u64) -> EventMeta {
        EventMeta {
            timestamp: SystemTime::UNIX_EPOCH,
            pid: 1,
            tid,
            uid: 0,
            comm: "t".into(),
            fd: 3,
            conn_id,
            direction: Direction::Egress,
            sockets: None,
        }
    }

    fn chunk(tid: u32, total: u64, offset: u64, data: &[u8]) -> Chunk<'_> {
        Chunk {
            meta: meta(tid, 9),
            total_len: total,
            offset,
            data,
        }
    }

    #[test]
    fn single_record_call_stays_in_the_record() {
        let (mut r, mut pool) = (Reassembler::default(), BufferPool::default());
        let record = b"hello";
        let event = r.push(chunk(1, 5, 0, record), &mut pool).unwrap();
        assert!(matches!(event.data, EventData::Record(bytes) if std::ptr::eq(bytes, record)));
        // Copied out, into a recycled buffer.
        pool.recycle(Vec::with_capacity(64));
        let owned = event.data.into_vec(&mut pool);
        assert_eq!((owned.as_slice(), owned.capacity()), (&b"hello"[..], 64));
    }

    #[test]
    fn interleaved_threads_are_joined_separately() {
        let (mut r, mut pool) = (Reassembler::default(), BufferPool::default());
        assert!(r.push(chunk(1, 6, 0, b"abc"), &mut pool).is_none());
        assert!(r.push(chunk(2, 4, 0, b"wx"), &mut pool).is_none());
        let joined = |event: Option<DataEvent>| event.unwrap().data.as_slice().to_vec();
        assert_eq!(joined(r.push(chunk(1, 6, 3, b"def"), &mut pool)), b"abcdef");
        assert_eq!(joined(r.push(chunk(2, 4, 2, b"yz"), &mut pool)), b"wxyz");
        assert_eq!(r.broken_calls, 0);
    }

    #[test]
    fn a_huge_call_is_handed_on_in_bounded_pieces() {
        let (mut r, mut pool) = (Reassembler::default(), BufferPool::default());
        let record = vec![b'x'; 16 * 1024];
        let total = 4 * JOIN_LIMIT as u64;
        let mut pieces = Vec::new();
        for offset in (0..total).step_by(record.len()) {
            if let Some(event) = r.push(chunk(1, total, offset, &record), &mut pool) {
                pieces.push(event.data.as_slice().len());
            }
        }
        assert_eq!(pieces, [JOIN_LIMIT; 4]);
        assert_eq!(r.broken_calls, 0);
    }

    #[test]
    fn a_gap_abandons_the_call_and_is_counted() {
        let (mut r, mut pool) = (Reassembler::default(), BufferPool::default());
        assert!(r.push(chunk(1, 9, 0, b"abc"), &mut pool).is_none());
        assert!(r.push(chunk(1, 9, 6, b"ghi"), &mut pool).is_none());
        assert_eq!(r.broken_calls, 1);
        // A call whose first record was lost is counted too.
        assert!(r.push(chunk(3, 9, 3, b"def"), &mut pool).is_none());
        assert_eq!(r.broken_calls, 2);
        // The next call on the thread is unaffected.
        let next = r.push(chunk(1, 2, 0, b"ok"), &mut pool).unwrap();
        assert_eq!(next.data.as_slice(), b"ok");
    }

    #[test]
    fn decodes_the_c_layout() {
        let mut raw = RawDataHeader {
            pid: 42,
            tid: 43,
            fd: 7,
            direction: 1,
            data_len: 3,
            total_len: 3,
            ..Default::default()
        };
        raw.conn.family = AF_INET;
        raw.conn.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        raw.conn.local_port = 8443;
        raw.conn.remote_addr[..4].copy_from_slice(&[127, 0, 0, 2]);
        raw.conn.remote_port = 50000;
        raw.comm[..4].copy_from_slice(&[b'c' as i8, b'u' as i8, b'r' as i8, b'l' as i8]);
        // SAFETY: RawDataHeader is plain data.
        let mut record = unsafe { plain::as_bytes(&raw) }.to_vec();
        // Reserved for 64 bytes of payload, holding 3.
        record.extend_from_slice(b"GET");
        record.resize(HEADER_LEN + 64, 0xaa);
        let chunk = RecordDecoder::default().decode(&record).unwrap();
        assert_eq!(chunk.data, b"GET");
        assert_eq!(chunk.meta.comm.to_string(), "curl");
        assert_eq!(chunk.meta.direction, Direction::Ingress);
        let pair = chunk.meta.sockets.unwrap();
        assert_eq!(pair.local, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(pair.remote, "127.0.0.2:50000".parse().unwrap());
        assert!(RecordDecoder::default().decode(&record[..HEADER_LEN - 1]).is_none());
    }
}
