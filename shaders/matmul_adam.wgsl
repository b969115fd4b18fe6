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
        tail_adam(u.tail.x + (wg.x - tiles) * TAIL_PER_GROUP + lid.y * 16u + lid.x);
    }
}

// The Adam steps of the gradient elements a thread stored (its four of C and up to
// two bias gradients; at = NONE: none): every read issued before the first write
// (one step after another would wait for each other's reads: the buffers may alias
// as far as the driver knows).
fn after_tile(s: array<Stored, 6>) {
    let o0 = adam_read(s[0].at);
    let o1 = adam_read(s[1].at);
    let o2 = adam_read(s[2].at);
    let o3 = adam_read(s[3].at);
    let o4 = adam_read(s[4].at);
    let o5 = adam_read(s[5].at);
    adam_write(s[0], o0);
    adam_write(s[1], o1);
    adam_write(s[2], o2);
    adam_write(s[3], o3);
    adam_write(s[4], o4);
    adam_write(s[5], o5);
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

// Parameters i, i + 256, i + 512, i + 768 of the tail (those below tail.y): all
// sixteen reads issued before the first write (the four steps in turn would wait
// for each other's reads: the buffers may alias as far as the driver knows).
fn tail_adam(i: u32) {
    let at = vec4<u32>(i, i + 256u, i + 512u, i + 768u);
    let g = vec4<f32>(tail_read(0u, at.x), tail_read(0u, at.y), tail_read(0u, at.z), tail_read(0u, at.w));
    let p = vec4<f32>(tail_read(1u, at.x), tail_read(1u, at.y), tail_read(1u, at.z), tail_read(1u, at.w));
    let m = vec4<f32>(tail_read(2u, at.x), tail_read(2u, at.y), tail_read(2u, at.z), tail_read(2u, at.w));
    let v = vec4<f32>(tail_read(3u, at.x), tail_read(3u, at.y), tail_read(3u, at.z), tail_read(3u, at.w));
    tail_write(at.x, adam_update(g.x, p.x, m.x, v.x, u.adam));
    tail_write(at.y, adam_update(g.y, p.y, m.y, v.y, u.adam));
    tail_write(at.z, adam_update(g.z, p.z, m.z, v.z, u.adam));
    tail_write(at.w, adam_update(g.w, p.w, m.w, v.w, u.adam));
}

// Element at of the gradient (which 0), the parameters (1), m (2) or v (3); 0
// past the tail.
fn tail_read(which: u32, at: u32) -> f32 {
    if (at >= u.tail.y) {
        return 0.0;
    }
    if (which == 0u) {
        return c[at];
    }
    if (which == 1u) {
        return adam_params[at];
    }
    if (which == 2u) {
        return adam_m[at];
    }
    return adam_v[at];
}

fn tail_write(at: u32, r: vec3<f32>) {
    if (at < u.tail.y) {
        adam_params[at] = r.x;
        adam_m[at] = r.y;
        adam_v[at] = r.z;
    }
}
