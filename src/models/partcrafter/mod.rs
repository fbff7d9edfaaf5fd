pub mod extract;
pub mod vae;
