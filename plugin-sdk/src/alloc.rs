//! The allocator the SDK installs in plugin components (cargo feature
//! `allocator`, on by default), and the `cabi_realloc` the host allocates
//! hook arguments with.
//!
//! Every hook call allocates a handful of small blocks: the host asks the
//! guest's `cabi_realloc` for each string of the arguments, and the bindings
//! free them when the hook returns. With wasi-libc's `cabi_realloc` and the
//! standard library's allocator (both wasi-libc's dlmalloc) that malloc/free
//! traffic was a fifth of a warm `authorize`. Here blocks of up to [`MAX_SMALL`] bytes come from segregated
//! free lists, one per power-of-two size class: an allocation pops a list, a
//! free pushes the block back, a few instructions each. Larger (or
//! over-aligned) blocks go to the standard allocator, which coalesces them.
//!
//! Freed small blocks are reused by later allocations of the same class, so
//! a plugin's long-lived state and its per-call garbage share the memory; the
//! memory of one class is not handed to another, so the most a plugin keeps
//! in reserve is its peak use per class. Refills take [`CHUNK`] bytes at a
//! time from the standard allocator, so the host's memory cap applies
//! unchanged: a refill past the cap traps like any other growth.
//!
//! Two allocators share the instance, so each block goes back to the one it
//! came from: wasi-libc frees the buffers the host lowers for WASI imports
//! (file reads in `init`, say) with C `free`, so `cabi_realloc` serves
//! `malloc` memory while a hook runs, and size-class blocks only between
//! hooks, when the host lowers the next hook's arguments. Chunks are whole
//! pages marked in a bitmap, so a Rust free of a `malloc` block is
//! recognised and handed to `free`.
//!
//! A WebAssembly instance without the threads proposal runs one thread, so
//! the lists need no lock; the allocator is only compiled for such targets.
#![allow(unsafe_code, reason = "a global allocator is unsafe by definition; each block states its invariant")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ptr;
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
use std::sync::atomic::{AtomicBool, Ordering};

/// Largest size served from the free lists.
const MAX_SMALL: usize = 2048;

/// Size classes: 8, 16, 32, ..., `MAX_SMALL` bytes.
const CLASSES: usize = (MAX_SMALL.trailing_zeros() - MIN_SHIFT + 1) as usize;

/// log2 of the smallest class: 8 bytes, enough for the free-list link and
/// the alignment every block gets.
const MIN_SHIFT: u32 = 3;

/// Alignment of every small block: a block's address is a multiple of 8
/// because chunks are and every class size is.
const SMALL_ALIGN: usize = 1 << MIN_SHIFT;

/// Bytes taken from the standard allocator when a class's list is empty and
/// the current chunk is used up: one WebAssembly page, page-aligned, so
/// [`State::owns`] can tell its blocks from `malloc`'s by their page.
const CHUNK: usize = 64 * 1024;

/// log2 of [`CHUNK`].
const CHUNK_SHIFT: u32 = CHUNK.trailing_zeros();

/// Words of the bitmap of owned chunks: one bit per page of a 32-bit
/// address space (native tests use the low bits of their addresses).
const OWNED_WORDS: usize = (1 << (32 - CHUNK_SHIFT)) / 32;

/// The plugin's global allocator. Native builds (the SDK's and plugins'
/// `cargo test`) keep the standard one.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOCATOR: SizeClasses = SizeClasses::new();

/// The canonical ABI's allocation function, which the host calls for every
/// string and list it passes to a hook (and for the argument block of a hook
/// with many arguments). wasi-libc provides a weak one that calls C
/// `malloc`; this one takes precedence and allocates from [`ALLOCATOR`],
/// which is also what frees those buffers: the generated bindings drop them
/// as Rust `String`s and `Vec`s.
///
/// # Safety
/// Called by the host as the canonical ABI specifies: `old` is null with
/// `old_len` 0, or a block of `old_len` bytes it got from this function with
/// the same `align` (a power of two).
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
#[unsafe(export_name = "cabi_realloc")]
unsafe extern "C" fn cabi_realloc(old: *mut u8, old_len: usize, align: usize, new_len: usize) -> *mut u8 {
    if BETWEEN_HOOKS.load(Ordering::Relaxed) {
        // SAFETY: as this function's; the blocks are the allocator's.
        unsafe { realloc_in(&ALLOCATOR, old, old_len, align, new_len) }
    } else {
        // Inside a hook the host calls this for the results of imports, and
        // wasi-libc frees those with C `free`: they must be `malloc`'s.
        // SAFETY: wasi-libc's own `cabi_realloc` does exactly this.
        unsafe { realloc_in(&System, old, old_len, align, new_len) }
    }
}

/// Whether no hook is running, i.e. a `cabi_realloc` call comes from the
/// host lowering the next hook's arguments. Those buffers are freed by the
/// generated bindings through [`ALLOCATOR`]; everything the host lowers
/// while a hook runs (results of WASI imports) is freed by wasi-libc with
/// C `free`, so it comes from `malloc`. False until `init` returns, so
/// wasi-libc's start-up runs entirely on `malloc`.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
static BETWEEN_HOOKS: AtomicBool = AtomicBool::new(false);

/// A hook starts running plugin code (called by the export glue).
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
#[inline]
pub(crate) fn hook_started() {
    BETWEEN_HOOKS.store(false, Ordering::Relaxed);
}

/// A hook is done with plugin code (called by the export glue).
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
#[inline]
pub(crate) fn hook_finished() {
    BETWEEN_HOOKS.store(true, Ordering::Relaxed);
}

/// `cabi_realloc` on `allocator`.
///
/// # Safety
/// As [`cabi_realloc`], for blocks of `allocator`.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
unsafe fn realloc_in(
    allocator: &impl GlobalAlloc,
    old: *mut u8,
    old_len: usize,
    align: usize,
    new_len: usize,
) -> *mut u8 {
    if old_len == 0 && new_len == 0 {
        // Nothing to allocate; any aligned, non-null address will do.
        return align as *mut u8;
    }
    let block = if old_len == 0 {
        // SAFETY: `align` is a power of two per the ABI, `new_len` not zero.
        unsafe { allocator.alloc(Layout::from_size_align_unchecked(new_len, align)) }
    } else {
        // SAFETY: `old` came from `allocator` with this size and alignment.
        unsafe { allocator.realloc(old, Layout::from_size_align_unchecked(old_len, align), new_len) }
    };
    if block.is_null() {
        // Out of memory below the cap (the cap itself traps in the host):
        // trap rather than hand the host a null pointer.
        core::arch::wasm32::unreachable();
    }
    block
}

/// The size-class allocator; see the module documentation.
pub(crate) struct SizeClasses {
    state: UnsafeCell<State>,
}

struct State {
    /// Head of each class's list of free blocks; a free block's first word
    /// points to the next one (null ends the list).
    free: [*mut u8; CLASSES],
    /// The unused rest of the current chunk, `[next, end)`.
    next: *mut u8,
    end: *mut u8,
    /// Which pages are chunks of this allocator. A block Rust frees may
    /// come from `malloc` (a buffer the host lowered during `init`), and
    /// goes back to `free` then.
    owned: [u32; OWNED_WORDS],
}

// SAFETY: WebAssembly without the threads proposal has exactly one thread,
// so the state is never touched concurrently. (Native builds compile this
// module only for its tests, which use private instances.)
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
unsafe impl Sync for SizeClasses {}

impl SizeClasses {
    /// An allocator with empty lists and no chunk yet.
    pub(crate) const fn new() -> SizeClasses {
        let state = State {
            free: [ptr::null_mut(); CLASSES],
            next: ptr::null_mut(),
            end: ptr::null_mut(),
            owned: [0; OWNED_WORDS],
        };
        SizeClasses { state: UnsafeCell::new(state) }
    }
}

impl Default for SizeClasses {
    fn default() -> SizeClasses {
        SizeClasses::new()
    }
}

/// The class serving `layout`, or `None` for the standard allocator.
#[inline]
fn class_of(size: usize, align: usize) -> Option<usize> {
    if size > MAX_SMALL || align > SMALL_ALIGN {
        return None;
    }
    // ceil(log2(size)), at least MIN_SHIFT; size 0 never reaches a
    // `GlobalAlloc` but lands in the smallest class anyway.
    let bits = usize::BITS - (size.max(1) - 1).leading_zeros();
    Some(bits.saturating_sub(MIN_SHIFT) as usize)
}

/// Bytes in a block of `class`.
#[inline]
const fn class_size(class: usize) -> usize {
    1 << (class + MIN_SHIFT as usize)
}

/// The page of an address, as an index into the bitmap (truncated to 32
/// bits: the identity on wasm32).
#[inline]
fn page_of(block: *mut u8) -> usize {
    ((block as usize) >> CHUNK_SHIFT) & ((1 << (32 - CHUNK_SHIFT)) - 1)
}

impl State {
    /// Whether `block` lies in one of this allocator's chunks.
    #[inline]
    fn owns(&self, block: *mut u8) -> bool {
        let page = page_of(block);
        self.owned[page / 32] & (1 << (page % 32)) != 0
    }

    /// Pops a block of `class`, refilling when its list is empty.
    ///
    /// # Safety
    /// No other reference to the state is live.
    #[inline]
    unsafe fn alloc(&mut self, class: usize) -> *mut u8 {
        let head = self.free[class];
        if head.is_null() {
            // SAFETY: as this function's.
            return unsafe { self.carve(class) };
        }
        // SAFETY: a listed block is a free block of ours, at least 8 bytes
        // and 8-aligned, whose first word is the link written by `push`.
        self.free[class] = unsafe { head.cast::<*mut u8>().read() };
        head
    }

    /// Puts `block` on the list of `class`.
    ///
    /// # Safety
    /// `block` is a block of `class` from this allocator that nobody uses.
    #[inline]
    unsafe fn push(&mut self, class: usize, block: *mut u8) {
        // SAFETY: the block is ours, unused, at least 8 bytes and 8-aligned.
        unsafe { block.cast::<*mut u8>().write(self.free[class]) };
        self.free[class] = block;
    }

    /// Cuts a block of `class` from the current chunk, taking a new chunk
    /// when the current one is too short. Null when the standard allocator
    /// has no chunk to give (the memory cap, usually traps before that).
    #[cold]
    unsafe fn carve(&mut self, class: usize) -> *mut u8 {
        let size = class_size(class);
        if (self.end as usize) - (self.next as usize) < size {
            // SAFETY: CHUNK is not zero and a power of two.
            let chunk = unsafe { System.alloc(Layout::from_size_align_unchecked(CHUNK, CHUNK)) };
            if chunk.is_null() {
                return ptr::null_mut();
            }
            let page = page_of(chunk);
            self.owned[page / 32] |= 1 << (page % 32);
            // The old chunk's tail would be lost otherwise: file it as free
            // blocks of the largest classes that fit (it is a multiple of 8).
            let mut rest = (self.end as usize) - (self.next as usize);
            while rest >= SMALL_ALIGN {
                let fit = (usize::BITS - 1 - rest.leading_zeros()).min(MAX_SMALL.trailing_zeros()) - MIN_SHIFT;
                let fit = fit as usize;
                let block = self.next;
                // SAFETY: `block` is unused memory of the old chunk, at
                // least `class_size(fit)` bytes long, 8-aligned.
                unsafe {
                    self.next = block.add(class_size(fit));
                    self.push(fit, block);
                }
                rest -= class_size(fit);
            }
            self.next = chunk;
            // SAFETY: one past the end of the chunk just allocated.
            self.end = unsafe { chunk.add(CHUNK) };
        }
        let block = self.next;
        // SAFETY: at least `size` bytes remain before `end`.
        self.next = unsafe { block.add(size) };
        block
    }
}

// SAFETY: small blocks are distinct, at least `layout.size()` bytes, 8-aligned
// (and only layouts with align <= 8 get one); a block is listed free only
// after its `dealloc`. Everything else is the standard allocator's.
unsafe impl GlobalAlloc for SizeClasses {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match class_of(layout.size(), layout.align()) {
            // SAFETY: one thread, and no call into the state reenters it.
            Some(class) => unsafe { (*self.state.get()).alloc(class) },
            // SAFETY: forwarded with the caller's guarantees.
            None => unsafe { System.alloc(layout) },
        }
    }

    #[inline]
    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        // SAFETY: one thread, and no call into the state reenters it.
        let state = unsafe { &mut *self.state.get() };
        match class_of(layout.size(), layout.align()) {
            // SAFETY: an owned block of a small layout came from this
            // class's list (layouts match) and is no longer used.
            Some(class) if state.owns(block) => unsafe { state.push(class, block) },
            // SAFETY: `malloc`'s block (large, or lowered during `init`).
            _ => unsafe { System.dealloc(block, layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match class_of(layout.size(), layout.align()) {
            Some(_) => {
                // SAFETY: forwarded with the caller's guarantees.
                let block = unsafe { self.alloc(layout) };
                if !block.is_null() {
                    // SAFETY: the block holds at least `layout.size()` bytes.
                    unsafe { block.write_bytes(0, layout.size()) };
                }
                block
            }
            // SAFETY: forwarded; calloc may skip zeroing fresh pages.
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: one thread; the borrow ends before any other call.
        let owned = unsafe { (*self.state.get()).owns(block) };
        let (old, new) = (class_of(layout.size(), layout.align()), class_of(new_size, layout.align()));
        match (old, new) {
            // SAFETY: `malloc`'s block; its successor is `malloc`'s too,
            // which `dealloc` recognises.
            _ if !owned => unsafe { System.realloc(block, layout, new_size) },
            // The block is already as big as its class: nothing moves.
            (Some(a), Some(b)) if a == b => block,
            _ => {
                // SAFETY: the caller guarantees `new_size` with the old
                // alignment is a valid layout.
                let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
                // SAFETY: a valid, non-zero layout.
                let moved = unsafe { self.alloc(new_layout) };
                if !moved.is_null() {
                    // SAFETY: both blocks hold at least the bytes copied and
                    // are distinct; the old one is then freed with its layout.
                    unsafe {
                        ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                }
                moved
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_cover_every_small_size_with_the_least_block() {
        assert_eq!(CLASSES, 9);
        for size in 1..=MAX_SMALL {
            let class = class_of(size, 1).expect("small");
            assert!(class_size(class) >= size, "size {size} in class {class}");
            assert!(class == 0 || class_size(class - 1) < size, "size {size} could use a smaller class");
        }
        assert_eq!(class_of(MAX_SMALL + 1, 1), None);
        assert_eq!(class_of(8, 16), None);
    }

    /// A deterministic xorshift, so the test needs no dependency.
    fn next(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    #[test]
    fn blocks_keep_their_bytes_through_reuse_and_realloc() {
        let heap = SizeClasses::new();
        let mut live: Vec<(*mut u8, Layout, u8)> = Vec::new();
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        for round in 0..20_000u32 {
            let r = next(&mut seed);
            let fill = round as u8;
            if !r.is_multiple_of(3) || live.is_empty() {
                // Mostly small sizes, some over MAX_SMALL, some over-aligned.
                let size = match r % 10 {
                    0 => 1 + (r >> 8) as usize % 8192,
                    _ => 1 + (r >> 8) as usize % 300,
                };
                let align = if r.is_multiple_of(17) { 32 } else { 1 << ((r >> 4) % 4) };
                let layout = Layout::from_size_align(size, align).expect("layout");
                // SAFETY: a non-zero layout; the block is freed below.
                let block = unsafe { heap.alloc(layout) };
                assert!(!block.is_null());
                assert_eq!(block as usize % align, 0);
                // SAFETY: the block holds `size` bytes.
                unsafe { block.write_bytes(fill, size) };
                live.push((block, layout, fill));
            } else {
                let (block, layout, fill) = live.swap_remove((r >> 8) as usize % live.len());
                // SAFETY: a live block of `layout.size()` bytes.
                let bytes = unsafe { std::slice::from_raw_parts(block, layout.size()) };
                assert!(bytes.iter().all(|&b| b == fill), "a block was overwritten");
                if r.is_multiple_of(2) {
                    // SAFETY: allocated with `layout` and not freed before.
                    unsafe { heap.dealloc(block, layout) };
                } else {
                    let new_size = 1 + (r >> 16) as usize % 4096;
                    // SAFETY: allocated with `layout`; a valid new size.
                    let moved = unsafe { heap.realloc(block, layout, new_size) };
                    assert!(!moved.is_null());
                    let kept = layout.size().min(new_size);
                    // SAFETY: the moved block holds at least `kept` bytes.
                    let bytes = unsafe { std::slice::from_raw_parts(moved, kept) };
                    assert!(bytes.iter().all(|&b| b == fill), "realloc lost bytes");
                    // SAFETY: the moved block holds `new_size` bytes.
                    unsafe { moved.write_bytes(fill, new_size) };
                    let layout = Layout::from_size_align(new_size, layout.align()).expect("layout");
                    live.push((moved, layout, fill));
                }
            }
        }
        for (block, layout, fill) in live {
            // SAFETY: a live block of `layout.size()` bytes, freed once.
            unsafe {
                assert!(std::slice::from_raw_parts(block, layout.size()).iter().all(|&b| b == fill));
                heap.dealloc(block, layout);
            }
        }
    }

    #[test]
    fn a_freed_block_is_the_next_one_of_its_class() {
        let heap = SizeClasses::new();
        let layout = Layout::from_size_align(24, 8).expect("layout");
        // SAFETY: a non-zero layout; every block is freed with it.
        unsafe {
            let a = heap.alloc(layout);
            let b = heap.alloc(layout);
            assert_ne!(a, b);
            heap.dealloc(a, layout);
            assert_eq!(heap.alloc(layout), a);
            heap.dealloc(a, layout);
            heap.dealloc(b, layout);
        }
    }
}
