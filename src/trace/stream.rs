//! Reading a trace's events in order ([`EventStream`]). Decoding a chunk (a zstd frame of
//! varint-packed events) costs the replay's main thread several percent on event-heavy
//! traces (RDTSC-bound guests), so a read-ahead thread decodes the next few chunks on its
//! own file handle while the replay runs; the events, and any error in a chunk, arrive in
//! trace order exactly as if read on the spot.

use super::reader::TraceReader;
use super::{Event, TraceError};
use std::sync::mpsc::{sync_channel, Receiver};

/// Chunks decoded ahead at most (a chunk holds at most `MAX_CHUNK_RAW` bytes of events).
const READ_AHEAD: usize = 3;

/// A thread decoding chunks `next..` of a trace in order.
struct ReadAhead {
    /// The chunk the next message holds.
    next: usize,
    chunks: Receiver<Result<Vec<Event>, TraceError>>,
}

impl ReadAhead {
    /// Start decoding at chunk `first` on a second handle (`None` if the file cannot be
    /// opened again or no thread can be started: the stream then reads on its own thread).
    fn start(reader: &TraceReader, first: usize) -> Option<ReadAhead> {
        let mut own = reader.reopen().ok()?;
        let (tx, rx) = sync_channel(READ_AHEAD);
        let total = own.index.len();
        std::thread::Builder::new()
            .name("krr-read-ahead".into())
            .spawn(move || {
                for i in first..total {
                    let r = own.chunk(i);
                    let failed = r.is_err();
                    // Ends when the stream drops the receiver (a jump, or the end).
                    if tx.send(r).is_err() || failed {
                        break;
                    }
                }
            })
            .ok()?;
        Some(ReadAhead {
            next: first,
            chunks: rx,
        })
    }

    /// The next chunk, waiting for it (`None`: the thread is gone).
    fn take(&mut self) -> Option<Result<Vec<Event>, TraceError>> {
        let r = self.chunks.recv().ok()?;
        self.next += 1;
        Some(r)
    }
}

/// Reads the events of a trace in order, one chunk at a time.
pub struct EventStream {
    reader: TraceReader,
    next_chunk: usize,
    /// The thread decoding the chunks after `next_chunk`, once started.
    ahead: Option<ReadAhead>,
    /// Never start one.
    no_read_ahead: bool,
    buffered: std::collections::VecDeque<Event>,
    /// Index of the next event `next()` returns.
    pub position: u64,
    /// The last events consumed, oldest first (a debugger shows them).
    recent: std::collections::VecDeque<Event>,
}

/// Consumed events [`EventStream::recent`] keeps.
const RECENT: usize = 16;

/// Where an [`EventStream`] is, to come back to ([`EventStream::mark`]).
#[derive(Clone)]
pub struct StreamMark {
    next_chunk: usize,
    buffered: std::collections::VecDeque<Event>,
    position: u64,
    recent: std::collections::VecDeque<Event>,
}

impl StreamMark {
    /// Bytes it holds, roughly (its buffered events).
    pub fn approx_bytes(&self) -> u64 {
        let data = |e: &Event| match &e.data {
            crate::trace::EventData::DmaWrite { data, .. } => data.len() as u64,
            _ => 0,
        };
        self.buffered
            .iter()
            .chain(&self.recent)
            .map(|e| 64 + data(e))
            .sum()
    }
}

impl EventStream {
    /// The stream's place, for [`EventStream::restore`].
    pub fn mark(&self) -> StreamMark {
        StreamMark {
            next_chunk: self.next_chunk,
            buffered: self.buffered.clone(),
            position: self.position,
            recent: self.recent.clone(),
        }
    }

    /// Go back (or forward) to a place [`EventStream::mark`] gave.
    pub fn restore(&mut self, m: &StreamMark) {
        self.next_chunk = m.next_chunk;
        self.buffered = m.buffered.clone();
        self.position = m.position;
        self.recent = m.recent.clone();
    }

    pub fn new(reader: TraceReader) -> EventStream {
        EventStream {
            reader,
            next_chunk: 0,
            ahead: None,
            no_read_ahead: false,
            buffered: Default::default(),
            position: 0,
            recent: Default::default(),
        }
    }

    /// A stream that decodes every chunk on the caller's thread.
    pub fn without_read_ahead(reader: TraceReader) -> EventStream {
        EventStream {
            no_read_ahead: true,
            ..EventStream::new(reader)
        }
    }

    fn fill(&mut self, want: usize) -> Result<(), TraceError> {
        while self.buffered.len() < want && self.next_chunk < self.reader.index.len() {
            let evs = self.chunk(self.next_chunk)?;
            self.next_chunk += 1;
            self.buffered.extend(evs);
        }
        Ok(())
    }

    /// Chunk `i`'s events: from the read-ahead thread when it is at `i` (started at the
    /// first chunk read in order, restarted after a jump), else read here.
    fn chunk(&mut self, i: usize) -> Result<Vec<Event>, TraceError> {
        if self.ahead.as_ref().is_some_and(|a| a.next != i) {
            self.ahead = None;
        }
        if self.ahead.is_none() && !self.no_read_ahead && self.reader.index.len() - i > 1 {
            self.ahead = ReadAhead::start(&self.reader, i);
        }
        if let Some(a) = self.ahead.as_mut() {
            if let Some(r) = a.take() {
                return r;
            }
            // The thread could not go on (it reports its errors in order, so this is only a
            // vanished thread): read here from now on.
            self.ahead = None;
        }
        self.reader.chunk(i)
    }

    /// The `k`th event from the current position, without consuming it.
    pub fn peek(&mut self, k: usize) -> Result<Option<&Event>, TraceError> {
        self.fill(k + 1)?;
        Ok(self.buffered.get(k))
    }

    pub fn next_event(&mut self) -> Result<Option<Event>, TraceError> {
        self.fill(1)?;
        let e = self.buffered.pop_front();
        if let Some(e) = &e {
            self.position += 1;
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(e.clone());
        }
        Ok(e)
    }

    /// Up to 16 events consumed last, oldest first; the last one's index is `position - 1`.
    pub fn recent(&self) -> impl Iterator<Item = &Event> {
        self.recent.iter()
    }

    pub fn reader(&self) -> &TraceReader {
        &self.reader
    }

    pub fn reader_mut(&mut self) -> &mut TraceReader {
        &mut self.reader
    }

    /// Go to event `n` (a delta snapshot's place): the next event returned is the `n`th.
    pub fn seek(&mut self, n: u64) -> Result<(), TraceError> {
        let index = &self.reader.index;
        let chunk = index.partition_point(|c| c.first_event + c.events as u64 <= n);
        self.buffered.clear();
        self.recent.clear();
        self.next_chunk = chunk;
        self.position = n;
        if chunk < index.len() {
            let skip = (n - index[chunk].first_event) as usize;
            let evs = self.reader.chunk(chunk)?;
            self.next_chunk += 1;
            self.buffered.extend(evs.into_iter().skip(skip));
        }
        Ok(())
    }
}
