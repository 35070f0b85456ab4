//! The protobuf wire format, walked one top-level field at a time: a
//! snapshot range or log object is a single message whose repeated field
//! may hold millions of elements, so it is never decoded whole. Each
//! element is read (and decoded by `prost`) on its own; every other field
//! is skipped without being read.

use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use super::FormatError;

/// Where an object's payload is read from: its bytes in memory, or the
/// copy of a large object downloaded to a file (with its length).
#[derive(Clone, Copy, Debug)]
pub enum Payload<'a> {
    Bytes(&'a [u8]),
    File(&'a std::fs::File, u64),
}

impl Payload<'_> {
    /// The payload's size in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Payload::Bytes(b) => b.len() as u64,
            Payload::File(_, len) => *len,
        }
    }

    /// True when the payload holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why bytes are not a valid protobuf message: `prost`'s message for an
/// element, or what the field walker found wrong.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct WireError(pub(super) String);

/// No element of a backup object comes near this size: a key is at most
/// 2 KiB and a value 64 KiB. A larger length is corruption, refused before
/// anything is allocated for it.
const MAX_ELEMENT_BYTES: u64 = 1 << 20;

trait ReadSeek: BufRead + Seek {}
impl<T: BufRead + Seek> ReadSeek for T {}

/// A file read at its own offset (`pread`), so that two walkers can go
/// through one file at once (a snapshot's data and metadata lists).
struct FileAt<'a> {
    file: &'a std::fs::File,
    pos: u64,
}

impl Read for FileAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for FileAt<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.file.metadata()?.len().checked_add_signed(d),
        }
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek out of range"))?;
        Ok(self.pos)
    }
}

/// One field as the walker found it.
pub(super) enum Value {
    Varint(u64),
    /// A length-delimited field that was asked for.
    Bytes(Vec<u8>),
    /// Any other field, skipped unread.
    Skipped,
}

/// The top-level fields of one message, in the order they are encoded.
pub(super) struct Fields<'a> {
    r: Box<dyn ReadSeek + 'a>,
    pos: u64,
    len: u64,
    object: &'a str,
}

impl<'a> Fields<'a> {
    pub(super) fn new(payload: Payload<'a>, object: &'a str) -> Self {
        let r: Box<dyn ReadSeek + 'a> = match payload {
            Payload::Bytes(b) => Box::new(io::Cursor::new(b)),
            Payload::File(file, _) => {
                Box::new(BufReader::with_capacity(64 << 10, FileAt { file, pos: 0 }))
            }
        };
        Fields {
            r,
            pos: 0,
            len: payload.len(),
            object,
        }
    }

    pub(super) fn error(&self, reason: impl Into<String>) -> FormatError {
        FormatError::BadProtobuf {
            object: self.object.to_string(),
            source: WireError(reason.into()),
        }
    }

    fn io(&self, e: io::Error) -> FormatError {
        FormatError::corrupt(
            self.object,
            format!("reading the downloaded copy failed: {e}"),
        )
    }

    fn truncated(&self) -> FormatError {
        self.error(format!("truncated at byte {}", self.pos))
    }

    fn byte(&mut self) -> Result<u8, FormatError> {
        if self.pos >= self.len {
            return Err(self.truncated());
        }
        let mut b = [0u8; 1];
        self.r.read_exact(&mut b).map_err(|e| self.io(e))?;
        self.pos += 1;
        Ok(b[0])
    }

    fn varint(&mut self) -> Result<u64, FormatError> {
        let mut out = 0u64;
        for i in 0..10 {
            let b = self.byte()?;
            out |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(out);
            }
        }
        Err(self.error("invalid varint"))
    }

    fn skip(&mut self, n: u64) -> Result<(), FormatError> {
        if self.len - self.pos < n {
            return Err(self.truncated());
        }
        let d = i64::try_from(n).map_err(|_| self.truncated())?;
        self.r.seek_relative(d).map_err(|e| self.io(e))?;
        self.pos += n;
        Ok(())
    }

    /// The next field: its number and value; `None` at the end of the
    /// message. A length-delimited field numbered `read` is read, any
    /// other skipped.
    pub(super) fn next(&mut self, read: u32) -> Result<Option<(u32, Value)>, FormatError> {
        if self.pos >= self.len {
            return Ok(None);
        }
        let key = self.varint()?;
        let tag = u32::try_from(key >> 3).map_err(|_| self.error("invalid field number"))?;
        if tag == 0 {
            return Err(self.error("invalid field number 0"));
        }
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.skip(8)?;
                Value::Skipped
            }
            2 => {
                let n = self.varint()?;
                if tag != read {
                    self.skip(n)?;
                    Value::Skipped
                } else if n > MAX_ELEMENT_BYTES {
                    return Err(self.error(format!(
                        "field {tag}: an element of {n} bytes, larger than any valid entry"
                    )));
                } else if self.len - self.pos < n {
                    return Err(self.truncated());
                } else {
                    let mut buf = vec![0u8; n as usize];
                    self.r.read_exact(&mut buf).map_err(|e| self.io(e))?;
                    self.pos += n;
                    Value::Bytes(buf)
                }
            }
            5 => {
                self.skip(4)?;
                Value::Skipped
            }
            w => return Err(self.error(format!("field {tag}: unsupported wire type {w}"))),
        };
        Ok(Some((tag, value)))
    }

    /// The next element of the repeated message field `tag`, skipping every
    /// other field; `None` at the end of the message.
    pub(super) fn element(&mut self, tag: u32) -> Result<Option<Vec<u8>>, FormatError> {
        while let Some((t, v)) = self.next(tag)? {
            match v {
                Value::Bytes(b) => return Ok(Some(b)),
                Value::Varint(_) if t == tag => {
                    return Err(self.error(format!("field {tag}: wrong wire type")))
                }
                _ => {}
            }
        }
        Ok(None)
    }

    /// How many more elements of field `tag` follow, each skipped.
    pub(super) fn count(&mut self, tag: u32) -> Result<u64, FormatError> {
        let mut n = 0;
        while let Some((t, _)) = self.next(0)? {
            n += u64::from(t == tag);
        }
        Ok(n)
    }
}
