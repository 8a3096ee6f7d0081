//! Sending a sealed segment's bytes with `sendfile(2)`.
//!
//! glommio's sockets are blocking under the hood, so a plain sendfile would
//! stall the shard until the kernel took every byte. The connection's socket
//! is non-blocking instead: sendfile takes what fits in the socket buffer,
//! and on EAGAIN the next piece goes through glommio's own async write, which
//! waits for room without blocking the shard.

use std::os::fd::{AsRawFd, RawFd};

use futures_lite::AsyncWriteExt;
use glommio::io::BufferedFile;

/// The most bytes handed to one sendfile call.
const SENDFILE_CHUNK_BYTES: u64 = 1024 * 1024;
/// The most bytes read and written through glommio after an EAGAIN.
const FALLBACK_CHUNK_BYTES: u64 = 256 * 1024;

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
