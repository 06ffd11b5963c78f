//! An [`AsyncWrite`] that prints each complete line of a stream on stdout through a rendering
//! function: the readable forms of `kennel logs --proxy` and `kennel events`.

use tokio::io::AsyncWrite;

/// Prints complete lines as they come, each through `render`; a last line without its newline
/// is printed by [`LineRenderer::finish`]. Writes go straight to the (blocking) stdout: the
/// CLI's runtime runs nothing else meanwhile, and a terminal that stops reading should stop the
/// stream anyway.
pub struct LineRenderer<F> {
    render: F,
    partial: Vec<u8>,
    /// How many lines were printed so far.
    pub printed: usize,
}

impl<F: FnMut(&str) -> String> LineRenderer<F> {
    /// A renderer printing `render(line)` for every line.
    pub fn new(render: F) -> Self {
        LineRenderer {
            render,
            partial: Vec::new(),
            printed: 0,
        }
    }

    fn emit_lines(&mut self, all: bool) -> std::io::Result<()> {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        while let Some(pos) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=pos).collect();
            writeln!(
                out,
                "{}",
                (self.render)(&String::from_utf8_lossy(&line[..pos]))
            )?;
            self.printed += 1;
        }
        if all && !self.partial.is_empty() {
            let rest = String::from_utf8_lossy(&std::mem::take(&mut self.partial)).into_owned();
            writeln!(out, "{}", (self.render)(&rest))?;
            self.printed += 1;
        }
        out.flush()
    }

    /// Prints what is left after the stream ended (a last line without its newline).
    pub fn finish(&mut self) -> std::io::Result<()> {
        self.emit_lines(true)
    }
}

impl<F: FnMut(&str) -> String + Unpin> AsyncWrite for LineRenderer<F> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.partial.extend_from_slice(buf);
        std::task::Poll::Ready(self.emit_lines(false).map(|()| buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
