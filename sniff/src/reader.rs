//! A cursor over untrusted bytes that can only move forward and never reads past the end.
//!
//! Every TLS length field goes through [`Reader`]: a read that would overrun its container returns
//! `None` instead of panicking, and the caller turns that into a reason for rejecting the input.

/// Reads big-endian integers and length-prefixed vectors from the front of a byte slice.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The next `n` bytes, or `None` if fewer remain.
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.rest.split_at_checked(n)?;
        self.rest = tail;
        Some(head)
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        let (&byte, tail) = self.rest.split_first()?;
        self.rest = tail;
        Some(byte)
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        match *self.take(2)? {
            [hi, lo] => Some(u16::from_be_bytes([hi, lo])),
            _ => None,
        }
    }

    /// A vector with a one-byte length prefix (TLS `opaque x<0..2^8-1>`).
    pub(crate) fn vec8(&mut self) -> Option<&'a [u8]> {
        let len = self.u8()?;
        self.take(usize::from(len))
    }

    /// A vector with a two-byte length prefix (TLS `opaque x<0..2^16-1>`).
    pub(crate) fn vec16(&mut self) -> Option<&'a [u8]> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stop_at_the_end_instead_of_overrunning() {
        let mut r = Reader::new(&[0x00, 0x03, 0xaa, 0xbb]);
        assert_eq!(r.vec16(), None, "a 3-byte vector in 2 bytes is refused");
        let mut r = Reader::new(&[0x02, 0xaa, 0xbb, 0x01]);
        assert_eq!(r.vec8(), Some(&[0xaa, 0xbb][..]));
        assert_eq!(r.u16(), None);
        let mut r = Reader::new(&[]);
        assert_eq!(r.u8(), None);
        assert_eq!(r.take(0), Some(&[][..]));
        assert!(r.is_empty());
    }
}
