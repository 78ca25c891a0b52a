//! Mimi's per-frame path allocates nothing after warm-up: the graphs, their staging blocks and
//! the rings' input buffers are built on the first calls, and a call then only fills the host
//! mirror of its input block, queues the copies and the graph, and reads its output block.
//! Counted by a global allocator that counts the allocations of the thread under test (ggml's
//! own C allocations are not Rust's and are not counted; its graph computes allocate none).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::*;
use flm_kernels::ggml::Device;
use flm_kernels::mimi::{FRAME, Mimi};

struct Counting;

thread_local! {
    static COUNT: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn note() {
    if COUNT.with(Cell::get) {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
    }
}

// SAFETY: every call is passed to the system allocator unchanged; the counters are
// thread-local `Cell`s of plain data, which allocate nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: the caller's layout, as `GlobalAlloc::alloc` requires.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: as for `alloc` and `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn a_warm_frame_allocates_nothing() {
    let model = converted(1, "q8_0"); // Mimi at f32
    let mut mimi = Mimi::load(&model.join("mimi.gguf"), Device::Cpu, 1).unwrap();
    let pcm = speech();
    let frames = 12;
    let (mut codes, mut out) = ([0i32; 8], vec![0f32; FRAME]);
    let mut frame = |f: usize, mimi: &mut Mimi| {
        mimi.encode(&pcm[f * FRAME..(f + 1) * FRAME], &mut codes)
            .unwrap();
        mimi.decode(&codes, &mut out).unwrap();
    };
    frame(0, &mut mimi);
    frame(1, &mut mimi);
    ALLOCATIONS.with(|a| a.set(0));
    COUNT.with(|c| c.set(true));
    for f in 2..frames {
        frame(f, &mut mimi);
    }
    COUNT.with(|c| c.set(false));
    let allocations = ALLOCATIONS.with(Cell::get);
    assert_eq!(
        allocations,
        0,
        "{allocations} allocations in {} warm frames",
        frames - 2
    );
    assert!(out.iter().any(|&x| x != 0.0), "nothing decoded");
}

#[test]
fn a_warm_call_of_several_streams_allocates_nothing_whichever_streams_it_runs() {
    let model = converted(1, "q8_0"); // Mimi at f32
    let mut mimi = Mimi::load_streams(&model.join("mimi.gguf"), Device::Cpu, 1, 3).unwrap();
    let pcm = speech();
    let (mut codes, mut out) = ([0i32; 8 * 3], vec![0f32; 3 * FRAME]);
    let mut call = |f: usize, streams: &[usize], mimi: &mut Mimi| {
        let k = streams.len();
        mimi.encode_streams(
            streams,
            &pcm[f * FRAME..(f + k) * FRAME],
            &mut codes[..8 * k],
        )
        .unwrap();
        mimi.decode_streams(streams, &codes[..8 * k], &mut out[..k * FRAME])
            .unwrap();
    };
    // Every stream's first call (its rings' input buffers are sized then).
    call(0, &[0, 1, 2], &mut mimi);
    ALLOCATIONS.with(|a| a.set(0));
    COUNT.with(|c| c.set(true));
    let calls: [&[usize]; 6] = [&[2], &[0, 2], &[1, 0, 2], &[1], &[2, 1], &[0, 1, 2]];
    for (f, streams) in calls.iter().enumerate() {
        if f == 3 {
            mimi.reset_stream(1);
        }
        call(f + 1, streams, &mut mimi);
    }
    COUNT.with(|c| c.set(false));
    let allocations = ALLOCATIONS.with(Cell::get);
    assert_eq!(allocations, 0, "{allocations} allocations in 6 warm calls");
    assert!(out.iter().any(|&x| x != 0.0), "nothing decoded");
}
