//! HPACK (RFC 7541): the header blocks of one direction of an HTTP/2
//! connection, decoded against that direction's dynamic table.
//!
//! A capture may start in the middle of a connection, after entries went
//! into the table. The table lists its entries newest first, and an index
//! counts from the newest, so the entries inserted since the capture
//! started are always at the indices the sender uses: those decode, and an
//! index past them is shown as unknown rather than guessed. Keeping more
//! entries than the sender (evicting late) is harmless for the same reason,
//! so the table only has to bound its memory; evicting early makes entries
//! unknown, never wrong. What would make them wrong is a block decoded in
//! part: its later insertions are missing, so the table is cleared.

use std::collections::VecDeque;

use super::huffman;

/// RFC 7541 Appendix A.
const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// The table size a connection starts with (SETTINGS_HEADER_TABLE_SIZE).
const INITIAL_TABLE_SIZE: usize = 4096;
/// The most table this decoder keeps, whatever the sender announces.
const MAX_TABLE_SIZE: usize = 64 * 1024;
/// RFC 7541 4.1: an entry's size is its name and value plus this.
const ENTRY_OVERHEAD: usize = 32;
/// Decoded header bytes kept of one block: an index costs a byte and may
/// repeat a large entry, so what a block decodes to is bounded here.
const SHOWN_BLOCK_BYTES: usize = 64 * 1024;
const SHOWN_FIELDS: usize = 256;
/// Integers larger than this are no length or index a block can hold.
const MAX_INTEGER: usize = 1 << 24;

/// The name of a field whose name was in an entry the decoder never saw.
pub const UNKNOWN_NAME: &str = "(unknown)";

/// One header block, decoded.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HeaderBlock {
    /// Names and values in the order sent.
    pub fields: Vec<(String, String)>,
    /// Fields that referred to table entries from before the capture.
    pub unknown: usize,
    /// Fields past SHOWN_BLOCK_BYTES or SHOWN_FIELDS.
    pub omitted: usize,
    /// Why decoding stopped before the end of the block.
    pub error: Option<&'static str>,
}

impl HeaderBlock {
    /// What the reader should know about the fields shown.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.unknown > 0 {
            notes.push(format!(
                "{} header field(s) refer to HPACK table entries sent before the capture began",
                self.unknown
            ));
        }
        if self.omitted > 0 {
            notes.push(format!("{} header field(s) not shown", self.omitted));
        }
        if let Some(error) = self.error {
            notes.push(format!("headers could not be decoded to the end: {error}"));
        }
        notes
    }

    /// The value of the first field named `name`.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

struct Entry {
    /// None when the name was itself an unknown entry's.
    name: Option<Box<[u8]>>,
    value: Box<[u8]>,
}

impl Entry {
    fn size(&self) -> usize {
        self.name.as_ref().map_or(0, |name| name.len()) + self.value.len() + ENTRY_OVERHEAD
    }
}

/// The decoder of one direction's header blocks.
pub struct HeaderDecoder {
    /// Newest first.
    table: VecDeque<Entry>,
    size: usize,
    max_size: usize,
}

impl Default for HeaderDecoder {
    fn default() -> HeaderDecoder {
        HeaderDecoder {
            table: VecDeque::new(),
            size: 0,
            max_size: INITIAL_TABLE_SIZE,
        }
    }
}

/// A field's name or value as found: bytes, or an entry never seen.
enum Found {
    Bytes(Vec<u8>),
    Unknown,
}

impl HeaderDecoder {
    /// Decodes one complete block (a HEADERS frame's fragment and those of
    /// its CONTINUATION frames).
    pub fn decode(&mut self, block: &[u8]) -> HeaderBlock {
        let mut decoded = HeaderBlock::default();
        let mut shown_bytes = 0usize;
        let mut at = 0;
        while at < block.len() {
            let field = match self.field(block, &mut at) {
                Ok(field) => field,
                Err(error) => {
                    decoded.error = Some(error);
                    // Insertions later in the block are lost: the entries
                    // left would sit at the wrong indices.
                    self.forget();
                    break;
                }
            };
            let Some((name, value)) = field else { continue };
            let (name, value) = match (name, value) {
                (Found::Bytes(name), Found::Bytes(value)) => (String::from_utf8_lossy(&name).into_owned(), value),
                (Found::Unknown, Found::Bytes(value)) => (UNKNOWN_NAME.to_string(), value),
                (_, Found::Unknown) => {
                    decoded.unknown += 1;
                    continue;
                }
            };
            shown_bytes = shown_bytes.saturating_add(name.len() + value.len());
            if shown_bytes > SHOWN_BLOCK_BYTES || decoded.fields.len() == SHOWN_FIELDS {
                decoded.omitted += 1;
                continue;
            }
            if name == UNKNOWN_NAME {
                decoded.unknown += 1;
            }
            decoded
                .fields
                .push((name, String::from_utf8_lossy(&value).into_owned()));
        }
        decoded
    }

    /// Forgets every entry: what follows decodes as after a capture that
    /// started mid-connection.
    pub fn forget(&mut self) {
        self.table.clear();
        self.size = 0;
    }

    /// The representation at `at`: a field, or None for a table size update.
    fn field(&mut self, block: &[u8], at: &mut usize) -> Result<Option<(Found, Found)>, &'static str> {
        let first = block[*at];
        if first & 0x80 != 0 {
            let index = integer(block, at, 7)?;
            return Ok(Some(self.entry(index)?));
        }
        if first & 0xe0 == 0x20 {
            let size = integer(block, at, 5)?;
            self.max_size = size.min(MAX_TABLE_SIZE);
            self.evict(0);
            return Ok(None);
        }
        // Literal: with incremental indexing (01), without (0000), never
        // indexed (0001).
        let indexing = first & 0xc0 == 0x40;
        let name_index = integer(block, at, if indexing { 6 } else { 4 })?;
        let name = if name_index == 0 {
            Found::Bytes(self.string(block, at)?)
        } else {
            self.entry(name_index)?.0
        };
        let value = self.string(block, at)?;
        if indexing {
            let entry = Entry {
                name: match &name {
                    Found::Bytes(name) => Some(name.clone().into_boxed_slice()),
                    Found::Unknown => None,
                },
                value: value.clone().into_boxed_slice(),
            };
            self.insert(entry);
        }
        Ok(Some((name, Found::Bytes(value))))
    }

    /// The name and value at `index` (1-based, static then dynamic).
    fn entry(&self, index: usize) -> Result<(Found, Found), &'static str> {
        if index == 0 {
            return Err("index 0");
        }
        if let Some((name, value)) = STATIC_TABLE.get(index - 1) {
            return Ok((
                Found::Bytes(name.as_bytes().to_vec()),
                Found::Bytes(value.as_bytes().to_vec()),
            ));
        }
        Ok(match self.table.get(index - 1 - STATIC_TABLE.len()) {
            Some(entry) => (
                entry
                    .name
                    .as_ref()
                    .map_or(Found::Unknown, |name| Found::Bytes(name.to_vec())),
                Found::Bytes(entry.value.to_vec()),
            ),
            None => (Found::Unknown, Found::Unknown),
        })
    }

    fn insert(&mut self, entry: Entry) {
        let size = entry.size();
        self.evict(size);
        // An entry larger than the table empties it and is not kept (RFC 7541 4.4).
        if size <= self.max_size {
            self.size += size;
            self.table.push_front(entry);
        }
    }

    /// Evicts the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            let Some(oldest) = self.table.pop_back() else { break };
            self.size -= oldest.size();
        }
    }

    /// A string literal at `at`: its length, then its bytes, Huffman-coded
    /// when the length's first bit says so.
    fn string(&mut self, block: &[u8], at: &mut usize) -> Result<Vec<u8>, &'static str> {
        let coded = *block.get(*at).ok_or("a block ends before a string")? & 0x80 != 0;
        let length = integer(block, at, 7)?;
        let end = at
            .checked_add(length)
            .filter(|&end| end <= block.len())
            .ok_or("a string runs past its block")?;
        let bytes = &block[*at..end];
        *at = end;
        if !coded {
            return Ok(bytes.to_vec());
        }
        let mut decoded = Vec::with_capacity(bytes.len() * 8 / 5);
        huffman::decode(bytes, &mut decoded)?;
        Ok(decoded)
    }
}

/// An integer with a prefix of `prefix_bits` in the byte at `at` (RFC 7541 5.1).
fn integer(block: &[u8], at: &mut usize, prefix_bits: u32) -> Result<usize, &'static str> {
    let mask = (1u8 << prefix_bits) - 1;
    let first = block[*at] & mask;
    *at += 1;
    if first < mask {
        return Ok(usize::from(first));
    }
    let mut value = usize::from(mask);
    let mut shift = 0u32;
    loop {
        let byte = *block.get(*at).ok_or("a block ends inside an integer")?;
        *at += 1;
        value += usize::from(byte & 0x7f) << shift;
        // Zero continuations would otherwise shift without end.
        if value > MAX_INTEGER || shift > 21 {
            return Err("an integer is out of range");
        }
        if byte & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loona_hpack::Encoder;

    fn pairs(block: &HeaderBlock) -> Vec<(&str, &str)> {
        block.fields.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect()
    }

    #[test]
    fn every_static_entry_decodes_as_an_encoder_indexes_it() {
        let mut encoder = Encoder::new();
        let mut decoder = HeaderDecoder::default();
        for (name, value) in STATIC_TABLE.iter().filter(|(_, value)| !value.is_empty()) {
            let block = encoder.encode([(name.as_bytes(), value.as_bytes())]);
            assert_eq!(block.len(), 1, "{name}: {value} is not indexed whole");
            assert_eq!(pairs(&decoder.decode(&block)), [(*name, *value)]);
        }
        for (name, _) in &STATIC_TABLE {
            let block = encoder.encode([(name.as_bytes(), b"x-value".as_slice())]);
            assert_eq!(pairs(&decoder.decode(&block)), [(*name, "x-value")]);
        }
    }

    /// RFC 7541 C.4: three requests with Huffman coding and a dynamic table.
    #[test]
    fn the_rfc_examples_decode() {
        let mut decoder = HeaderDecoder::default();
        let first = hex::decode("828684418cf1e3c2e5f23a6ba0ab90f4ff").unwrap();
        let second = hex::decode("828684be5886a8eb10649cbf").unwrap();
        let third = hex::decode("828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf").unwrap();
        assert_eq!(
            pairs(&decoder.decode(&first)),
            [
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com")
            ]
        );
        assert_eq!(
            pairs(&decoder.decode(&second))[3..],
            [(":authority", "www.example.com"), ("cache-control", "no-cache")]
        );
        let third = decoder.decode(&third);
        assert_eq!(
            pairs(&third)[2..],
            [
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value")
            ]
        );
        assert_eq!(third.unknown + third.omitted, 0);
        assert_eq!(decoder.size, 164);
    }

    #[test]
    fn entries_from_before_the_capture_are_unknown_and_later_ones_decode() {
        let mut encoder = Encoder::new();
        let mut from_start = HeaderDecoder::default();
        let mut late = HeaderDecoder::default();
        let trace = |value: &'static [u8]| (b"x-trace".as_slice(), value);
        // The first block went by before the capture.
        from_start.decode(&encoder.encode([trace(b"one"), (b"x-user", b"ann")]));
        let second = encoder.encode([trace(b"two"), (b"x-user", b"ann"), (b"x-new", b"fresh")]);
        assert_eq!(
            pairs(&from_start.decode(&second)),
            [("x-trace", "two"), ("x-user", "ann"), ("x-new", "fresh")]
        );
        // x-trace's name and x-user's entry are from the first block.
        let seen = late.decode(&second);
        assert_eq!(pairs(&seen), [(UNKNOWN_NAME, "two"), ("x-new", "fresh")]);
        assert_eq!(seen.unknown, 2);
        assert!(seen.notes()[0].contains("before the capture"));
        // Entries inserted since the capture began decode, name or value.
        let third = late.decode(&encoder.encode([(b"x-new".as_slice(), b"fresh".as_slice()), trace(b"two")]));
        assert_eq!(pairs(&third), [("x-new", "fresh"), (UNKNOWN_NAME, "two")]);
    }

    #[test]
    fn a_block_that_stops_short_clears_the_table() {
        let mut encoder = Encoder::new();
        let mut decoder = HeaderDecoder::default();
        decoder.decode(&encoder.encode([(b"x-a".as_slice(), b"1".as_slice())]));
        assert_eq!(decoder.table.len(), 1);
        let mut cut = encoder.encode([(b"x-b".as_slice(), b"2".as_slice())]);
        cut.pop();
        let decoded = decoder.decode(&cut);
        assert!(decoded.error.is_some());
        assert!(decoder.table.is_empty());
    }

    #[test]
    fn repeated_large_entries_decode_to_a_bounded_list() {
        let mut block = vec![0x40, 4];
        block.extend_from_slice(b"name");
        // A 2,000-byte value: 127 in the prefix, then 1,873 in two bytes.
        block.extend_from_slice(&[0x7f, 0x80 | (1873 & 0x7f) as u8, (1873 >> 7) as u8]);
        block.extend(std::iter::repeat_n(b'v', 2000));
        block.extend(std::iter::repeat_n(0x80 | 62, 10_000));
        let decoded = HeaderDecoder::default().decode(&block);
        assert_eq!(decoded.error, None);
        assert!(decoded.fields.len() < 40);
        assert!(decoded.omitted > 9_900);
    }

    #[test]
    fn integers_past_any_block_are_refused() {
        for block in [
            [0xff, 0xff, 0xff, 0xff, 0xff, 0x7f].as_slice(),
            &[0xff; 64],
            &[0xff, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80],
        ] {
            assert_eq!(
                HeaderDecoder::default().decode(block).error,
                Some("an integer is out of range")
            );
        }
    }
}
