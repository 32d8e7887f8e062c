//! Output files written around the page cache.
//!
//! At the rates a busy TLS server moves plaintext, copying it into the page
//! cache costs more CPU than everything else ecapture does: on this project's
//! VM, ext4 takes buffered writes at 0.44 GB/s with the writer's CPU saturated
//! in the kernel, while direct I/O of the same data reaches 1.6 GB/s for a
//! tenth of a CPU-second per 2 GB. Capture files are written once and rarely
//! read back soon, so caching them would only push the host's own data out.
//!
//! Records are gathered into large aligned buffers that a writer thread hands
//! to the device with O_DIRECT, so the reader goes back to the ring buffer at
//! once. Direct I/O needs whole, aligned blocks; the unaligned end of the data
//! (when output is flushed early, so that it shows up live, and at exit) is
//! written through the page cache and rewritten in place by the next direct
//! write, which the kernel keeps coherent.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, error, warn};

/// Offsets, lengths and memory of direct writes are multiples of this; 4 KiB
/// covers every common logical block size.
const BLOCK: usize = 4096;
/// Large enough that each direct write is efficient, small enough that
/// `BUFFERS` of them keep the resident size modest.
const BUFFER_BYTES: usize = 4 << 20;
/// One being filled, the others queued or being written.
const BUFFERS: usize = 4;
/// Direct writes in flight at once. Appending direct writes to one ext4 file
/// hold the inode lock for the whole I/O, so a second writer only waits, and
/// spun while waiting: 30% of ecapture's CPU on nginx at 1 MiB, with fewer
/// bytes written than one writer kept busy by a queue of full buffers.
const WRITERS: usize = 1;
/// A partly filled buffer is written out if nothing was for this long, so
/// that output appears live without rewriting a block on every flush.
const LIVE_DELAY: Duration = Duration::from_millis(100);

/// A block-aligned buffer carved out of a slightly larger allocation.
struct AlignedBuffer {
    storage: Vec<u8>,
    start: usize,
}

impl AlignedBuffer {
    fn new() -> AlignedBuffer {
        // Zeroed allocations of this size are mapped lazily: memory becomes
        // resident only as the buffer is first filled.
        let storage = vec![0u8; BUFFER_BYTES + BLOCK];
        let start = storage.as_ptr().align_offset(BLOCK);
        AlignedBuffer { storage, start }
    }

    fn bytes(&self) -> &[u8] {
        &self.storage[self.start..self.start + BUFFER_BYTES]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + BUFFER_BYTES]
    }
}

/// The first `len` bytes of `buffer` belong at `offset` (block-aligned).
struct WriteJob {
    buffer: AlignedBuffer,
    len: usize,
    offset: u64,
}

pub struct DirectFile {
    /// The caller's file; at the end its offset is moved past what was written,
    /// as if it had been written through it.
    original: File,
    current: AlignedBuffer,
    filled: usize,
    /// Where `current` starts in the file, always block-aligned.
    offset: u64,
    spare: Vec<AlignedBuffer>,
    /// Buffers that exist (allocated on demand, up to BUFFERS).
    allocated: usize,
    jobs: Option<SyncSender<WriteJob>>,
    done: Receiver<(AlignedBuffer, io::Result<()>)>,
    writers: Vec<JoinHandle<()>>,
    /// The last job wrote an unaligned tail through the page cache, which
    /// the next job rewrites: that one must not overtake it.
    tail_in_flight: bool,
    last_handoff: Instant,
    live_delay: Duration,
}

impl DirectFile {
    /// Standard output, when it is a regular file that no other standard
    /// stream shares (a log line written through stderr into the same file
    /// would land where a direct write then overwrites it).
    pub fn for_stdout() -> Option<DirectFile> {
        let identity = |fd: i32| {
            let meta = std::fs::metadata(format!("/proc/self/fd/{fd}")).ok()?;
            Some((meta.dev(), meta.ino()))
        };
        let stdout = io::stdout();
        let file = identity(stdout.as_raw_fd())?;
        if [io::stderr().as_raw_fd(), io::stdin().as_raw_fd()]
            .into_iter()
            .any(|fd| identity(fd) == Some(file))
        {
            debug!("stdout shares its file with another standard stream: writing it through the page cache");
            return None;
        }
        DirectFile::writing_over(stdout.as_fd()).ok()
    }

    /// Writes `file` from its current offset (its end, if it appends); gives
    /// it back when it is not a regular file on a filesystem with direct I/O.
    pub fn over(file: File) -> Result<DirectFile, File> {
        DirectFile::writing_over(file.as_fd()).map_err(|_| file)
    }

    fn writing_over(fd: BorrowedFd<'_>) -> io::Result<DirectFile> {
        DirectFile::try_over(fd).inspect_err(|err| {
            debug!("direct I/O unavailable ({err}): writing through the page cache");
        })
    }

    /// Takes its own descriptor of the caller's file, whose offset it moves
    /// at the end.
    fn try_over(fd: BorrowedFd<'_>) -> io::Result<DirectFile> {
        let mut original = File::from(fd.try_clone_to_owned()?);
        let meta = original.metadata()?;
        if !meta.file_type().is_file() {
            return Err(io::Error::other("not a regular file"));
        }
        // Reopened through /proc so that the new descriptions neither append
        // nor share the caller's offset; every write says where it goes.
        let path = format!("/proc/self/fd/{}", original.as_raw_fd());
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)?;
        let plain = OpenOptions::new().read(true).write(true).open(&path)?;
        let start = if appends(&original)? {
            meta.len()
        } else {
            io::Seek::stream_position(&mut original)?
        };
        let offset = start - start % BLOCK as u64;
        let mut current = AlignedBuffer::new();
        // An unaligned start (appending to a file) is rewritten from its block's start.
        let filled = (start - offset) as usize;
        plain.read_exact_at(&mut current.bytes_mut()[..filled], offset)?;

        let (jobs, queued) = mpsc::sync_channel(BUFFERS);
        let (finished, done) = mpsc::channel();
        let writing = Arc::new(Writing {
            direct,
            plain,
            direct_works: AtomicBool::new(true),
            jobs: Mutex::new(queued),
        });
        let writers = (0..WRITERS)
            .map(|_| {
                let (writing, finished) = (Arc::clone(&writing), finished.clone());
                std::thread::Builder::new()
                    .name("ecapture-writer".into())
                    .spawn(move || writing.run(&finished))
            })
            .collect::<io::Result<_>>()?;
        Ok(DirectFile {
            original,
            current,
            filled,
            offset,
            spare: Vec::new(),
            allocated: 1,
            jobs: Some(jobs),
            done,
            writers,
            tail_in_flight: false,
            last_handoff: Instant::now(),
            live_delay: LIVE_DELAY,
        })
    }

    /// A buffer to fill next: a spare one, a new one while fewer than
    /// BUFFERS exist, or else the next the writers finish with.
    fn free_buffer(&mut self) -> io::Result<AlignedBuffer> {
        self.collect_finished()?;
        if self.spare.is_empty() {
            if self.allocated < BUFFERS {
                self.allocated += 1;
                return Ok(AlignedBuffer::new());
            }
            self.await_job()?;
        }
        self.spare.pop().ok_or_else(writer_gone)
    }

    /// Waits until no job is in flight.
    fn wait_for_writers(&mut self) -> io::Result<()> {
        // Every buffer but `current` is either spare or in flight.
        while self.spare.len() + 1 < self.allocated {
            self.await_job()?;
        }
        Ok(())
    }

    /// Waits for the writers to finish a job; its buffer becomes spare even
    /// when the write failed, so that no buffer is ever waited for twice.
    fn await_job(&mut self) -> io::Result<()> {
        let (buffer, result) = self.done.recv().map_err(|_| writer_gone())?;
        self.spare.push(buffer);
        result
    }

    fn collect_finished(&mut self) -> io::Result<()> {
        while let Ok((buffer, result)) = self.done.try_recv() {
            self.spare.push(buffer);
            result?;
        }
        Ok(())
    }

    /// Queues what `current` holds, and carries its unaligned end over to
    /// the next buffer, which rewrites that block.
    fn hand_off(&mut self) -> io::Result<()> {
        let tail = self.filled % BLOCK;
        let aligned = self.filled - tail;
        if self.tail_in_flight {
            self.wait_for_writers()?;
        }
        let mut next = self.free_buffer()?;
        next.bytes_mut()[..tail].copy_from_slice(&self.current.bytes()[aligned..self.filled]);
        let buffer = std::mem::replace(&mut self.current, next);
        let job = WriteJob {
            buffer,
            len: self.filled,
            offset: self.offset,
        };
        let jobs = self.jobs.as_ref().ok_or_else(writer_gone)?;
        jobs.send(job).map_err(|_| writer_gone())?;
        self.offset += aligned as u64;
        self.filled = tail;
        self.tail_in_flight = tail > 0;
        self.last_handoff = Instant::now();
        Ok(())
    }

    /// Writes out everything, waits for the writers, and leaves the
    /// caller's file offset at the end of the data.
    fn finish(&mut self) -> io::Result<()> {
        if self.tail_in_flight {
            self.wait_for_writers()?;
        }
        // Dropped once the last job is queued, so that the writers stop.
        let jobs = self.jobs.take().ok_or_else(writer_gone)?;
        let job = WriteJob {
            buffer: std::mem::replace(
                &mut self.current,
                AlignedBuffer {
                    storage: Vec::new(),
                    start: 0,
                },
            ),
            len: self.filled,
            offset: self.offset,
        };
        let end = self.offset + self.filled as u64;
        let sent = jobs.send(job);
        drop(jobs);
        for writer in self.writers.drain(..) {
            writer.join().map_err(|_| writer_gone())?;
        }
        sent.map_err(|_| writer_gone())?;
        while let Ok((_, result)) = self.done.try_recv() {
            result?;
        }
        io::Seek::seek(&mut self.original, io::SeekFrom::Start(end))?;
        Ok(())
    }
}

impl Write for DirectFile {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(BUFFER_BYTES - self.filled);
        self.current.bytes_mut()[self.filled..self.filled + n].copy_from_slice(&data[..n]);
        self.filled += n;
        if self.filled == BUFFER_BYTES {
            self.hand_off()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        let unwritten = self.filled > 0 && self.last_handoff.elapsed() >= self.live_delay;
        if unwritten {
            self.hand_off()?;
        }
        self.collect_finished()
    }
}

impl Drop for DirectFile {
    fn drop(&mut self) {
        if let Err(err) = self.finish() {
            error!("writing the output file failed: {err}");
        }
    }
}

fn appends(file: &File) -> io::Result<bool> {
    // SAFETY: F_GETFL on a descriptor we own; no memory is passed.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(flags & libc::O_APPEND != 0)
}

fn writer_gone() -> io::Error {
    io::Error::other("the output writer thread stopped")
}

/// What the writer threads share.
struct Writing {
    direct: File,
    plain: File,
    /// Cleared, for good, when the filesystem refuses a direct write (an
    /// unusual block size): everything then goes through the page cache.
    direct_works: AtomicBool,
    jobs: Mutex<Receiver<WriteJob>>,
}

impl Writing {
    /// A writer thread: the whole blocks of each job go directly to the
    /// device, the rest through the page cache.
    fn run(&self, finished: &Sender<(AlignedBuffer, io::Result<()>)>) {
        loop {
            let next = self
                .jobs
                .lock()
                .map_err(|_| ())
                .and_then(|jobs| jobs.recv().map_err(|_| ()));
            let Ok(job) = next else { return };
            let result = self.write(&job);
            if finished.send((job.buffer, result)).is_err() {
                return;
            }
        }
    }

    fn write(&self, job: &WriteJob) -> io::Result<()> {
        let data = &job.buffer.bytes()[..job.len];
        let aligned = job.len - job.len % BLOCK;
        if aligned == 0 || !self.direct_works.load(Ordering::Relaxed) {
            return self.plain.write_all_at(data, job.offset);
        }
        let written = self
            .direct
            .write_all_at(&data[..aligned], job.offset)
            .and_then(|()| self.plain.write_all_at(&data[aligned..], job.offset + aligned as u64));
        match written {
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
                if self.direct_works.swap(false, Ordering::Relaxed) {
                    warn!("the filesystem refused a direct write: writing the output through the page cache");
                }
                self.plain.write_all_at(data, job.offset)
            }
            written => written,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek};

    /// Bytes that differ at every position, so misplaced blocks show.
    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
            .collect()
    }

    fn contents(path: &std::path::Path) -> Vec<u8> {
        let mut bytes = Vec::new();
        File::open(path).unwrap().read_to_end(&mut bytes).unwrap();
        bytes
    }

    #[test]
    fn writes_across_buffers_with_live_flushes_land_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let mut out = DirectFile::over(File::create(&path).unwrap()).unwrap_or_else(|_| panic!("no direct I/O"));
        out.live_delay = Duration::ZERO;
        let mut expected = Vec::new();
        // Odd sizes, each followed by a flush that writes an unaligned tail.
        for (i, len) in [1, 4095, 4096, 4097, 70_000, 3 << 20, 5 << 20, 12_345]
            .into_iter()
            .cycle()
            .take(24)
            .enumerate()
        {
            let piece = pattern(len, i as u8);
            out.write_all(&piece).unwrap();
            out.flush().unwrap();
            expected.extend_from_slice(&piece);
            if i % 5 == 0 {
                // What was flushed reaches the file while writing goes on.
                let deadline = Instant::now() + Duration::from_secs(10);
                while contents(&path).len() < expected.len() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
                assert!(contents(&path) == expected, "after piece {i}");
            }
        }
        drop(out);
        assert!(contents(&path) == expected, "the file differs from what was written");
    }

    #[test]
    fn appending_starts_at_the_unaligned_end_and_leaves_the_offset_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let before = pattern(10_000, 7);
        std::fs::write(&path, &before).unwrap();
        let file = OpenOptions::new().append(true).open(&path).unwrap();
        let mut shared = file.try_clone().unwrap();
        let mut out = DirectFile::over(file).unwrap_or_else(|_| panic!("no direct I/O"));
        let added = pattern(BUFFER_BYTES + 5000, 9);
        out.write_all(&added).unwrap();
        drop(out);
        let expected = [before, added].concat();
        assert!(contents(&path) == expected, "the file differs from what was written");
        assert_eq!(shared.stream_position().unwrap(), expected.len() as u64);
    }

    #[test]
    fn only_regular_files_are_taken() {
        let null = OpenOptions::new().write(true).open("/dev/null").unwrap();
        assert!(DirectFile::over(null).is_err());
    }
}
