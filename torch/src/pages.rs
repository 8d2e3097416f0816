//! Releasing the pages of a memory-mapped file once their bytes are used.

use std::ops::Range;

use memmap2::Mmap;

/// The mapped bytes of a [`TorchFile`](crate::TorchFile), shareable across threads.
#[derive(Clone, Copy)]
pub struct Pages<'a>(pub(crate) &'a Mmap);

impl Pages<'_> {
    /// Map these pages in one system call before they are read: cheaper than a page fault per
    /// 64 KiB. Best effort (MADV_POPULATE_READ needs Linux 5.14).
    pub fn prefetch(&self, span: &Range<u64>) {
        let Some((start, len)) = whole_pages(span) else {
            return;
        };
        #[cfg(target_os = "linux")]
        let _ = self
            .0
            .advise_range(memmap2::Advice::PopulateRead, start, len);
    }

    /// Tell the kernel we are done with these pages, so a long conversion's resident set does
    /// not grow with the model (the page cache keeps them if memory allows).
    pub fn release(&self, span: &Range<u64>) {
        // An assembled tensor's span is empty: its pieces are released where they are read.
        let Some((start, len)) = whole_pages(span) else {
            return;
        };
        // SAFETY: DONTNEED on a read-only file mapping only drops our view of the pages; a later
        // read (even one still in flight on another thread) faults them in again from the
        // file, with the same contents. Callers release a tensor after they are done with it.
        let _ = unsafe {
            self.0
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len)
        };
    }
}

/// `span` widened down to a page boundary, as madvise wants it: (start, length); `None` when
/// empty.
fn whole_pages(span: &Range<u64>) -> Option<(usize, usize)> {
    const PAGE: u64 = 4096;
    if span.is_empty() {
        return None;
    }
    let start = span.start / PAGE * PAGE;
    Some((start as usize, (span.end - start) as usize))
}
