//! Peak heap under hostile and real inputs, measured by a counting global allocator: every
//! reader stays within `testkit::heap_bound` (4 x the input + 64 MiB).

// Counts are process-wide: these measurements get a process of their own.
#[global_allocator]
static ALLOC: testkit::CountingAlloc = testkit::CountingAlloc;

mod cases;

mod alloc_bound;
