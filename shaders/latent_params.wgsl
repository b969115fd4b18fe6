// Appended to latent.wgsl for latent_forward and latent_backward: the parameters,
// which they only read (latent_adam.wgsl declares them read-write instead).
@group(0) @binding(0) var<storage, read> params: array<f32>;
