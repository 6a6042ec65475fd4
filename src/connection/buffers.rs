//! The connection's buffers: how much it reads into and keeps between
//! packets. Idle connections are the common case, so a quiet one keeps no
//! buffer at all, nor room for one: both live in one box made when bytes
//! come or go and let go of when neither buffer holds anything; a busy
//! one gets room for large reads.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Idle connections are the common case, so a quiet connection holds no
/// buffers between packets: it reads into this much stack and keeps only
/// what it read (which the decoded packets then share, so a queued or
/// retained message pins its own bytes, not a large buffer). A read that
/// fills it marks the connection busy.
pub(super) const SCRATCH: usize = 4 * 1024;
/// Spare room for the rest of a packet that a quiet connection has only
/// partly sent.
const READ_RESERVE: usize = 2 * 1024;
/// Spare room while reads fill what they are given: a busy publisher gets
/// larger reads (fewer syscalls, bigger batches per group commit).
const READ_RESERVE_BUSY: usize = 64 * 1024;
/// A flush smaller than this gives the write buffer back.
pub(super) const WRITE_KEEP: usize = 4 * 1024;

/// The read and write buffers of a connection, in one box made when
/// either is needed and dropped when neither holds bytes or room (issue
/// 25: two empty `BytesMut` took 64 bytes of every idle connection, this
/// takes 8). A busy connection keeps the box: one pointer more to follow,
/// no allocation per packet.
#[derive(Default)]
pub(super) struct Buffers(Option<Box<Pair>>);

/// The buffers themselves.
#[derive(Default)]
struct Pair {
    read: BytesMut,
    write: BytesMut,
}

impl Buffers {
    /// Buffers holding `read` (what the handshake read past CONNECT), made
    /// only if it holds bytes.
    pub(super) fn with_read(read: BytesMut) -> Buffers {
        Buffers((!read.is_empty()).then(|| Box::new(Pair { read, write: BytesMut::new() })))
    }

    /// The read buffer, made now if need be.
    pub(super) fn read(&mut self) -> &mut BytesMut {
        &mut self.0.get_or_insert_with(Box::default).read
    }

    /// The write buffer, made now if need be.
    pub(super) fn write(&mut self) -> &mut BytesMut {
        &mut self.0.get_or_insert_with(Box::default).write
    }

    /// Bytes waiting in the write buffer.
    pub(super) fn write_len(&self) -> usize {
        self.0.as_ref().map_or(0, |pair| pair.write.len())
    }

    /// Drops what the write buffer holds (acknowledgements that must not
    /// go out).
    pub(super) fn clear_write(&mut self) {
        if let Some(pair) = &mut self.0 {
            pair.write.clear();
        }
    }

    /// After a flush of `batch` bytes: a quiet connection gives its write
    /// buffer back (each idle client would otherwise hold one); a busy one
    /// keeps it for the next batch.
    pub(super) fn settle_write(&mut self, batch: usize) {
        let Some(pair) = &mut self.0 else { return };
        if batch < WRITE_KEEP {
            pair.write = BytesMut::new();
            self.release_if_idle();
        } else {
            pair.write.clear();
        }
    }

    /// After the packets of an `n`-byte read are handled, sizes the read
    /// buffer for the next read: none at all when the connection is quiet
    /// and nothing is left over, room for the rest of a partly sent packet,
    /// or a large buffer while reads come back full.
    pub(super) fn settle_read(&mut self, n: usize) {
        let Some(pair) = &mut self.0 else { return };
        let rbuf = &mut pair.read;
        if n >= SCRATCH {
            rbuf.reserve(READ_RESERVE_BUSY);
        } else if rbuf.is_empty() {
            *rbuf = BytesMut::new();
            self.release_if_idle();
        } else {
            rbuf.reserve(READ_RESERVE);
        }
    }

    /// Lets go of the box when neither buffer holds bytes or room.
    fn release_if_idle(&mut self) {
        if self.0.as_ref().is_some_and(|pair| pair.read.capacity() == 0 && pair.write.capacity() == 0) {
            self.0 = None;
        }
    }

    /// Whether reading wants the stack: no read buffer with room.
    fn no_read_room(&self) -> bool {
        self.0.as_ref().is_none_or(|pair| pair.read.capacity() == pair.read.len())
    }

    /// Whether the read buffer holds nothing.
    pub(super) fn read_is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|pair| pair.read.is_empty())
    }
}

/// Reads what is available: into the stack when the connection holds no
/// read buffer, else into the buffer's spare room. A poll, not a future:
/// the idle wait holds nothing for it.
pub(super) fn poll_read_some<S: AsyncRead + Unpin>(
    stream: &mut S,
    bufs: &mut Buffers,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    if bufs.no_read_room() {
        if bufs.read_is_empty() {
            // On the stack of this poll only, never in the task's state.
            let mut scratch = [const { std::mem::MaybeUninit::<u8>::uninit() }; SCRATCH];
            let mut buf = tokio::io::ReadBuf::uninit(&mut scratch);
            std::task::ready!(Pin::new(&mut *stream).poll_read(cx, &mut buf))?;
            if !buf.filled().is_empty() {
                // The buffers are made only for bytes that came.
                bufs.read().extend_from_slice(buf.filled());
            }
            return Poll::Ready(Ok(buf.filled().len()));
        }
        bufs.read().reserve(READ_RESERVE);
    }
    // `read_buf`'s future borrows and holds nothing else: made per poll.
    std::pin::pin!(stream.read_buf(bufs.read())).poll(cx)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The box is there only while a buffer holds bytes or room.
    #[test]
    fn quiet_buffers_are_let_go() {
        let mut bufs = Buffers::with_read(BytesMut::new());
        assert!(bufs.0.is_none(), "made for nothing read");
        bufs.write().extend_from_slice(b"\x20\x02\x00\x00");
        bufs.read().extend_from_slice(b"\xc0\x00");
        assert_eq!(bufs.write_len(), 4);
        let _ = bufs.write().split();
        bufs.settle_write(4);
        assert!(bufs.0.is_some(), "kept while the read buffer holds bytes");
        let _ = bufs.read().split();
        bufs.settle_read(2);
        assert!(bufs.0.is_none(), "kept after both were settled");
        bufs.write().extend_from_slice(&[0; WRITE_KEEP]);
        bufs.settle_write(WRITE_KEEP);
        assert!(bufs.0.as_ref().is_some_and(|p| p.write.capacity() >= WRITE_KEEP), "a busy write buffer stays");
        bufs.read().extend_from_slice(&[0; 10]);
        bufs.settle_read(SCRATCH);
        assert!(bufs.0.as_ref().is_some_and(|p| p.read.capacity() >= READ_RESERVE_BUSY), "a busy read gets room");
    }
}
