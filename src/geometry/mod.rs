//! Geometry: meshes, primitive shapes, surface sampling, the attachment channel and
//! isosurface extraction.
pub mod marching_cubes;
pub mod mesh;
pub mod primitives;
pub mod sampling;
