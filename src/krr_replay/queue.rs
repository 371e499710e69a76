//! The global event list of a KRR replay (krr-spec 3.5, 5): one order over all vCPUs, consumed
//! at its head, except that copy_from_user, get_user and PTE events may be taken from further
//! on (host appends can land between the guest's allocation and its trap, 3.6): those are
//! unlinked where they stand. Each event keeps its raw payload, which the ring appends use.

use crate::krr_rec::events::{Event, KrrLog, KIND_NAMES};

/// The log itself, never changed by the replay (shared by a debugger's snapshots).
struct Log {
    events: Vec<Event>,
    /// Each event's file offset (of its type field) and raw payload.
    offsets: Vec<u64>,
    payloads: Vec<Vec<u8>>,
}

#[derive(Clone)]
pub struct Queue {
    log: std::sync::Arc<Log>,
    taken: Vec<bool>,
    /// How many are taken (the head and the unlinked ones), so counts cost nothing.
    taken_count: usize,
    head: usize,
    /// Events replayed, by type number.
    pub replayed: [u64; 15],
    /// `-krr-debug`: a line per replayed event on stderr.
    pub debug: bool,
}

impl Queue {
    /// The events of `log`, whose file bytes are `bytes`.
    pub fn new(log: &KrrLog, bytes: &[u8]) -> Queue {
        let n = log.events.len();
        let payloads = (0..n)
            .map(|i| {
                let start = log.offsets[i] as usize + 4;
                let end = log
                    .offsets
                    .get(i + 1)
                    .map(|&o| o as usize)
                    .unwrap_or(bytes.len());
                bytes.get(start..end).unwrap_or_default().to_vec()
            })
            .collect();
        Queue {
            log: std::sync::Arc::new(Log {
                events: log.events.clone(),
                offsets: log.offsets.clone(),
                payloads,
            }),
            taken: vec![false; n],
            taken_count: 0,
            head: 0,
            replayed: [0; 15],
            debug: false,
        }
    }

    fn skip_taken(&mut self) {
        while self.head < self.log.events.len() && self.taken[self.head] {
            self.head += 1;
        }
    }

    /// The next event to replay and its index in the log.
    pub fn head(&self) -> Option<(usize, &Event)> {
        // `take` keeps `head` at the first event not taken.
        self.log.events.get(self.head).map(|e| (self.head, e))
    }

    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// Events not yet replayed.
    pub fn remaining(&self) -> usize {
        self.log.events.len() - self.taken_count
    }

    /// Events replayed so far.
    pub fn replayed_count(&self) -> usize {
        self.taken_count
    }

    pub fn len(&self) -> usize {
        self.log.events.len()
    }

    /// Consume event `i` (the head, or one found by [`Queue::find`]).
    pub fn take(&mut self, i: usize) {
        debug_assert!(!self.taken[i]);
        self.taken[i] = true;
        self.taken_count += 1;
        self.replayed[self.log.events[i].type_number() as usize] += 1;
        if self.debug {
            eprintln!("Replayed event {}: {}", i + 1, self.log.events[i]);
        }
        self.skip_taken();
    }

    /// The first event at or after the head that `want` accepts.
    pub fn find(&self, want: impl Fn(&Event) -> bool) -> Option<usize> {
        (self.head..self.log.events.len()).find(|&i| !self.taken[i] && want(&self.log.events[i]))
    }

    pub fn event(&self, i: usize) -> &Event {
        &self.log.events[i]
    }

    pub fn payload(&self, i: usize) -> &[u8] {
        &self.log.payloads[i]
    }

    pub fn offset(&self, i: usize) -> u64 {
        self.log.offsets[i]
    }

    /// "event N (TYPE, offset X)" for messages; N counts from 1, as KRR's progress does.
    pub fn describe(&self, i: usize) -> String {
        format!(
            "event {} ({}, file offset {})",
            i + 1,
            KIND_NAMES[self.log.events[i].type_number() as usize],
            self.log.offsets[i]
        )
    }
}
