//! The global allocator: mimalloc, called the way `std`'s own allocator
//! calls malloc.
//!
//! The `mimalloc` crate's wrapper sends every allocation through
//! `mi_malloc_aligned`, even those that need no more alignment than plain
//! `mi_malloc` gives (16 bytes). For blocks over 1 KiB, such as hyper's 8 KiB
//! read buffers (two per proxied request), mimalloc then takes its generic
//! over-allocating path. Measured with callgrind on the GET pass-through:
//! about 350 instructions per such allocation, 4 per request. This one asks
//! for alignment only when the layout needs it, as `std::alloc::System` does
//! with malloc and `posix_memalign`.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// What `mi_malloc` guarantees (`MI_MAX_ALIGN_SIZE`, `sizeof(max_align_t)`).
const MALLOC_ALIGN: usize = 16;

/// mimalloc as the global allocator (`#[global_allocator]` in `main.rs`).
pub struct MiMalloc;

/// Whether `mi_malloc` alone aligns `layout` (the test `std` makes for malloc).
#[inline]
fn plain(layout: &Layout) -> bool {
    layout.align() <= MALLOC_ALIGN && layout.align() <= layout.size()
}

// SAFETY: mimalloc is a thread-safe allocator; each call honours `layout`'s
// alignment (plain calls only where malloc's guarantee covers it) and returns
// null on failure, as `GlobalAlloc` requires.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: FFI calls with a size and a power-of-two alignment.
        unsafe {
            if plain(&layout) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        unsafe {
            if plain(&layout) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (GlobalAlloc's contract).
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout`.
        unsafe {
            if layout.align() <= MALLOC_ALIGN && layout.align() <= new_size {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_aligned_as_asked_and_keep_their_bytes() {
        let a = MiMalloc;
        for (size, align) in [
            (1, 1),
            (8, 8),
            (24, 8),
            (8192, 1),
            (100, 64),
            (8, 16),
            (3000, 128),
            (1 << 20, 4096),
        ] {
            let layout = Layout::from_size_align(size, align).unwrap();
            // SAFETY: non-zero sizes; every pointer is freed with its layout.
            unsafe {
                let p = a.alloc(layout);
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0, "alloc {size}/{align}");
                p.write_bytes(0xab, size);
                let grown = a.realloc(p, layout, size * 3);
                assert_eq!(grown as usize % align, 0, "realloc {size}/{align}");
                assert_eq!(*grown.add(size - 1), 0xab);
                a.dealloc(grown, Layout::from_size_align(size * 3, align).unwrap());
                let z = a.alloc_zeroed(layout);
                assert_eq!(z as usize % align, 0, "alloc_zeroed {size}/{align}");
                assert!((0..size).all(|i| *z.add(i) == 0));
                a.dealloc(z, layout);
            }
        }
    }
}
