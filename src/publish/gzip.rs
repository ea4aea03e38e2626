//! One gzip stream made of two parts compressed at different times: the poll's
//! exposition, compressed once per poll and shared by every scrape, and the few
//! lines each scrape appends. The head is a gzip header and deflate blocks ended by
//! a sync flush (byte-aligned, no final block); a scrape adds its tail's deflate
//! blocks (the last one final) and the trailer (CRC-32 and size of both parts). A
//! deflate stream may continue with blocks from a fresh compressor: their
//! back-references stay within the tail. The result is a single gzip member, so
//! clients that read only one member (many do) get everything.

use std::io::Write as _;

use bytes::Bytes;
use flate2::write::DeflateEncoder;
use flate2::{Compression, Crc};

/// The gzip header: deflate, no name or time, fastest compression, unknown OS.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 255];

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

    /// What follows [`Head::bytes`]: `tail` compressed, a final block, the trailer.
    pub(super) fn finish(&self, tail: &[u8]) -> Bytes {
        let mut enc = DeflateEncoder::new(Vec::with_capacity(tail.len() + 16), Compression::fast());
        let _ = enc.write_all(tail);
        let mut out = enc.finish().unwrap_or_default();
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
mod tests {
    use super::*;
    use std::io::Read as _;

    fn gunzip_one_member(b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(b)
            .read_to_end(&mut out)
            .expect("valid gzip");
        out
    }

    #[test]
    fn head_and_tail_make_one_gzip_member() {
        // Repetitive input, so the tail could refer back into the head if it were
        // (wrongly) compressed as a continuation.
        let plain: Vec<u8> = "bindwatch_sockets{state=\"listen\"} 12\n"
            .repeat(3000)
            .into_bytes();
        for (plain, tail) in [
            (
                &plain[..],
                &b"bindwatch_sockets{state=\"listen\"} 12\n# EOF\n"[..],
            ),
            (&[][..], &b"x 1\n"[..]),
            (&plain[..], &[][..]),
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
