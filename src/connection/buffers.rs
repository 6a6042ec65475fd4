//! The connection's buffers: how much it reads into and keeps between
//! packets. Idle connections are the common case, so a quiet one keeps no
//! buffer at all; a busy one gets room for large reads.

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

/// Reads what is available: into the stack when the connection holds no
/// read buffer, else into the buffer's spare room. A poll, not a future:
/// the idle wait holds nothing for it.
pub(super) fn poll_read_some<S: AsyncRead + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    if rbuf.capacity() == rbuf.len() {
        if rbuf.is_empty() {
            // On the stack of this poll only, never in the task's state.
            let mut scratch = [const { std::mem::MaybeUninit::<u8>::uninit() }; SCRATCH];
            let mut buf = tokio::io::ReadBuf::uninit(&mut scratch);
            std::task::ready!(Pin::new(&mut *stream).poll_read(cx, &mut buf))?;
            rbuf.extend_from_slice(buf.filled());
            return Poll::Ready(Ok(buf.filled().len()));
        }
        rbuf.reserve(READ_RESERVE);
    }
    // `read_buf`'s future borrows and holds nothing else: made per poll.
    std::pin::pin!(stream.read_buf(rbuf)).poll(cx)
}

/// After the packets of an `n`-byte read are handled, sizes the read buffer
/// for the next read: none at all when the connection is quiet and nothing
/// is left over, room for the rest of a partly sent packet, or a large
/// buffer while reads come back full.
pub(super) fn settle_read_buffer(rbuf: &mut BytesMut, n: usize) {
    if n >= SCRATCH {
        rbuf.reserve(READ_RESERVE_BUSY);
    } else if rbuf.is_empty() {
        *rbuf = BytesMut::new();
    } else {
        rbuf.reserve(READ_RESERVE);
    }
}
