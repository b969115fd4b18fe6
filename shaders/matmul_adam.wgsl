// Appended to matmul.wgsl (with matmul_triple_operands.wgsl) for
// matmul_triple_adam: a training step's last three weight gradients (a triple)
// and its Adam step in one dispatch. Every gradient element the triple stores
// (dW and the bias gradients, each by one thread) gets its Adam step from that
// thread at the end of its tile (after_tile), from the value it wrote to c (grads),
// the reads of its up to six steps issued together; workgroups after the
// triple's G0 + G1 + G2 update the parameters [tail.x, tail.y) the triple does not
// write, whose gradients are already in c, 1024 per workgroup. The backend fuses
// only where the triple reads none of params, m, v, and where its output regions
// and the tail cover the Adam op's n parameters exactly, each once. Its CPU twin
// is the three cpu::matmul calls then cpu::adam. Dispatch (G0 + G1 + G2 +
// ceil((tail.y − tail.x) / 1024), 1, 1).

@group(0) @binding(12) var<storage, read_write> adam_params: array<f32>;
@group(0) @binding(13) var<storage, read_write> adam_m: array<f32>;
@group(0) @binding(14) var<storage, read_write> adam_v: array<f32>;

const TAIL_PER_GROUP: u32 = 1024u;

@compute @workgroup_size(16, 16)
fn matmul_triple_adam(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tiles = triple_groups();
    if (wg.x < tiles) {
        triple_tile(wg.x, lid);
    } else {
        // 1024 parameters per workgroup, four per thread
        tail_adam(u.tail.x + (wg.x - tiles) * TAIL_PER_GROUP + lid.y * 16u + lid.x);
    }
}

// The old (p, m, v) of the gradient elements a thread stores (its four of C and
// up to two bias gradients; zeros for none), read before the K walk with EARLY —
// the triple reads none of params, m, v, and each element is one thread's — else
// after its stores: every read issued before the first write (one step after
// another would wait for each other's reads: the buffers may alias as far as the
// driver knows).
struct AfterReads { o: array<vec3<f32>, 6> }

fn after_reads(w: Walk, lid: vec3<u32>, first_tile: bool) -> AfterReads {
    let at = stored_ats(w, lid, first_tile);
    return AfterReads(array<vec3<f32>, 6>(
        adam_read(at[0]),
        adam_read(at[1]),
        adam_read(at[2]),
        adam_read(at[3]),
        adam_read(at[4]),
        adam_read(at[5]),
    ));
}

// The Adam steps of the gradient elements a thread stored (at = NONE: none), from
// their old (p, m, v) in r.
fn after_tile(w: Walk, lid: vec3<u32>, s: array<Stored, 6>, r: AfterReads) {
    adam_write(s[0], r.o[0]);
    adam_write(s[1], r.o[1]);
    adam_write(s[2], r.o[2]);
    adam_write(s[3], r.o[3]);
    adam_write(s[4], r.o[4]);
    adam_write(s[5], r.o[5]);
}

// (p, m, v) of parameter at (zeros for NONE).
fn adam_read(at: u32) -> vec3<f32> {
    if (at == NONE) {
        return vec3<f32>();
    }
    return vec3<f32>(adam_params[at], adam_m[at], adam_v[at]);
}

// Parameter s.at's Adam step with gradient s.v from its old (p, m, v).
fn adam_write(s: Stored, old: vec3<f32>) {
    if (s.at != NONE) {
        let r = adam_update(s.v, old.x, old.y, old.z, u.adam);
        adam_params[s.at] = r.x;
        adam_m[s.at] = r.y;
        adam_v[s.at] = r.z;
    }
}

// Parameters i, i + 256, i + 512, i + 768 of the tail (those below tail.y), their
// gradients read from c: as after_tile, every read before the first write.
fn tail_adam(i: u32) {
    let s0 = tail_stored(i);
    let s1 = tail_stored(i + 256u);
    let s2 = tail_stored(i + 512u);
    let s3 = tail_stored(i + 768u);
    let o0 = adam_read(s0.at);
    let o1 = adam_read(s1.at);
    let o2 = adam_read(s2.at);
    let o3 = adam_read(s3.at);
    adam_write(s0, o0);
    adam_write(s1, o1);
    adam_write(s2, o2);
    adam_write(s3, o3);
}

// Tail parameter at and its gradient (NONE past the tail).
fn tail_stored(at: u32) -> Stored {
    if (at >= u.tail.y) {
        return Stored(NONE, 0.0);
    }
    return Stored(at, c[at]);
}

// (no split product of this module finishes its tiles itself: matmul_bce.wgsl's
// does)
fn last_split(w: Walk, wg: vec3<u32>, lid: vec3<u32>) -> bool {
    return false;
}
