//! Geometry: meshes, primitive shapes, surface sampling, the attachment channel and
//! isosurface extraction (and the decoded lattices it runs on).
pub mod lattice;
pub mod marching_cubes;
pub mod mesh;
pub mod primitives;
pub mod sampling;
