//! lumen's own CUDA kernels: their PTX (compiled by `build.rs` from `src/cuda/*.cu`) and the
//! launch helpers shared by the modules that use them.

#[cfg(feature = "cuda")]
pub mod ptx {
    include!(concat!(env!("OUT_DIR"), "/ptx.rs"));
}
