//! The container's output, as a kubelet reads it: the CRI log file containerd writes.

use std::{
    io::{Read as _, Seek as _, SeekFrom},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::Duration,
};

/// Follows a CRI log file (`<RFC 3339 time> <stream> <F|P> <text>`, a line per write, `P` for
/// a partial one) and sends each whole line's text; stops when the flag is set.
pub fn follow(file: PathBuf) -> (mpsc::Receiver<String>, Arc<AtomicBool>) {
    let (tx, rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    std::thread::spawn(move || {
        let (mut offset, mut pending, mut partial) = (0, Vec::new(), String::new());
        while !stopped.load(Ordering::Relaxed) {
            if let Ok(mut f) = std::fs::File::open(&file) {
                let _ = f.seek(SeekFrom::Start(offset));
                let n = f.read_to_end(&mut pending).unwrap_or(0);
                offset += n as u64;
            }
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line[..end]).into_owned();
                let mut f = line.splitn(4, ' ');
                let (_time, _stream, tag) = (f.next(), f.next(), f.next());
                partial.push_str(f.next().unwrap_or_default());
                if tag == Some("F") && tx.send(std::mem::take(&mut partial)).is_err() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    (rx, stop)
}
