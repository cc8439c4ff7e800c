//! Reading JSONL files one line at a time in bounded memory, forward (each byte read once) or
//! backward (each byte read at most twice): the cost is linear in the file's size.
//!
//! A line longer than the cap is not kept: its bytes are passed over (read, never accumulated) and it
//! comes out as [`Body::TooLong`] with its length, so the caller can count and report it.

use std::{
    fs::File,
    io::{self, BufRead, BufReader, Read},
    os::unix::fs::FileExt,
};

/// Bytes read at a time when reading a file backward, and when counting lines.
pub(super) const CHUNK: usize = 64 * 1024;

/// A line's content.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Body {
    /// The line, without its `\n`.
    Bytes(Vec<u8>),
    /// A line longer than the cap: only its length (without the `\n`) is known.
    TooLong(u64),
}

/// One non-blank line of a JSONL file.
#[derive(Debug)]
pub(super) struct Line {
    pub body: Body,
    /// 1-based line number, when known (forward reads).
    pub number: Option<u64>,
    /// Byte offset of the line's start.
    pub offset: u64,
    /// False for a last line without `\n`: an interrupted write.
    pub terminated: bool,
}

fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
}

/// Lines from the first to the last.
pub(super) struct ForwardLines<R> {
    reader: BufReader<R>,
    max: usize,
    offset: u64,
    number: u64,
    bytes_read: u64,
}

impl<R: Read> ForwardLines<R> {
    /// Lines of `inner`, each kept only up to `max` bytes.
    pub(super) fn new(inner: R, max: usize) -> Self {
        Self {
            reader: BufReader::with_capacity(CHUNK, inner),
            max,
            offset: 0,
            number: 0,
            bytes_read: 0,
        }
    }

    /// Bytes consumed so far.
    #[cfg(test)]
    pub(super) fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// The next non-blank line, or `None` at the end.
    pub(super) fn next_line(&mut self) -> io::Result<Option<Line>> {
        loop {
            let mut bytes = Vec::new();
            let mut len = 0u64;
            let mut too_long = false;
            let mut terminated = false;
            loop {
                let buf = match self.reader.fill_buf() {
                    Ok(buf) => buf,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                if buf.is_empty() {
                    break;
                }
                let (take, found) = match buf.iter().position(|&b| b == b'\n') {
                    Some(i) => (i, true),
                    None => (buf.len(), false),
                };
                if !too_long {
                    if bytes.len() + take > self.max {
                        too_long = true;
                        bytes = Vec::new();
                    } else {
                        bytes.extend_from_slice(&buf[..take]);
                    }
                }
                len += take as u64;
                let consumed = take + usize::from(found);
                self.reader.consume(consumed);
                self.bytes_read += consumed as u64;
                if found {
                    terminated = true;
                    break;
                }
            }
            if len == 0 && !terminated {
                return Ok(None);
            }
            self.number += 1;
            let offset = self.offset;
            self.offset += len + u64::from(terminated);
            let body = if too_long {
                Body::TooLong(len)
            } else if is_blank(&bytes) {
                continue;
            } else {
                Body::Bytes(bytes)
            };
            return Ok(Some(Line {
                body,
                number: Some(self.number),
                offset,
                terminated,
            }));
        }
    }
}

/// Lines from the last to the first, a chunk at a time. The chunks are only scanned for line
/// starts; a line that lies within one chunk is taken from it, a longer one is read again from the
/// file once its start is found, and only if it is within the cap (a longer one is never held). So
/// each byte is read at most twice, and memory stays within a chunk plus the cap.
pub(super) struct BackwardLines<'a> {
    file: &'a File,
    max: usize,
    chunk_size: usize,
    /// File offset of `chunk`'s first byte.
    pos: u64,
    /// The file's bytes from `pos`; `chunk[..scan_end]` not looked at yet.
    chunk: Vec<u8>,
    scan_end: usize,
    /// File offset of the end of the line being looked for (its `\n`, or the end of the file).
    line_end: u64,
    /// True until the last line of the file has been returned.
    at_end: bool,
    done: bool,
    bytes_read: u64,
}

impl<'a> BackwardLines<'a> {
    /// Lines of `file` (`len` bytes long), each kept only up to `max` bytes.
    pub(super) fn new(file: &'a File, len: u64, max: usize) -> Self {
        Self::with_chunk(file, len, max, CHUNK)
    }

    pub(super) fn with_chunk(file: &'a File, len: u64, max: usize, chunk_size: usize) -> Self {
        Self {
            file,
            max,
            chunk_size: chunk_size.max(1),
            pos: len,
            chunk: Vec::new(),
            scan_end: 0,
            line_end: len,
            at_end: true,
            done: false,
            bytes_read: 0,
        }
    }

    /// Bytes read from the file so far.
    #[cfg(test)]
    pub(super) fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// The previous non-blank line, or `None` at the start of the file.
    pub(super) fn next_line(&mut self) -> io::Result<Option<Line>> {
        while !self.done {
            if let Some(i) = self.chunk[..self.scan_end]
                .iter()
                .rposition(|&b| b == b'\n')
            {
                let start = self.pos + i as u64 + 1;
                let line = self.take(start)?;
                self.scan_end = i;
                self.line_end = start - 1;
                if line.is_some() {
                    return Ok(line);
                }
                continue;
            }
            if self.pos == 0 {
                self.done = true;
                let line = self.take(0)?;
                self.chunk = Vec::new();
                self.scan_end = 0;
                return Ok(line);
            }
            let start = self.pos.saturating_sub(self.chunk_size as u64);
            let len = usize::try_from(self.pos - start).unwrap_or(self.chunk_size);
            self.chunk.resize(len, 0);
            self.file.read_exact_at(&mut self.chunk, start)?;
            self.bytes_read += len as u64;
            self.scan_end = len;
            self.pos = start;
        }
        Ok(None)
    }

    /// The line from `start` to `line_end`; `None` when blank.
    fn take(&mut self, start: u64) -> io::Result<Option<Line>> {
        let len = self.line_end - start;
        let terminated = !std::mem::replace(&mut self.at_end, false);
        let from = usize::try_from(start - self.pos).unwrap_or(usize::MAX);
        let to = usize::try_from(self.line_end - self.pos).unwrap_or(usize::MAX);
        let body = if len > self.max as u64 {
            Body::TooLong(len)
        } else if to <= self.chunk.len() {
            Body::Bytes(self.chunk[from..to].to_vec())
        } else {
            // The line goes on past this chunk: read it whole, now that its length is known.
            let mut bytes = vec![0; usize::try_from(len).unwrap_or(0)];
            self.file.read_exact_at(&mut bytes, start)?;
            self.bytes_read += len;
            Body::Bytes(bytes)
        };
        if matches!(&body, Body::Bytes(b) if is_blank(b)) {
            return Ok(None);
        }
        Ok(Some(Line {
            body,
            number: None,
            offset: start,
            terminated,
        }))
    }
}

/// The 1-based line numbers of the lines starting at `offsets` (any order), in one forward pass
/// over the file up to the largest offset.
pub(super) fn line_numbers(file: &File, offsets: &[u64]) -> io::Result<Vec<u64>> {
    let mut order: Vec<usize> = (0..offsets.len()).collect();
    order.sort_by_key(|&i| offsets[i]);
    let mut numbers = vec![0; offsets.len()];
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    let mut newlines = 0u64;
    for i in order {
        let target = offsets[i];
        while pos < target {
            let want = usize::try_from((target - pos).min(CHUNK as u64)).unwrap_or(CHUNK);
            let n = file.read_at(&mut buf[..want], pos)?;
            if n == 0 {
                break;
            }
            newlines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
            pos += n as u64;
        }
        numbers[i] = newlines + 1;
    }
    Ok(numbers)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn file_with(bytes: &[u8]) -> File {
        let path = std::env::temp_dir().join(format!(
            "memtrace-lines-{}-{}",
            std::process::id(),
            std::thread::current()
                .name()
                .unwrap_or("t")
                .replace("::", "-")
        ));
        let mut f = File::create(&path).unwrap();
        f.write_all(bytes).unwrap();
        let f = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }

    fn text(line: &Line) -> String {
        match &line.body {
            Body::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
            Body::TooLong(n) => format!("<{n}>"),
        }
    }

    fn backward(bytes: &[u8], max: usize, chunk: usize) -> Vec<(String, u64, bool)> {
        let f = file_with(bytes);
        let mut lines = BackwardLines::with_chunk(&f, bytes.len() as u64, max, chunk);
        let mut out = Vec::new();
        while let Some(l) = lines.next_line().unwrap() {
            out.push((text(&l), l.offset, l.terminated));
        }
        // Lines that cross chunks are read a second time, once their start is found.
        assert!(
            lines.bytes_read() <= 2 * bytes.len() as u64,
            "{} bytes read for {}",
            lines.bytes_read(),
            bytes.len()
        );
        out
    }

    fn forward(bytes: &[u8], max: usize) -> Vec<(String, u64, bool, Option<u64>)> {
        let mut lines = ForwardLines::new(bytes, max);
        let mut out = Vec::new();
        while let Some(l) = lines.next_line().unwrap() {
            out.push((text(&l), l.offset, l.terminated, l.number));
        }
        assert_eq!(lines.bytes_read(), bytes.len() as u64);
        out
    }

    #[test]
    fn both_directions_agree_for_every_chunk_size() {
        let data = b"a\n\nbcd\n   \nxxxxxxxxxxxx\nef\npartial";
        let fwd = forward(data, 8);
        assert_eq!(
            fwd,
            [
                ("a".into(), 0, true, Some(1)),
                ("bcd".into(), 3, true, Some(3)),
                ("<12>".into(), 11, true, Some(5)),
                ("ef".into(), 24, true, Some(6)),
                ("partial".into(), 27, false, Some(7)),
            ]
        );
        for chunk in 1..=data.len() + 1 {
            let mut back = backward(data, 8, chunk);
            back.reverse();
            let expected: Vec<(String, u64, bool)> = fwd
                .iter()
                .map(|(t, o, term, _)| (t.clone(), *o, *term))
                .collect();
            assert_eq!(back, expected, "chunk {chunk}");
        }
        let f = file_with(data);
        assert_eq!(line_numbers(&f, &[24, 0, 11, 27]).unwrap(), [6, 1, 5, 7]);
    }

    #[test]
    fn empty_and_trailing_newline() {
        assert!(backward(b"", 8, 4).is_empty());
        assert!(forward(b"", 8).is_empty());
        assert_eq!(backward(b"x\n", 8, 4), [("x".into(), 0, true)]);
        assert_eq!(backward(b"\n\nx", 8, 1), [("x".into(), 2, false)]);
    }

    /// Guards the restore cost (issue 11 item 7): a line far longer than the cap is passed over
    /// without being held (memory stays at one chunk), and the file is read once backward; forward,
    /// each byte is read once.
    #[test]
    fn a_huge_line_is_passed_over() {
        let mut data = b"{\"a\":1}\n".to_vec();
        data.extend(std::iter::repeat_n(b'x', 3 * CHUNK + 17));
        data.extend_from_slice(b"\n{\"b\":2}\n");
        let back = backward(&data, 1024, CHUNK);
        assert_eq!(back.len(), 3);
        assert_eq!(back[1].0, format!("<{}>", 3 * CHUNK + 17));
        let file = file_with(&data);
        let mut lines = BackwardLines::new(&file, data.len() as u64, 1024);
        while lines.next_line().unwrap().is_some() {
            assert!(lines.chunk.capacity() <= CHUNK);
        }
        assert_eq!(lines.bytes_read(), data.len() as u64);
        let fwd = forward(&data, 1024);
        assert_eq!(fwd[1].0, back[1].0);
    }
}
