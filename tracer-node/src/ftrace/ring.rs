//! Walks the events of one ring-buffer page as read from `per_cpu/cpuN/trace_pipe_raw`
//! (layout in `events/header_page` and `events/header_event`): a 32-bit header per event with
//! a 5-bit type and a 27-bit time delta, time extends, absolute stamps and padding.

use super::format::PageHeader;

/// Bits of the commit word that are flags, not length.
const MISSED_EVENTS: u64 = 1 << 31;
const MISSED_STORED: u64 = 1 << 30;
const COMMIT_MASK: u64 = (1 << 27) - 1;
const TYPE_PADDING: u32 = 29;
const TYPE_TIME_EXTEND: u32 = 30;
const TYPE_TIME_STAMP: u32 = 31;
const TS_SHIFT: u32 = 27;

/// One data event of a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawEvent {
    /// Timestamp in the instance's trace clock (ns).
    pub ts: u64,
    /// Offset of the payload in the page.
    pub offset: usize,
    /// Length of the payload.
    pub len: usize,
}

/// The events of a page, plus what the page says about losses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// Data events in order.
    pub events: Vec<RawEvent>,
    /// The kernel dropped events before this page (overwrite mode).
    pub missed: bool,
    /// Bytes of event data in the page (its commit).
    pub size: usize,
}

impl Page {
    /// Whether the page was at least half full. A reader that keeps getting pages less full
    /// than that has caught up with the writer, and reads the page being written a few events
    /// at a time (the cost of a page for each few events) until it waits.
    pub fn half_full(&self, header: &PageHeader) -> bool {
        self.size * 2 >= header.data_size
    }
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    buf.get(at..at + 4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

fn read_word(buf: &[u8], (off, size): (usize, usize)) -> Option<u64> {
    match size {
        8 => buf.get(off..off + 8).map(|b| u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])),
        4 => read_u32(buf, off).map(u64::from),
        _ => None,
    }
}

/// Parses a page; a malformed page yields the events before the damage. Timestamps wrap
/// rather than overflow: a corrupt page's stamps are wrong, but the reader thread lives (a
/// fuzzed page near `u64::MAX` panicked a debug build).
pub fn parse_page(buf: &[u8], header: &PageHeader, out: &mut Page) {
    out.events.clear();
    out.missed = false;
    out.size = 0;
    let (Some(mut ts), Some(commit)) = (read_word(buf, header.timestamp), read_word(buf, header.commit)) else {
        return;
    };
    out.missed = commit & (MISSED_EVENTS | MISSED_STORED) != 0;
    let size = (commit & COMMIT_MASK) as usize;
    out.size = size;
    let start = header.data_offset;
    let end = (start + size).min(buf.len()).min(start + header.data_size);
    let mut pos = start;
    while pos + 4 <= end {
        let Some(word) = read_u32(buf, pos) else { return };
        let type_len = word & 0x1f;
        let delta = u64::from(word >> 5);
        let body = pos + 4;
        match type_len {
            TYPE_PADDING => {
                if delta == 0 {
                    // Filler to the end of the page.
                    return;
                }
                let Some(len) = read_u32(buf, body) else { return };
                pos = body + len as usize;
            }
            TYPE_TIME_EXTEND => {
                let Some(ext) = read_u32(buf, body) else { return };
                ts = ts.wrapping_add((u64::from(ext) << TS_SHIFT) + delta);
                pos = body + 4;
            }
            TYPE_TIME_STAMP => {
                let Some(ext) = read_u32(buf, body) else { return };
                // Absolute stamp: 59 bits; the top bits come from the page's own timestamp.
                let abs = (u64::from(ext) << TS_SHIFT) | delta;
                ts = (ts & !((1u64 << 59) - 1)) | abs;
                pos = body + 4;
            }
            0 => {
                let Some(len) = read_u32(buf, body) else { return };
                let len = (len as usize).saturating_sub(4);
                ts = ts.wrapping_add(delta);
                let data = body + 4;
                if data + len > end {
                    return;
                }
                out.events.push(RawEvent { ts, offset: data, len });
                pos = data + ((len + 3) & !3);
            }
            n => {
                let len = n as usize * 4;
                ts = ts.wrapping_add(delta);
                if body + len > end {
                    return;
                }
                out.events.push(RawEvent { ts, offset: body, len });
                pos = body + len;
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const HEADER: PageHeader =
        PageHeader { timestamp: (0, 8), commit: (8, 8), data_offset: 16, data_size: 4080 };

    /// Builds a page the way the kernel lays it out.
    pub(crate) struct PageBuilder {
        pub buf: Vec<u8>,
    }

    impl PageBuilder {
        pub(crate) fn new(ts: u64) -> Self {
            let mut buf = vec![0u8; 4096];
            buf[0..8].copy_from_slice(&ts.to_ne_bytes());
            Self { buf: buf[..16].to_vec() }
        }
        fn hdr(&mut self, type_len: u32, delta: u32) {
            self.buf.extend_from_slice(&((delta << 5) | type_len).to_ne_bytes());
        }
        pub(crate) fn event(&mut self, delta: u32, payload: &[u8]) -> &mut Self {
            let padded = (payload.len() + 3) & !3;
            if padded <= 28 * 4 {
                self.hdr((padded / 4) as u32, delta);
            } else {
                self.hdr(0, delta);
                self.buf.extend_from_slice(&((payload.len() + 4) as u32).to_ne_bytes());
            }
            self.buf.extend_from_slice(payload);
            self.buf.resize(self.buf.len() + padded - payload.len(), 0);
            self
        }
        pub(crate) fn extend(&mut self, delta: u64) -> &mut Self {
            self.hdr(TYPE_TIME_EXTEND, (delta & ((1 << 27) - 1)) as u32);
            self.buf.extend_from_slice(&((delta >> 27) as u32).to_ne_bytes());
            self
        }
        pub(crate) fn finish(&mut self, flags: u64) -> Vec<u8> {
            let len = (self.buf.len() - 16) as u64;
            self.buf[8..16].copy_from_slice(&(len | flags).to_ne_bytes());
            let mut page = self.buf.clone();
            page.resize(4096, 0);
            page
        }
    }

    #[test]
    fn a_stamp_near_the_end_of_u64_wraps_instead_of_panicking() {
        // Found by the `ring_page` fuzz target: the page stamp plus a delta overflowed.
        let mut buf = Vec::new();
        buf.extend_from_slice(&u64::MAX.to_ne_bytes());
        buf.extend_from_slice(&8u64.to_ne_bytes());
        buf.extend_from_slice(&(1u32 | (5 << 5)).to_ne_bytes());
        buf.extend_from_slice(&[7, 7, 7, 7]);
        let mut page = Page::default();
        parse_page(&buf, &HEADER, &mut page);
        assert_eq!(page.events, vec![RawEvent { ts: 4, offset: 20, len: 4 }]);
    }

    #[test]
    fn small_large_and_extended_events_are_walked_with_their_timestamps() {
        let big = vec![7u8; 200];
        let page = PageBuilder::new(1000).event(5, &[1; 12]).extend(1 << 30).event(3, &big).event(0, &[2; 8]).finish(0);
        let mut p = Page::default();
        parse_page(&page, &HEADER, &mut p);
        assert_eq!(p.events.len(), 3);
        assert_eq!(p.events[0].ts, 1005);
        assert_eq!((p.events[0].len, page[p.events[0].offset]), (12, 1));
        assert_eq!(p.events[1].ts, 1005 + (1 << 30) + 3);
        assert_eq!(p.events[1].len, 200);
        assert_eq!(&page[p.events[1].offset..p.events[1].offset + 200], &big[..]);
        assert_eq!(p.events[2].ts, p.events[1].ts);
        assert!(!p.missed);
    }

    #[test]
    fn missed_flag_and_truncated_pages_are_handled() {
        let page = PageBuilder::new(0).event(1, &[1; 8]).finish(MISSED_EVENTS);
        let mut p = Page::default();
        parse_page(&page, &HEADER, &mut p);
        assert!(p.missed);
        assert_eq!(p.events.len(), 1);
        // A commit length beyond the buffer, or garbage, never panics.
        let mut bad = page.clone();
        bad[8..16].copy_from_slice(&5000u64.to_ne_bytes());
        parse_page(&bad[..100], &HEADER, &mut p);
        parse_page(&[0u8; 3], &HEADER, &mut p);
        assert!(p.events.len() <= 1);
    }
}
