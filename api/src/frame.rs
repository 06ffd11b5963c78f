//! Framing of an exec stream over the upgraded HTTP connection.
//!
//! Every frame is `kind: u8`, `len: u32` (big endian), then `len` payload bytes.
//! Daemon → client: [`FrameKind::Stdout`], [`FrameKind::Stderr`], then exactly one of
//! [`FrameKind::Exit`] (payload: the exit code, `i32` big endian) or [`FrameKind::Error`]
//! (payload: a UTF-8 message), after which the daemon closes the stream.
//! Client → daemon: [`FrameKind::Stdin`]; an empty stdin frame means end of input.

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest payload a frame may carry; larger frames are a protocol error.
pub const MAX_FRAME: u32 = 1 << 20;

/// The `Upgrade` header value of an exec request.
pub const UPGRADE_PROTOCOL: &str = "kennel-exec/1";

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// Input for the command (client → daemon); empty payload = end of input.
    Stdin = 0,
    /// Output the command wrote to its stdout.
    Stdout = 1,
    /// Output the command wrote to its stderr.
    Stderr = 2,
    /// The command's exit code (`i32` big endian); the last frame of a successful exec.
    Exit = 3,
    /// The exec failed inside the daemon (UTF-8 message); the last frame.
    Error = 4,
    /// The client's terminal size (client → daemon): rows, cols as `u16` big endian.
    Resize = 5,
}

impl FrameKind {
    fn from_u8(b: u8) -> Option<FrameKind> {
        Some(match b {
            0 => FrameKind::Stdin,
            1 => FrameKind::Stdout,
            2 => FrameKind::Stderr,
            3 => FrameKind::Exit,
            4 => FrameKind::Error,
            5 => FrameKind::Resize,
            _ => return None,
        })
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the payload is.
    pub kind: FrameKind,
    /// The payload.
    pub payload: Bytes,
}

impl Frame {
    /// A frame carrying `payload`.
    pub fn new(kind: FrameKind, payload: impl Into<Bytes>) -> Frame {
        Frame {
            kind,
            payload: payload.into(),
        }
    }

    /// The exit-code frame.
    pub fn exit(code: i32) -> Frame {
        Frame::new(FrameKind::Exit, Bytes::copy_from_slice(&code.to_be_bytes()))
    }

    /// A resize frame.
    pub fn resize(rows: u16, cols: u16) -> Frame {
        let mut b = [0u8; 4];
        b[..2].copy_from_slice(&rows.to_be_bytes());
        b[2..].copy_from_slice(&cols.to_be_bytes());
        Frame::new(FrameKind::Resize, Bytes::copy_from_slice(&b))
    }

    /// `(rows, cols)` of a [`FrameKind::Resize`] frame.
    pub fn size(&self) -> Result<(u16, u16), FrameError> {
        match self.payload.as_ref() {
            [r0, r1, c0, c1] => Ok((
                u16::from_be_bytes([*r0, *r1]),
                u16::from_be_bytes([*c0, *c1]),
            )),
            _ => Err(FrameError::BadResize),
        }
    }

    /// The exit code of an [`FrameKind::Exit`] frame.
    pub fn exit_code(&self) -> Result<i32, FrameError> {
        let bytes: [u8; 4] = self
            .payload
            .as_ref()
            .try_into()
            .map_err(|_| FrameError::BadExit)?;
        Ok(i32::from_be_bytes(bytes))
    }
}

/// A malformed exec stream.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Reading or writing the stream failed.
    #[error("exec stream I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The first byte of a frame is not a known [`FrameKind`].
    #[error("exec stream: unknown frame kind {0}")]
    UnknownKind(u8),
    /// A frame announced more than [`MAX_FRAME`] bytes.
    #[error("exec stream: frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(u32),
    /// An exit frame whose payload is not 4 bytes.
    #[error("exec stream: malformed exit-code frame")]
    BadExit,
    /// A resize frame whose payload is not 4 bytes.
    #[error("exec stream: malformed resize frame")]
    BadResize,
    /// The stream ended inside a frame.
    #[error("exec stream ended in the middle of a frame")]
    Truncated,
}

/// Writes one frame (and flushes).
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    frame: &Frame,
) -> Result<(), FrameError> {
    let len = u32::try_from(frame.payload.len()).map_err(|_| FrameError::TooLarge(u32::MAX))?;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut head = [0u8; 5];
    head[0] = frame.kind as u8;
    head[1..].copy_from_slice(&len.to_be_bytes());
    w.write_all(&head).await?;
    w.write_all(&frame.payload).await?;
    w.flush().await?;
    Ok(())
}

/// Writes `data` as one or more frames of `kind`, each at most [`MAX_FRAME`] bytes.
pub async fn write_chunked<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: FrameKind,
    data: Bytes,
) -> Result<(), FrameError> {
    let mut rest = data;
    while rest.len() > MAX_FRAME as usize {
        let head = rest.split_to(MAX_FRAME as usize);
        write_frame(w, &Frame::new(kind, head)).await?;
    }
    write_frame(w, &Frame::new(kind, rest)).await
}

/// Reads one frame; `Ok(None)` at a clean end of stream (between frames).
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>, FrameError> {
    let mut head = [0u8; 5];
    let mut filled = 0;
    while filled < head.len() {
        let n = r.read(&mut head[filled..]).await?;
        if n == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        filled += n;
    }
    let kind = FrameKind::from_u8(head[0]).ok_or(FrameError::UnknownKind(head[0]))?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    })?;
    Ok(Some(Frame {
        kind,
        payload: payload.into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Frame::new(FrameKind::Stdout, "hello"))
            .await
            .unwrap();
        write_frame(&mut buf, &Frame::new(FrameKind::Stderr, "oops"))
            .await
            .unwrap();
        write_frame(&mut buf, &Frame::exit(-3)).await.unwrap();
        assert_eq!(&buf[..5], &[1, 0, 0, 0, 5]);
        let mut r = &buf[..];
        assert_eq!(
            read_frame(&mut r).await.unwrap(),
            Some(Frame::new(FrameKind::Stdout, "hello"))
        );
        assert_eq!(
            read_frame(&mut r).await.unwrap(),
            Some(Frame::new(FrameKind::Stderr, "oops"))
        );
        let exit = read_frame(&mut r).await.unwrap().unwrap();
        assert_eq!(exit.kind, FrameKind::Exit);
        assert_eq!(exit.exit_code().unwrap(), -3);
        assert_eq!(read_frame(&mut r).await.unwrap(), None);
    }

    #[tokio::test]
    async fn malformed_streams_are_errors() {
        let mut r: &[u8] = &[9, 0, 0, 0, 0];
        assert!(matches!(
            read_frame(&mut r).await,
            Err(FrameError::UnknownKind(9))
        ));
        let mut r: &[u8] = &[1, 0, 0];
        assert!(matches!(
            read_frame(&mut r).await,
            Err(FrameError::Truncated)
        ));
        let mut r: &[u8] = &[1, 0, 0, 0, 4, b'a'];
        assert!(matches!(
            read_frame(&mut r).await,
            Err(FrameError::Truncated)
        ));
        let mut r: &[u8] = &[1, 0xff, 0, 0, 0];
        assert!(matches!(
            read_frame(&mut r).await,
            Err(FrameError::TooLarge(_))
        ));
        assert!(matches!(
            Frame::new(FrameKind::Exit, "x").exit_code(),
            Err(FrameError::BadExit)
        ));
        assert!(matches!(
            Frame::new(FrameKind::Resize, "x").size(),
            Err(FrameError::BadResize)
        ));
        assert_eq!(Frame::resize(24, 80).size().unwrap(), (24, 80));
    }

    #[tokio::test]
    async fn large_output_is_split_into_frames() {
        let mut buf = Vec::new();
        let data = Bytes::from(vec![7u8; MAX_FRAME as usize + 10]);
        write_chunked(&mut buf, FrameKind::Stdout, data)
            .await
            .unwrap();
        let mut r = &buf[..];
        let a = read_frame(&mut r).await.unwrap().unwrap();
        let b = read_frame(&mut r).await.unwrap().unwrap();
        assert_eq!((a.payload.len(), b.payload.len()), (MAX_FRAME as usize, 10));
    }
}
