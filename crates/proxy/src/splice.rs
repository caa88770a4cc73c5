//! Relaying a TCP connection without copying its bytes through the proxy: on Linux each
//! direction moves data socket → pipe → socket inside the kernel with `splice(2)`, the way
//! HAProxy relays TCP. Elsewhere it falls back to copying through buffers.

use tokio::net::TcpStream;

use crate::idle::Activity;

/// The size a direction's pipe grows to once the direction has filled it: a bulk transfer then
/// moves up to this much per `splice` call. Pipes start at the system's default size (64 KiB),
/// so short-lived connections hold no more than that, and unprivileged users, whose pipes count
/// against `fs.pipe-user-pages-soft`, spend the larger size only on connections that move a lot.
#[cfg(target_os = "linux")]
const BULK_PIPE_BYTES: usize = 1 << 20;

/// Relays bytes both ways between `a` and `b` until both directions have ended; a direction ends
/// at end of stream, which is passed on as a write shutdown of the other socket. Returns the
/// bytes moved from `a` to `b` and from `b` to `a`. An error in either direction ends both.
/// On Linux each direction holds a pipe (two file descriptors) while the relay lasts. Each move
/// counts as activity of `activity`.
pub async fn relay(
    a: &mut TcpStream,
    b: &mut TcpStream,
    activity: &std::sync::Arc<Activity>,
) -> std::io::Result<(u64, u64)> {
    #[cfg(target_os = "linux")]
    {
        let (a, b) = (&*a, &*b);
        tokio::try_join!(
            linux::one_way(a, b, activity),
            linux::one_way(b, a, activity)
        )
    }
    #[cfg(not(target_os = "linux"))]
    {
        let mut a = crate::idle::Watched::new(a, activity.clone());
        tokio::io::copy_bidirectional_with_sizes(&mut a, b, BUFFER_BYTES, BUFFER_BYTES).await
    }
}

/// The buffer of each direction where bytes are copied (TLS on a side, or not Linux).
pub const BUFFER_BYTES: usize = 64 << 10;

#[cfg(target_os = "linux")]
mod linux {
    use std::io;

    use rustix::pipe::{
        fcntl_getpipe_size, fcntl_setpipe_size, pipe_with, splice, PipeFlags, SpliceFlags,
    };
    use tokio::io::Interest;
    use tokio::net::TcpStream;

    use super::{Activity, BULK_PIPE_BYTES};

    /// Moves bytes from `from` to `to` until `from` ends, then shuts down writing on `to`.
    pub(super) async fn one_way(
        from: &TcpStream,
        to: &TcpStream,
        activity: &Activity,
    ) -> io::Result<u64> {
        let (pipe_out, pipe_in) = pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
        let mut capacity = fcntl_getpipe_size(&pipe_in)?;
        let mut may_grow = capacity < BULK_PIPE_BYTES;
        let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
        let mut moved = 0u64;
        loop {
            // The pipe is empty here, so `WouldBlock` can only mean that `from` has nothing to
            // read, which is what `try_io` takes it for.
            from.readable().await?;
            let filled = match from.try_io(Interest::READABLE, || {
                Ok(splice(from, None, &pipe_in, None, capacity, flags)?)
            }) {
                Ok(0) => break,
                Ok(filled) => filled,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            };
            let mut in_pipe = filled;
            while in_pipe > 0 {
                // The pipe holds bytes here, so `WouldBlock` means that `to` is full.
                to.writable().await?;
                match to.try_io(Interest::WRITABLE, || {
                    Ok(splice(&pipe_out, None, to, None, in_pipe, flags)?)
                }) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(sent) => in_pipe -= sent,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            moved += filled as u64;
            activity.moved();
            // A pipe filled to half or more (its slots hold a page fragment each, so it can be
            // full below its byte size) means `from` had more: grow it, empty now, for the bulk
            // transfer, once. If the system refuses, the pipe keeps its size.
            if may_grow && filled >= capacity / 2 {
                may_grow = false;
                capacity = fcntl_setpipe_size(&pipe_in, BULK_PIPE_BYTES).unwrap_or(capacity);
            }
        }
        rustix::net::shutdown(to, rustix::net::Shutdown::Write)?;
        Ok(moved)
    }
}
