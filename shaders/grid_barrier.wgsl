// Appended to a persistent step's module (src/gpu/persistent.rs): the grid barrier
// between its phases. Every workgroup of the dispatch arrives once per phase; the
// one whose arrival completes phase p's count says so in `grid[1]`, the others
// poll it. The flag-polling barrier of examples/persistent_chain.rs, which on an
// NVIDIA H200 (2026-11-27) replaced a dispatch boundary at 4.15 µs less per
// product with 416 workgroups, equal bit for bit to the dispatches where the
// buffers read after it were `@coherent` (as the phases' are here).
//
// A wait is bounded: a workgroup that polls GRID_SPINS times (far longer than any
// phase takes; seconds on a GPU) takes it that the dispatch has more workgroups
// than run at once — the ones it waits for cannot start until it ends — and sets
// grid_status[0], as does any wait that ends before the barrier is complete. Every
// wait then stops at once, so the dispatch ends (with wrong results), and the
// backend reports the mark as an error at its next read.
//
// A probe (`VAE_OOD_GPU_PERSISTENT=auto`: how many workgroups of this pipeline
// the GPU runs at once) dispatches the module dry (grid_mode[0] ≠ 0: no phase
// does any work, only the barriers run, with the pipeline's own registers and
// workgroup memory) with a short bound (grid_mode[1] polls): where more were
// dispatched than run at once, the first wait to give up saw exactly those that
// were running (none has left before a wait gives up), and the fewest arrivals
// any giving-up wait saw goes into grid_status[2].

// this dispatch's counters (a dynamic offset per dispatch; zeroed before a run):
// [0] arrivals, all phases; [1] phases every workgroup has finished
@group(2) @binding(0) var<storage, read_write> grid: array<atomic<u32>, 4>;
// [0]: 1 once a wait gave up (zeroed before a run); [2]: in a dry run, the fewest
// arrivals a wait saw when it gave up (0xffffffff before the probe)
@group(2) @binding(1) var<storage, read_write> grid_status: array<atomic<u32>, 4>;
// [0]: ≠ 0 in a dry run (the probe); [1]: polls before a wait gives up (0: GRID_SPINS)
@group(2) @binding(2) var<uniform> grid_mode: vec4<u32>;

const GRID_SPINS: u32 = 4194304u;

// Called by every invocation of every workgroup after phase `phase`, with the
// dispatch's workgroup count.
fn grid_barrier(li: u32, groups: u32, phase: u32) {
    // this workgroup's stores before its arrival (device scope in naga)
    storageBarrier();
    if (li == 0u) {
        if (atomicAdd(&grid[0], 1u) + 1u == (phase + 1u) * groups) {
            atomicStore(&grid[1], phase + 1u);
        } else {
            let spins = select(GRID_SPINS, grid_mode.y, grid_mode.y != 0u);
            for (var n = 0u; n < spins; n++) {
                if (atomicLoad(&grid[1]) > phase) {
                    break;
                }
                // (from the first poll on: after one wait gave up, none waits)
                if ((n & 1023u) == 0u && atomicLoad(&grid_status[0]) != 0u) {
                    break;
                }
            }
            // a wait that ended before every workgroup had arrived: it gave up
            // (or another did, or the loop was cut short, as Mesa 22.3's lavapipe
            // does to long loops): the results are wrong, say so
            if (atomicLoad(&grid[1]) <= phase) {
                atomicStore(&grid_status[0], 1u);
                if (grid_mode.x != 0u) {
                    atomicMin(&grid_status[2], atomicLoad(&grid[0]));
                }
            }
        }
    }
    // the others' stores after the wait
    storageBarrier();
}
