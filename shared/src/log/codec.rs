//! The canonical binary primitives of the log: big-endian fixed-width integers, `u16`-length
//! strings, raw 32-byte hashes. One value has exactly one encoding; the reader refuses anything
//! else (short input, bad UTF-8, invalid ids), and never panics on any bytes.

use crate::bucket::Bucket;
use crate::id::{BatchId, IdError};
use crate::money::Money;

use super::Hash;

/// Why bytes did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended inside a value.
    #[error("input ends inside {what}")]
    Short {
        /// What was being read.
        what: &'static str,
    },
    /// Bytes left over after a value that should fill its span.
    #[error("{count} unexpected bytes after {what}")]
    Trailing {
        /// What was read.
        what: &'static str,
        /// How many bytes were left.
        count: usize,
    },
    /// A string is not UTF-8.
    #[error("{what} is not UTF-8")]
    Utf8 {
        /// Which string.
        what: &'static str,
    },
    /// An id failed validation.
    #[error(transparent)]
    Id(#[from] IdError),
    /// An enumeration tag or other value is outside its domain.
    #[error("{what}: {detail}")]
    Invalid {
        /// Which field.
        what: &'static str,
        /// Why.
        detail: String,
    },
}

/// Appends canonical bytes to a buffer.
#[derive(Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Writer {
        Writer::default()
    }

    /// The bytes written.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    /// The bytes written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Forgets what was written, keeping the buffer (to reuse it).
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True before anything is written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// One byte.
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    /// Big-endian `u16`.
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    /// Big-endian `u32`.
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    /// Big-endian `u64`.
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    /// Big-endian two's-complement `i64`.
    pub fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    /// Money as `i64` micros.
    pub fn money(&mut self, v: Money) {
        self.i64(v.micros());
    }
    /// Raw bytes, no length.
    pub fn raw(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }
    /// A 32-byte hash, raw.
    pub fn hash(&mut self, v: &Hash) {
        self.raw(v);
    }
    /// A batch id: 16 raw bytes.
    pub fn batch(&mut self, v: &BatchId) {
        self.raw(&v.0);
    }
    /// A string: `u16` byte length, then UTF-8. Every string the log holds is at most 255 bytes
    /// (ids are validated before they get here).
    pub fn str(&mut self, v: &str) {
        // Ids are at most 255 bytes (checked by their constructors), far below u16::MAX.
        let len = u16::try_from(v.len()).unwrap_or(u16::MAX);
        self.u16(len);
        self.raw(&v.as_bytes()[..usize::from(len)]);
    }
    /// A bucket: `0x00` for lifetime; `0x01`, `i16` year, `u8` month, `u8` day for a day.
    pub fn bucket(&mut self, v: &Bucket) {
        match v {
            Bucket::Lifetime => self.u8(0),
            Bucket::Day(d) => {
                self.u8(1);
                self.buf.extend_from_slice(&d.year().to_be_bytes());
                // jiff keeps months in 1..=12 and days in 1..=31.
                self.u8(d.month().unsigned_abs());
                self.u8(d.day().unsigned_abs());
            }
        }
    }
}

/// Reads canonical bytes from a slice, front to back.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Fails unless everything was consumed.
    pub fn finish(&self, what: &'static str) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::Trailing { what, count }),
        }
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.buf.len())
            .ok_or(DecodeError::Short { what })?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    /// One byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }
    /// Big-endian `u16`.
    pub fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }
    /// Big-endian `u32`.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }
    /// Big-endian `u64`.
    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }
    /// Big-endian `i64`.
    pub fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }
    /// Money as `i64` micros.
    pub fn money(&mut self, what: &'static str) -> Result<Money, DecodeError> {
        Ok(Money::from_micros(self.i64(what)?))
    }
    /// Money that must not be negative.
    pub fn money_nonneg(&mut self, what: &'static str) -> Result<Money, DecodeError> {
        let m = self.money(what)?;
        if m.is_negative() {
            return Err(DecodeError::Invalid {
                what,
                detail: format!("negative amount {m}"),
            });
        }
        Ok(m)
    }
    /// A 32-byte hash.
    pub fn hash(&mut self, what: &'static str) -> Result<Hash, DecodeError> {
        self.array(what)
    }
    /// A 16-byte batch id.
    pub fn batch(&mut self, what: &'static str) -> Result<BatchId, DecodeError> {
        Ok(BatchId(self.array(what)?))
    }
    /// A `u16`-length UTF-8 string, borrowed.
    pub fn str(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        let len = self.u16(what)?;
        let bytes = self.take(usize::from(len), what)?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::Utf8 { what })
    }
    /// A string parsed into an id type.
    pub fn id<T>(&mut self, what: &'static str) -> Result<T, DecodeError>
    where
        T: std::str::FromStr<Err = IdError>,
    {
        Ok(self.str(what)?.parse()?)
    }
    /// A bucket.
    pub fn bucket(&mut self, what: &'static str) -> Result<Bucket, DecodeError> {
        match self.u8(what)? {
            0 => Ok(Bucket::Lifetime),
            1 => {
                let year = i16::from_be_bytes(self.array(what)?);
                let month = self.u8(what)?;
                let day = self.u8(what)?;
                let invalid = || DecodeError::Invalid {
                    what,
                    detail: format!("no such date {year}-{month}-{day}"),
                };
                let month = i8::try_from(month).map_err(|_| invalid())?;
                let day = i8::try_from(day).map_err(|_| invalid())?;
                // Years 1 to 9999: no budget day falls outside them (LOG_FORMAT.md §1).
                if !(1..=9999).contains(&year) {
                    return Err(invalid());
                }
                jiff::civil::Date::new(year, month, day)
                    .map(Bucket::Day)
                    .map_err(|_| invalid())
            }
            tag => Err(DecodeError::Invalid {
                what,
                detail: format!("unknown bucket tag {tag}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use jiff::civil::date;

    use super::*;

    #[test]
    fn primitives_round_trip_big_endian() {
        let mut w = Writer::new();
        w.u8(7);
        w.u16(0x0102);
        w.u32(0x0304_0506);
        w.u64(0x0708_090a_0b0c_0d0e);
        w.i64(-2);
        w.str("adx");
        w.bucket(&Bucket::Lifetime);
        w.bucket(&Bucket::Day(date(2026, 3, 8)));
        let bytes = w.into_bytes();
        assert_eq!(
            hex::encode(&bytes),
            concat!(
                "07",
                "0102",
                "03040506",
                "0708090a0b0c0d0e",
                "fffffffffffffffe",
                "0003616478",
                "00",
                "01",
                "07ea",
                "03",
                "08"
            )
        );
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8("a"), Ok(7));
        assert_eq!(r.u16("b"), Ok(0x0102));
        assert_eq!(r.u32("c"), Ok(0x0304_0506));
        assert_eq!(r.u64("d"), Ok(0x0708_090a_0b0c_0d0e));
        assert_eq!(r.i64("e"), Ok(-2));
        assert_eq!(r.str("f"), Ok("adx"));
        assert_eq!(r.bucket("g"), Ok(Bucket::Lifetime));
        assert_eq!(r.bucket("h"), Ok(Bucket::Day(date(2026, 3, 8))));
        assert_eq!(r.finish("all"), Ok(()));
    }

    #[test]
    fn bad_bytes_are_errors() {
        assert_eq!(
            Reader::new(&[0, 1]).u32("x"),
            Err(DecodeError::Short { what: "x" })
        );
        assert_eq!(
            Reader::new(&[0, 5, b'a']).str("s"),
            Err(DecodeError::Short { what: "s" })
        );
        assert_eq!(
            Reader::new(&[0, 1, 0xff]).str("s"),
            Err(DecodeError::Utf8 { what: "s" })
        );
        assert!(Reader::new(&[1, 0x07, 0xea, 2, 30]).bucket("b").is_err()); // 30 February
        assert!(Reader::new(&[2]).bucket("b").is_err());
        let mut r = Reader::new(&[1, 2]);
        r.u8("x").unwrap();
        assert_eq!(
            r.finish("y"),
            Err(DecodeError::Trailing {
                what: "y",
                count: 1
            })
        );
        let mut r = Reader::new(&[0xff; 8]);
        assert!(r.take(usize::MAX, "huge").is_err());
        assert!(Reader::new(&[0x80; 8]).money_nonneg("m").is_err());
    }
}
