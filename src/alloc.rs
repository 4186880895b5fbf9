//! The binary's global allocator: clears large blocks when they are freed.
//!
//! Request bytes, API keys in headers included, live in hyper's read buffers (8 KiB and up).
//! A buffer is freed once the requests parsed from it are done, and an allocator does not
//! clear what it frees: with mimalloc, a server that had made 200 exchanges over one
//! connection held ~30 whole copies of the key in freed buffers, still there after the
//! connection closed (`keybound lab`, scenario C). [`ClearLargeOnFree`] writes zeros over
//! every block of [`CLEAR_FROM`] bytes or more before handing it back, so freed request
//! buffers hold nothing; a buffer still in use holds its requests, which is unavoidable.
//!
//! Small blocks are left alone: clearing every free would cost a memset per allocation, and
//! the secret is never copied into a small block (the key is parsed in place and kept as a
//! zeroizing `SecretString`, the cache keeps its hash). Large blocks are few per request, so
//! the clearing costs well under a microsecond an exchange (docs/benchmarks.md, change 18).

use std::alloc::{GlobalAlloc, Layout};

/// Blocks of at least this many bytes are cleared when freed.
pub const CLEAR_FROM: usize = 4096;

/// Wraps a global allocator and clears blocks of [`CLEAR_FROM`] bytes or more on free.
pub struct ClearLargeOnFree<A>(pub A);

// SAFETY: every call is forwarded to `A` with the layout it was given; `dealloc` only writes
// within the block it is about to free, and `realloc` of a large block is alloc + copy + free,
// each upholding `GlobalAlloc`'s contract for `A`.
unsafe impl<A: GlobalAlloc> GlobalAlloc for ClearLargeOnFree<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        unsafe { self.0.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        unsafe { self.0.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() >= CLEAR_FROM {
            // SAFETY: `ptr` is a live block of `layout.size()` bytes owned by the caller. The
            // stores cannot be dropped as dead: the block then goes to `A::dealloc`, a call
            // the compiler cannot see into (mimalloc's `mi_free` is foreign code).
            unsafe { std::ptr::write_bytes(ptr, 0, layout.size()) };
        }
        // SAFETY: forwarded unchanged.
        unsafe { self.0.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.size() < CLEAR_FROM {
            // SAFETY: forwarded unchanged. (A small block that grows past the threshold is
            // cleared when the grown block is freed; its old small block is not.)
            return unsafe { self.0.realloc(ptr, layout, new_size) };
        }
        // A growing or shrinking large block: `A` would free the old block uncleared, so move
        // it here. SAFETY: `new_size` is non-zero and valid with `layout.align()` per
        // `realloc`'s contract; the copy stays within both blocks.
        unsafe {
            let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
            let new = self.0.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;

    /// Records what a block held when it was freed.
    struct Spy {
        seen: std::sync::Mutex<Vec<Vec<u8>>>,
    }

    unsafe impl GlobalAlloc for Spy {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            let bytes = unsafe { std::slice::from_raw_parts(ptr, layout.size()) }.to_vec();
            self.seen.lock().unwrap().push(bytes);
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    fn freed_with(size: usize, grow_to: Option<usize>) -> Vec<Vec<u8>> {
        let a = ClearLargeOnFree(Spy {
            seen: std::sync::Mutex::new(Vec::new()),
        });
        let layout = Layout::from_size_align(size, 8).unwrap();
        unsafe {
            let mut p = a.alloc(layout);
            std::ptr::write_bytes(p, 0xAB, size);
            let mut l = layout;
            if let Some(n) = grow_to {
                p = a.realloc(p, layout, n);
                l = Layout::from_size_align(n, 8).unwrap();
                assert_eq!(*p, 0xAB, "realloc keeps the contents");
                assert_eq!(*p.add(size.min(n) - 1), 0xAB);
            }
            a.dealloc(p, l);
        }
        a.0.seen.into_inner().unwrap()
    }

    #[test]
    fn large_blocks_are_cleared_when_freed_and_when_moved_by_realloc() {
        let freed = freed_with(CLEAR_FROM, None);
        assert!(freed[0].iter().all(|&b| b == 0));
        let freed = freed_with(8192, Some(65_536));
        assert_eq!(freed.len(), 2, "the old block and the grown one");
        assert!(freed.iter().all(|b| b.iter().all(|&x| x == 0)));
        let freed = freed_with(8192, Some(5000));
        assert!(freed.iter().all(|b| b.iter().all(|&x| x == 0)));
    }

    #[test]
    fn small_blocks_are_left_alone() {
        let freed = freed_with(CLEAR_FROM - 1, None);
        assert!(freed[0].iter().all(|&b| b == 0xAB), "not cleared: cheap");
    }
}
