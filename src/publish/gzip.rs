//! One gzip stream made of two parts encoded at different times: the poll's
//! exposition, compressed once per poll and shared by every scrape, and the few
//! lines each scrape appends. The head is a gzip header and deflate blocks ended by
//! a sync flush (byte-aligned, no final block); a scrape adds its tail as stored
//! deflate blocks (the last one final) and the trailer (CRC-32 and size of both
//! parts). Stored, because a tail of a few hundred bytes gains little from
//! compression and a compressor's state costs more to set up than it saves: a
//! scrape only copies its lines and updates a CRC. The result is a single gzip
//! member, so clients that read only one member (many do) get everything.

use std::io::Write as _;

use bytes::Bytes;
use flate2::write::DeflateEncoder;
use flate2::{Compression, Crc};

/// The gzip header: deflate, no name or time, fastest compression, unknown OS.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 255];

/// The most bytes one stored deflate block holds (its length is 16 bits).
const STORED_MAX: usize = 0xffff;

/// One stored deflate block (RFC 1951, 3.2.4), starting on a byte boundary: the
/// header bits BFINAL and BTYPE=00 padded to a byte, LEN, NLEN, the bytes.
fn stored_block(out: &mut Vec<u8>, piece: &[u8], last: bool) {
    let len = u16::try_from(piece.len()).unwrap_or(u16::MAX);
    out.push(u8::from(last));
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(&piece[..usize::from(len)]);
}

/// The compressed poll's part, open for a tail.
#[derive(Debug)]
pub(super) struct Head {
    /// Header and deflate blocks, without a final block or trailer.
    pub(super) bytes: Bytes,
    /// CRC-32 and length of what `bytes` holds uncompressed.
    crc: Crc,
}

impl Head {
    pub(super) fn new(plain: &[u8]) -> Head {
        let mut out = Vec::with_capacity(plain.len() / 4 + HEADER.len());
        out.extend_from_slice(&HEADER);
        let mut enc = DeflateEncoder::new(out, Compression::fast());
        // Writing into a Vec cannot fail; `flush` is a sync flush: every byte so
        // far is in whole blocks, none of them final.
        let _ = enc.write_all(plain);
        let _ = enc.flush();
        let bytes = Bytes::from(std::mem::take(enc.get_mut()));
        // Dropping the encoder finishes the stream into the emptied Vec: discarded.
        drop(enc);
        let mut crc = Crc::new();
        crc.update(plain);
        Head { bytes, crc }
    }

    /// What follows [`Head::bytes`]: `tail` in stored blocks (the last one final),
    /// then the trailer.
    pub(super) fn finish(&self, tail: &[u8]) -> Bytes {
        let blocks = tail.len() / STORED_MAX + 1;
        let mut out = Vec::with_capacity(tail.len() + 5 * blocks + 8);
        let mut pieces = tail.chunks(STORED_MAX).peekable();
        if pieces.peek().is_none() {
            stored_block(&mut out, &[], true);
        }
        while let Some(piece) = pieces.next() {
            stored_block(&mut out, piece, pieces.peek().is_none());
        }
        let mut tail_crc = Crc::new();
        tail_crc.update(tail);
        // The CRC of head then tail, without touching the shared head.
        let mut crc = Crc::new();
        crc.combine(&self.crc);
        crc.combine(&tail_crc);
        out.extend_from_slice(&crc.sum().to_le_bytes());
        // ISIZE: the length modulo 2^32, as `amount` counts it.
        out.extend_from_slice(&crc.amount().to_le_bytes());
        Bytes::from(out)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::io::Read as _;

    /// The first gzip member of `b`, decompressed (what an HTTP client reads).
    pub(in crate::publish) fn gunzip_one_member(b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(b)
            .read_to_end(&mut out)
            .expect("valid gzip");
        out
    }

    #[test]
    fn head_and_tail_make_one_gzip_member() {
        let plain: Vec<u8> = "bindwatch_sockets{state=\"listen\"} 12\n"
            .repeat(3000)
            .into_bytes();
        let long: Vec<u8> = (0..70_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        for (plain, tail) in [
            (
                &plain[..],
                &b"bindwatch_sockets{state=\"listen\"} 12\n# EOF\n"[..],
            ),
            (&[][..], &b"x 1\n"[..]),
            (&plain[..], &[][..]),
            // Longer than one stored block, and exactly one.
            (&plain[..], &long[..]),
            (&plain[..], &long[..STORED_MAX]),
        ] {
            let head = Head::new(plain);
            let end = head.finish(tail);
            let gz = [&head.bytes[..], &end[..]].concat();
            assert_eq!(gunzip_one_member(&gz), [plain, tail].concat());
            // Nothing after the member: a multi-member reader sees the same.
            let mut all = Vec::new();
            flate2::read::MultiGzDecoder::new(&gz[..])
                .read_to_end(&mut all)
                .expect("valid gzip");
            assert_eq!(all, [plain, tail].concat());
        }
    }

    #[test]
    fn a_corrupt_trailer_is_refused() {
        // The trailer is checked by readers: a wrong CRC could not pass unseen.
        let head = Head::new(b"a 1\n");
        let mut end = head.finish(b"b 2\n").to_vec();
        let n = end.len();
        end[n - 8] ^= 1;
        let gz = [&head.bytes[..], &end[..]].concat();
        let mut out = Vec::new();
        assert!(flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut out)
            .is_err());
    }
}
