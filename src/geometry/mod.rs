//! Geometry: meshes, surface sampling, normalisation and the attachment channel.
pub mod mesh;
