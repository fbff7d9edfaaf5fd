//! Geometry: meshes, surface sampling, normalisation and the attachment channel.
pub mod marching_cubes;
pub mod mesh;
