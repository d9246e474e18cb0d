// SPDX-License-Identifier: GPL-2.0
//! Text into fixed buffers: a sysfs page, a mount's options, one log line.
//! A leaf: it uses nothing of this crate.

use core::fmt::Write;

/// A fixed buffer for composing one log line.
pub(crate) struct LineBuf {
    buf: [u8; 96],
    len: usize,
}

impl LineBuf {
    pub(crate) fn new() -> Self {
        LineBuf {
            buf: [0; 96],
            len: 0,
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?")
    }
}

impl Write for LineBuf {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        SliceWriter::append(&mut self.buf, &mut self.len, s)
    }
}

/// Writes formatted text into a caller-provided byte buffer (a sysfs page).
pub(crate) struct SliceWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> SliceWriter<'a> {
    pub(crate) fn new(buf: &'a mut [u8]) -> Self {
        SliceWriter { buf, len: 0 }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn append(buf: &mut [u8], len: &mut usize, s: &str) -> core::fmt::Result {
        let end = len.checked_add(s.len()).ok_or(core::fmt::Error)?;
        let dst = buf.get_mut(*len..end).ok_or(core::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        *len = end;
        Ok(())
    }
}

impl Write for SliceWriter<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        Self::append(self.buf, &mut self.len, s)
    }
}
