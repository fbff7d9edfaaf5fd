//! Geometry: meshes, primitive shapes, surface sampling and the attachment channel.
pub mod mesh;
pub mod primitives;
pub mod sampling;
