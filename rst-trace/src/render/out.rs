//! Standard output: whole pages in a storm, a closed pipe ends the run quietly.

use std::io::{self, Write as _};

/// Writes records to stdout; a closed pipe (`rst-trace | head`) ends the program quietly.
/// Standard output, buffered by hand rather than through `io::Stdout` (whose line buffering
/// would make a write per line). In a storm the lines go out in 4 KiB multiples: a file then
/// gets whole pages, which the kernel does not have to zero first, as it does for a write that
/// starts or ends inside a page it has not filled yet (block_write_begin()).
pub struct Out {
    w: std::fs::File,
    buf: Vec<u8>,
    pub broken: bool,
    /// A write error other than a closed pipe: the run ends with status 1.
    pub error: Option<io::Error>,
}

impl Drop for Out {
    /// Whatever way the run ends, the lines already rendered go out.
    fn drop(&mut self) {
        self.flush();
    }
}

const OUT_CHUNK: usize = 64 * 1024;
const PAGE: usize = 4096;

impl Out {
    pub fn stdout() -> io::Result<Self> {
        // A duplicate of fd 1, so that dropping the File leaves stdout open.
        use std::os::fd::AsFd as _;
        let fd = io::stdout().as_fd().try_clone_to_owned()?;
        Ok(Self {
            w: std::fs::File::from(fd),
            buf: Vec::with_capacity(OUT_CHUNK + 2 * PAGE),
            broken: false,
            error: None,
        })
    }

    pub fn line(&mut self, s: &str) {
        if self.broken {
            return;
        }
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(b'\n');
        if self.buf.len() >= OUT_CHUNK {
            let whole = self.buf.len() / PAGE * PAGE;
            self.write_out(whole);
        }
    }

    pub fn flush(&mut self) {
        if self.broken {
            return;
        }
        self.write_out(self.buf.len());
    }

    /// Writes the first `n` bytes of the buffer.
    fn write_out(&mut self, n: usize) {
        if let Err(e) = self.w.write_all(&self.buf[..n]) {
            self.fail(e);
        }
        self.buf.drain(..n);
    }

    fn fail(&mut self, e: io::Error) {
        if e.kind() != io::ErrorKind::BrokenPipe {
            self.error = Some(e);
        }
        self.broken = true;
    }
}
