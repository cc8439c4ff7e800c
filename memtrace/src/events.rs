//! Events from the kernel: decoding the ring buffer's bytes, and the task that drains it.

use std::{
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use aya::maps::{MapData, RingBuf};
use memtrace_common::{self as abi, Event, EVENT_SIZE};
use tokio::{io::unix::AsyncFd, sync::mpsc};

/// What an event reports. See `memtrace_common::KIND_*` for the meaning of each event's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Malloc,
    Calloc,
    Realloc,
    Free,
    PosixMemalign,
    AlignedAlloc,
    Memalign,
    Valloc,
    Pvalloc,
    Mmap,
    Munmap,
    Mremap,
    Brk,
    Exit,
    Exec,
}

impl Kind {
    pub const ALL: [Kind; 15] = [
        Kind::Malloc,
        Kind::Calloc,
        Kind::Realloc,
        Kind::Free,
        Kind::PosixMemalign,
        Kind::AlignedAlloc,
        Kind::Memalign,
        Kind::Valloc,
        Kind::Pvalloc,
        Kind::Mmap,
        Kind::Munmap,
        Kind::Mremap,
        Kind::Brk,
        Kind::Exit,
        Kind::Exec,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Malloc => "malloc",
            Kind::Calloc => "calloc",
            Kind::Realloc => "realloc",
            Kind::Free => "free",
            Kind::PosixMemalign => "posix_memalign",
            Kind::AlignedAlloc => "aligned_alloc",
            Kind::Memalign => "memalign",
            Kind::Valloc => "valloc",
            Kind::Pvalloc => "pvalloc",
            Kind::Mmap => "mmap",
            Kind::Munmap => "munmap",
            Kind::Mremap => "mremap",
            Kind::Brk => "brk",
            Kind::Exit => "exit",
            Kind::Exec => "exec",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// Events of the malloc family (only sent for processes whose heap is traced).
    pub fn is_heap(self) -> bool {
        self.index() <= Kind::Pvalloc.index()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event of {0} bytes, expected {EVENT_SIZE}")]
    Length(usize),
    #[error("unknown event kind {0}")]
    Kind(u32),
}

impl TryFrom<u32> for Kind {
    type Error = DecodeError;

    fn try_from(kind: u32) -> Result<Self, Self::Error> {
        Ok(match kind {
            abi::KIND_MALLOC => Kind::Malloc,
            abi::KIND_CALLOC => Kind::Calloc,
            abi::KIND_REALLOC => Kind::Realloc,
            abi::KIND_FREE => Kind::Free,
            abi::KIND_POSIX_MEMALIGN => Kind::PosixMemalign,
            abi::KIND_ALIGNED_ALLOC => Kind::AlignedAlloc,
            abi::KIND_MEMALIGN => Kind::Memalign,
            abi::KIND_VALLOC => Kind::Valloc,
            abi::KIND_PVALLOC => Kind::Pvalloc,
            abi::KIND_MMAP => Kind::Mmap,
            abi::KIND_MUNMAP => Kind::Munmap,
            abi::KIND_MREMAP => Kind::Mremap,
            abi::KIND_BRK => Kind::Brk,
            abi::KIND_EXIT => Kind::Exit,
            abi::KIND_EXEC => Kind::Exec,
            other => return Err(DecodeError::Kind(other)),
        })
    }
}

/// Decodes one ring buffer record.
pub fn decode(bytes: &[u8]) -> Result<(Kind, Event), DecodeError> {
    if bytes.len() < EVENT_SIZE {
        return Err(DecodeError::Length(bytes.len()));
    }
    // SAFETY: the length was checked; `Event` is plain integers, so any bit pattern is valid, and
    // `read_unaligned` makes no alignment assumption about the ring buffer's bytes.
    let event = unsafe { bytes.as_ptr().cast::<Event>().read_unaligned() };
    Ok((Kind::try_from(event.kind)?, event))
}

/// Counters of the user-space side of the pipeline.
#[derive(Debug, Default)]
pub struct PipelineStats {
    pub received: AtomicU64,
    pub undecodable: AtomicU64,
    pub by_kind: [AtomicU64; Kind::ALL.len()],
}

impl PipelineStats {
    pub fn kind_count(&self, kind: Kind) -> u64 {
        self.by_kind[kind.index()].load(Ordering::Relaxed)
    }
}

/// Events handed over at once: bounds the memory a burst can take in user space.
pub const BATCH_MAX: usize = 16384;

/// Copies the records now in the ring buffer into `batch`, at most `BATCH_MAX`. Returns how many
/// were read (fewer than `BATCH_MAX`: the ring buffer is empty).
pub fn drain(
    ring: &mut RingBuf<MapData>,
    batch: &mut Vec<(Kind, Event)>,
    stats: &PipelineStats,
) -> usize {
    let mut read = 0;
    while read < BATCH_MAX {
        let Some(item) = ring.next() else { break };
        read += 1;
        match decode(&item) {
            Ok(decoded) => {
                stats.by_kind[decoded.0.index()].fetch_add(1, Ordering::Relaxed);
                batch.push(decoded);
            }
            Err(err) => {
                stats.undecodable.fetch_add(1, Ordering::Relaxed);
                log::debug!("dropping a kernel event: {err}");
            }
        }
    }
    stats.received.fetch_add(read as u64, Ordering::Relaxed);
    read
}

pub type Batch = Vec<(Kind, Event)>;

/// How often the reader drains the ring buffer without a wake-up from the kernel.
pub const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

/// Reads the ring buffer whenever the kernel signals data and hands batches over `tx` until `tx`
/// is closed or `stop` fires; then drains once more so that nothing submitted is lost.
pub async fn reader(
    ring: RingBuf<MapData>,
    tx: mpsc::Sender<Batch>,
    stats: Arc<PipelineStats>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    log::debug!("ring buffer reader on fd {}", ring.as_raw_fd());
    // SAFETY: the AsyncFd owns the ring buffer, so its descriptor stays open for as long as it is
    // registered.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|err| err.into_parts().1)?;
    // The kernel wakes the reader only when enough bytes wait; the timer drains the rest.
    let mut timer = tokio::time::interval(DRAIN_INTERVAL);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut batch = Vec::with_capacity(1024);
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                if drain(guard.get_inner_mut(), &mut batch, &stats) < BATCH_MAX {
                    guard.clear_ready();
                }
            }
            _ = timer.tick() => {
                drain(fd.get_mut(), &mut batch, &stats);
            }
            _ = stop.changed() => break,
        }
        if !batch.is_empty() && tx.send(batch).await.is_err() {
            return Ok(());
        }
    }
    loop {
        let mut batch = Vec::new();
        let read = drain(fd.get_mut(), &mut batch, &stats);
        if !batch.is_empty() && tx.send(batch).await.is_err() {
            break;
        }
        if read < BATCH_MAX {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(event: &Event) -> Vec<u8> {
        // SAFETY: `Event` is plain integers without padding (size asserted in the ABI crate).
        unsafe { std::slice::from_raw_parts((event as *const Event).cast::<u8>(), EVENT_SIZE) }
            .to_vec()
    }

    #[test]
    fn decodes_every_kind() {
        for (raw, kind) in (1u32..=15).zip(Kind::ALL) {
            let event = Event {
                kind: raw,
                tgid: 7,
                size: 42,
                ..Event::default()
            };
            let (decoded_kind, decoded) = decode(&bytes(&event)).expect("decodes");
            assert_eq!(decoded_kind, kind);
            assert_eq!(decoded, event);
        }
    }

    #[test]
    fn rejects_short_and_unknown() {
        let event = Event {
            kind: abi::KIND_MALLOC,
            ..Event::default()
        };
        assert_eq!(decode(&bytes(&event)[..10]), Err(DecodeError::Length(10)));
        let event = Event {
            kind: 99,
            ..Event::default()
        };
        assert_eq!(decode(&bytes(&event)), Err(DecodeError::Kind(99)));
    }

    #[test]
    fn decodes_unaligned() {
        let event = Event {
            kind: abi::KIND_FREE,
            old_addr: 0xdead_beef,
            ..Event::default()
        };
        let mut buffer = vec![0u8];
        buffer.extend(bytes(&event));
        assert_eq!(decode(&buffer[1..]).expect("decodes").1, event);
    }
}
