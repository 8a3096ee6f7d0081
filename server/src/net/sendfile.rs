//! Writing a response: memory parts with `writev(2)`, sealed-segment ranges
//! with `sendfile(2)`.
//!
//! glommio's sockets are blocking under the hood, so a plain writev or
//! sendfile would stall the shard until the kernel took every byte. The
//! connection's socket is non-blocking instead: each call takes what fits in
//! the socket buffer, and on EAGAIN the next piece goes through glommio's
//! own async write, which waits for room without blocking the shard. One
//! writev carries the frame prefix, the flatbuffer and every in-memory
//! part after it, so a response is one system call when the socket has room.

use std::os::fd::{AsRawFd, RawFd};

use futures_lite::AsyncWriteExt;
use glommio::io::BufferedFile;

/// The most bytes handed to one sendfile call.
const SENDFILE_CHUNK_BYTES: u64 = 1024 * 1024;
/// The most bytes read and written through glommio after a sendfile EAGAIN:
/// just enough to wait for room, after which sendfile takes over again.
const FALLBACK_CHUNK_BYTES: u64 = 16 * 1024;
/// Slices handed to one writev call (Linux's IOV_MAX is 1024).
const IOVECS_PER_CALL_MAX: usize = 64;

/// Puts `socket` in non-blocking mode (for [`send_file`]).
///
/// # Errors
/// The fcntl calls failed.
pub fn set_nonblocking(socket: RawFd) -> std::io::Result<()> {
    // SAFETY: `socket` is an open descriptor owned by the caller's stream for
    // the duration of the call; F_GETFL/F_SETFL take no pointers.
    let flags = unsafe { libc::fcntl(socket, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(socket, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Writes every slice in order to the socket behind `writer`, with as few
/// writev calls as the socket's room allows.
///
/// # Errors
/// I/O errors of the socket.
pub async fn write_slices<W: futures_lite::AsyncWrite + Unpin>(
    writer: &mut W,
    socket: RawFd,
    slices: &[&[u8]],
) -> std::io::Result<()> {
    let (mut index, mut offset) = (0usize, 0usize);
    while index < slices.len() {
        if offset == slices[index].len() {
            (index, offset) = (index + 1, 0);
            continue;
        }
        let mut iovecs = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; IOVECS_PER_CALL_MAX];
        let mut count = 0;
        for (i, slice) in slices[index..].iter().take(IOVECS_PER_CALL_MAX).enumerate() {
            let slice = if i == 0 { &slice[offset..] } else { slice };
            iovecs[count] = libc::iovec {
                iov_base: slice.as_ptr() as *mut libc::c_void,
                iov_len: slice.len(),
            };
            count += 1;
        }
        // SAFETY: every iovec points into a slice borrowed for the whole
        // call, with its true length; writev only reads them. The socket
        // belongs to the caller's connection.
        let written = unsafe { libc::writev(socket, iovecs.as_ptr(), count as libc::c_int) };
        if written >= 0 {
            (index, offset) = advance(slices, index, offset, written as usize);
            glommio::yield_if_needed().await;
            continue;
        }
        let error = std::io::Error::last_os_error();
        match error.kind() {
            std::io::ErrorKind::Interrupted => continue,
            std::io::ErrorKind::WouldBlock => {
                // Wait for room by writing the rest of this slice the async way.
                writer.write_all(&slices[index][offset..]).await?;
                (index, offset) = (index + 1, 0);
            }
            _ => return Err(error),
        }
    }
    Ok(())
}

/// The position `written` bytes after (`index`, `offset`) in `slices`.
fn advance(
    slices: &[&[u8]],
    mut index: usize,
    mut offset: usize,
    mut written: usize,
) -> (usize, usize) {
    while written > 0 {
        let left = slices[index].len() - offset;
        if written < left {
            return (index, offset + written);
        }
        written -= left;
        (index, offset) = (index + 1, 0);
    }
    (index, offset)
}

/// Sends `length` bytes of `file` from `position` to the socket behind `writer`.
///
/// # Errors
/// I/O errors from either side; a file shorter than the range.
pub async fn send_file<W: futures_lite::AsyncWrite + Unpin>(
    writer: &mut W,
    socket: RawFd,
    file: &BufferedFile,
    position: u64,
    length: u64,
) -> std::io::Result<()> {
    let end = position + length;
    // Ask the kernel to read the range ahead while earlier pieces go out: a
    // sealed segment that left the page cache is read at the disk's pace,
    // not one sendfile's worth at a time.
    // SAFETY: fadvise takes the descriptor (open for the call) and numbers only.
    let _ = unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            position as libc::off_t,
            length as libc::off_t,
            libc::POSIX_FADV_WILLNEED,
        )
    };
    let mut offset = position as libc::off_t;
    while (offset as u64) < end {
        let chunk = (end - offset as u64).min(SENDFILE_CHUNK_BYTES) as usize;
        // SAFETY: both descriptors are open for the whole call (the socket
        // belongs to the caller's connection, the file to the `Rc` the caller
        // holds) and `offset` is a valid, exclusively borrowed `off_t`.
        let sent = unsafe { libc::sendfile(socket, file.as_raw_fd(), &mut offset, chunk) };
        if sent > 0 {
            glommio::yield_if_needed().await;
            continue;
        }
        if sent == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "segment shorter than the range to send",
            ));
        }
        let error = std::io::Error::last_os_error();
        match error.kind() {
            std::io::ErrorKind::Interrupted => continue,
            std::io::ErrorKind::WouldBlock => {
                let piece_len = (end - offset as u64).min(FALLBACK_CHUNK_BYTES) as usize;
                let piece = file
                    .read_at(offset as u64, piece_len)
                    .await
                    .map_err(std::io::Error::from)?;
                if piece.is_empty() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "segment shorter than the range to send",
                    ));
                }
                writer.write_all(&piece).await?;
                offset += piece.len() as libc::off_t;
            }
            _ => return Err(error),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::advance;

    #[test]
    fn advancing_crosses_slices_and_stops_inside_one() {
        let slices: [&[u8]; 3] = [b"abc", b"", b"defgh"];
        assert_eq!(advance(&slices, 0, 0, 2), (0, 2));
        assert_eq!(advance(&slices, 0, 2, 1), (1, 0));
        assert_eq!(advance(&slices, 0, 1, 4), (2, 2));
        assert_eq!(advance(&slices, 0, 0, 8), (3, 0));
    }
}
