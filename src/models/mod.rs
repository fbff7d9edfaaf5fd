//! Model ports to candle, one module per model; each mirrors its checkpoint's tensor names.
pub mod partcrafter;
pub mod rmbg;
pub mod sdxl;
